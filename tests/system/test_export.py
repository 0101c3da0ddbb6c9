"""The exported model folder (<run.dir>/model/): loaded in a fresh process with only torch,
safetensors and cifar_dist, it gives exactly the logits the toolkit's own evaluation path gives;
from_pretrained works; evaluate.py reads the folder; the Hub upload fails in one line offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import REPO, base_env, eval_cmd, run
from PIL import Image

pytestmark = pytest.mark.slow  # every test here starts training processes

FRESH = """
import json, sys
import torch, safetensors.torch
import cifar_dist

folder, images_file, out = sys.argv[1:4]
model = cifar_dist.load_model(folder)
conf = json.loads(open(folder + "/config.json").read())
images = safetensors.torch.load_file(images_file)["images"]  # uint8 (N, C, H, W)
mean = torch.tensor(conf["normalize"]["mean"]).view(1, -1, 1, 1)
std = torch.tensor(conf["normalize"]["std"]).view(1, -1, 1, 1)
with torch.no_grad():
    logits = model((images.float() / 255 - mean) / std)
safetensors.torch.save_file({"logits": logits.contiguous()}, out)
print("training mode:", model.training)
print("loaded:", sorted(m for m in ("accelerate", "wandb", "torchvision") if m in sys.modules))
"""


def _test_images(run_dir, n=100):
    from cifar_dist.config import from_dict
    from cifar_dist.data import load_data
    from cifar_dist.distributed import build_accelerator
    from cifar_dist.export import load_checkpoint

    cfg = from_dict(load_checkpoint(run_dir)["config"])
    data = load_data(cfg, build_accelerator(cfg))
    return data.test_images[:n], data


def test_fresh_process_reproduces_evaluate_logits_exactly(tmp_path, trained_run):
    from safetensors.torch import load_file, save_file

    from cifar_dist.data import normalize_batch
    from cifar_dist.export import build_model_from_checkpoint, load_checkpoint

    images, data = _test_images(trained_run, 100)
    assert len(images) == 100
    save_file({"images": images.contiguous()}, str(tmp_path / "images.safetensors"))
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    p = run(
        [
            sys.executable,
            str(script),
            str(trained_run / "model"),
            str(tmp_path / "images.safetensors"),
            str(tmp_path / "logits.safetensors"),
        ],
        check=True,
    )
    assert "training mode: False" in p.stdout
    assert "loaded: []" in p.stdout, p.stdout  # none of the training stack was needed
    fresh = load_file(tmp_path / "logits.safetensors")["logits"]

    # The network evaluate.py builds from best.pt, on the same images, normalised as evaluation does.
    # Bit-exact needs the same kernels: the fresh process ran with OMP_NUM_THREADS=1 (base_env), and
    # the thread count changes how the convolutions split their sums, so this side runs on one too.
    model = build_model_from_checkpoint(load_checkpoint(trained_run))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            ours = model(normalize_batch(images, data.mean, data.std))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(fresh, ours)

    # And evaluate.py itself (--images: PNG is lossless, 32x32 needs no resize) gives the softmax of them.
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(len(images)):
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    run(
        eval_cmd(
            "--checkpoint", str(trained_run / "model"), "--images", str(folder), "--json", str(tmp_path / "pred.json")
        ),
        check=True,
    )
    doc = json.loads((tmp_path / "pred.json").read_text())
    assert [r["confidence"] for r in doc["predictions"]] == torch.softmax(fresh, 1).max(1).values.tolist()


def test_from_pretrained_and_the_model_card(trained_run):
    from cifar_dist.export import load_checkpoint
    from cifar_dist.models import TutorialCNN

    model = TutorialCNN.from_pretrained(trained_run / "model")
    assert not model.training
    best = load_checkpoint(trained_run)["model_state"]
    assert best.keys() == model.state_dict().keys()
    assert all(torch.equal(best[k], v) for k, v in model.state_dict().items())
    conf = json.loads((trained_run / "model" / "config.json").read_text())
    assert conf["architecture"] == "tutorial_cnn" and conf["input_size"] == [3, 32, 32]
    assert conf["class_names"][2] == "bird" and len(conf["normalize"]["mean"]) == 3
    card = (trained_run / "model" / "README.md").read_text()
    test = json.loads((trained_run / "test_metrics.json").read_text())
    assert f"test accuracy: {100 * test['accuracy']:.2f}% on {test['num_samples']:,} images" in card
    assert "| bird |" in card and "train.py" in card


def test_evaluate_reads_the_model_folder_like_the_run(tmp_path, trained_run):
    a, b = tmp_path / "run.json", tmp_path / "model.json"
    run(eval_cmd("--checkpoint", str(trained_run), "--json", str(a)), check=True)
    run(eval_cmd("--checkpoint", str(trained_run / "model"), "--json", str(b)), check=True)
    assert json.loads(a.read_text()) == json.loads(b.read_text())


def test_export_rewrites_model_from_best_pt(tmp_path, trained_run):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = (run_dir / "model" / "model.safetensors").read_bytes()
    shutil.rmtree(run_dir / "model")
    run([sys.executable, "-m", "cifar_dist.export", str(run_dir)], check=True)
    assert (run_dir / "model" / "model.safetensors").read_bytes() == before
    assert "test accuracy:" in (run_dir / "model" / "README.md").read_text()
    assert not list(run_dir.glob("model.*"))  # no model.tmp-*/model.old-* left


def _push(run_dir, **env):
    e = base_env(**env)
    e.pop("HF_TOKEN", None) if "HF_TOKEN" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "cifar_dist.export", str(run_dir), "--push-to-hub", "me/model"],
        cwd=REPO,
        env=e,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_push_to_hub_without_token_or_network_is_one_line(tmp_path, trained_run):
    p = _push(trained_run / "model", HF_HOME=tmp_path / "hf")  # no token anywhere
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: no Hugging Face token"), p.stderr
    p = _push(trained_run / "model", HF_HOME=tmp_path / "hf", HF_TOKEN="hf_not_a_real_token", HF_HUB_OFFLINE="1")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0, p.stderr
    assert p.stderr.startswith("error: could not upload to the Hugging Face Hub (") and "nothing uploaded" in p.stderr
