"""The README's "Using a trained model" snippet is a doc test: its code block, as written (only the
`runs/<run>/model` placeholder replaced by a real exported model folder), runs in a fresh process on
a real image file and predicts what `evaluate.py --images --eval.tta=false` predicts for that file."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from helpers import REPO, base_env, eval_cmd, run
from PIL import Image


def readme_model_snippet() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Using a trained model", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


@pytest.mark.slow
def test_readme_model_snippet_runs_and_agrees_with_evaluate_images(tmp_path, trained_run):
    from cifar_dist.config import from_dict
    from cifar_dist.data import load_data
    from cifar_dist.distributed import build_accelerator
    from cifar_dist.export import load_checkpoint

    folder = trained_run / "model"
    cfg = from_dict(load_checkpoint(folder)["config"])
    data = load_data(cfg, build_accelerator(cfg))
    work = tmp_path / "work"
    work.mkdir()
    Image.fromarray(data.test_images[3].permute(1, 2, 0).numpy()).save(work / "cat.png")  # a real test image

    snippet = readme_model_snippet()
    assert "runs/<run>/model" in snippet and "cat.png" in snippet
    code = snippet.replace("runs/<run>/model", str(folder))
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=base_env(), capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, f"the README snippet fails as written:\n{p.stderr[-3000:]}"
    name, confidence = p.stdout.split()[-2:]

    out = tmp_path / "pred.json"
    run(
        eval_cmd(
            "--checkpoint", str(folder), "--images", str(work / "cat.png"), "--eval.tta=false", "--json", str(out)
        ),
        check=True,
    )
    [pred] = json.loads(out.read_text())["predictions"]
    assert name == pred["class"] and abs(float(confidence) - pred["confidence"]) < 1e-5, (p.stdout, pred)


def test_model_classes_import_from_the_package_top_level_lazily():
    code = (
        "import sys, cifar_dist; assert 'torch' not in sys.modules, 'import cifar_dist loaded torch'; "
        "from cifar_dist import TutorialCNN, ResNetFast; from cifar_dist.models import TutorialCNN as S; "
        "assert TutorialCNN is S; print('ok')"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
