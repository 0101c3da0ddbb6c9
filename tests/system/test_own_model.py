"""model.name beyond the built-ins: torchvision:NAME, timm:NAME and a user's package.module:factory.

The system test trains a model defined in a file outside the package (examples/my_model.py, copied
into a temporary folder on PYTHONPATH) with 2-process DDP, resumes it bit-exact, evaluates it with
--plots, exports it, and loads it in a fresh process only with trust_code=True.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import REPO, SMALL, accelerate_cmd, base_env, eval_cmd, read_metrics, run, train_cmd

from cifar_dist.config import resolve
from cifar_dist.errors import UserError
from cifar_dist.models import build_model


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A folder outside the package holding my_model.py, importable as `my_model` here."""
    folder = tmp_path / "usercode"
    folder.mkdir()
    shutil.copy(REPO / "examples" / "my_model.py", folder / "my_model.py")
    (folder / "bad_models.py").write_text(
        "import torch\n"
        "def not_a_module(num_classes):\n    return 'a string'\n"
        "def wrong_output(num_classes):\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(7))\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    return folder


def one_line_error(fn, *words):
    with pytest.raises(UserError) as e:
        fn()
    text = str(e.value)
    assert "\n" not in text
    for w in words:
        assert w in text, text
    return text


def test_torchvision_model_is_built_with_num_classes():
    model = build_model("torchvision:resnet18", 3, 32, 7)
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 7)
    # model.kwargs reach the constructor: a kwarg torchvision does not know is a one-line error
    one_line_error(lambda: build_model("torchvision:resnet18", 3, 32, 7, kwargs={"nonsense": 1}), "resnet18")
    one_line_error(lambda: build_model("torchvision:no_such_net", 3, 32, 7), "no_such_net")
    one_line_error(lambda: build_model("torchvision:fasterrcnn_resnet50_fpn", 3, 32, 7), "classification")


def test_user_factory_errors_are_one_line(user_code):
    model = build_model("my_model:small_cnn", 3, 32, 10, kwargs={"width": 8})
    assert model[0].out_channels == 8  # model.kwargs reached the factory
    one_line_error(lambda: build_model("no_such_pkg.net:make", 3, 32, 10), "no_such_pkg.net", "PYTHONPATH")
    one_line_error(lambda: build_model("my_model:missing", 3, 32, 10), "missing")
    one_line_error(lambda: build_model("bad_models:not_a_module", 3, 32, 10), "str", "nn.Module")
    one_line_error(lambda: build_model("bad_models:wrong_output", 3, 32, 10), "[2, 7]", "[2, 10]")
    one_line_error(lambda: build_model("my_model:small_cnn", 3, 32, 10, trust_code=False), "trust_code=True")


def test_timm_without_timm_says_to_install_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` meets where it is not installed
    one_line_error(lambda: build_model("timm:resnet18", 3, 32, 10), "cifar-dist[timm]")


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
def test_timm_model_is_built_with_num_classes_and_channels():
    model = build_model("timm:resnet18", 1, 28, 10)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_config_names_and_kwargs():
    cfg = resolve(overrides=["--model.name=torchvision:resnet18", "--model.kwargs={zero_init_residual: true}"])
    assert cfg.model.kwargs == {"zero_init_residual": True}
    assert resolve(overrides=["--model.name=pkg.mod:make"]).model.name == "pkg.mod:make"
    one_line_error(lambda: resolve(overrides=["--model.name=resnet_fastt"]), "torchvision:NAME")
    one_line_error(lambda: resolve(overrides=["--model.kwargs=[1, 2]"]), "model.kwargs")
    one_line_error(lambda: resolve(overrides=["--model.kwargs={width: 2}"]), "model.kwargs", "tutorial_cnn")


@pytest.mark.slow
def test_torchvision_resnet18_trains_on_a_small_synthetic_set(tmp_path, data_root):
    run_dir = tmp_path / "run"
    args = [*SMALL, f"--data.root={data_root}", "--data.synthetic_train_size=500"]
    run(
        train_cmd(
            *args,
            "--model.name=torchvision:resnet18",
            "--train.epochs=1",
            "--train.per_device_batch_size=64",
            f"--run.dir={run_dir}",
            "--run.progress=false",
            "--tracking.backend=none",
        ),
        check=True,
    )
    conf = json.loads((run_dir / "model" / "config.json").read_text())
    assert (conf["architecture"], conf["source"], conf["num_classes"]) == ("torchvision:resnet18", "torchvision", 10)
    from cifar_dist import load_model

    model = load_model(run_dir / "model")  # a library's model: no trust_code needed
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def _train(run_dir, data_root, user_code, *extra):
    env = base_env(PYTHONPATH=f"{REPO}:{user_code}")
    args = [
        *SMALL,
        f"--data.root={data_root}",
        "--model.name=my_model:small_cnn",
        "--model.kwargs={width: 8}",
        "--optim.momentum=0.9",
        # with an EMA of weights and BatchNorm buffers: resumed exactly only if every rank holds the same EMA
        "--train.ema_decay=0.9",
        "--eval.per_device_batch_size=16",  # both ranks validate (one batch of 500 would go to rank 0 alone)
        f"--run.dir={run_dir}",
        "--run.progress=false",
        "--tracking.backend=none",
        *extra,
    ]
    return run(train_cmd(*args, launch=accelerate_cmd()), env=env, check=True)


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "last" / "model.safetensors")


@pytest.mark.slow
def test_own_model_trains_ddp_resumes_evaluates_exports_and_loads_with_trust(tmp_path, data_root, user_code):
    # One epoch, then resumed to a second: identical to two epochs without a stop.
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    out = _train(stopped, data_root, user_code, "--train.epochs=1").stdout
    assert "world size 2" in out
    _train(stopped, data_root, user_code, "--train.epochs=2", "--train.resume=true")
    _train(straight, data_root, user_code, "--train.epochs=2")
    a, b = _weights(stopped), _weights(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [
        [
            {k: v for k, v in row.items() if not (k == "images_per_sec" or k.endswith("_seconds"))}
            for row in read_metrics(d / "metrics.jsonl")
        ]
        for d in (stopped, straight)
    ]
    assert rows[0] == rows[1] and len(rows[0]) == 2
    ema = [
        torch.load(d / "last" / "custom_checkpoint_1.pkl", weights_only=False)["module"] for d in (stopped, straight)
    ]
    assert all(torch.equal(ema[0][k], ema[1][k]) for k in ema[0])

    # config.json names the factory and its arguments
    conf = json.loads((stopped / "model" / "config.json").read_text())
    assert (conf["architecture"], conf["source"], conf["kwargs"]) == ("my_model:small_cnn", "code", {"width": 8})

    # evaluate with --plots (it imports the user's code only with --trust-code)
    env = base_env(PYTHONPATH=f"{REPO}:{user_code}")
    refused = run(eval_cmd(f"--checkpoint={stopped}"), env=env)
    assert refused.returncode != 0 and "trust" in refused.stderr and "Traceback" not in refused.stderr
    plots = tmp_path / "plots"
    run(eval_cmd(f"--checkpoint={stopped}", "--trust-code", f"--plots={plots}"), env=env, check=True)
    assert len(list(plots.glob("*.png"))) >= 2

    # export (re)writes model/; a fresh process loads it with trust_code=True and not without
    shutil.rmtree(stopped / "model")
    run([sys.executable, "-m", "cifar_dist.export", str(stopped)], env=env, check=True)
    probe = (
        "import sys, torch\n"
        "from cifar_dist import load_model\n"
        "from cifar_dist.errors import UserError\n"
        f"path = {str(stopped / 'model')!r}\n"
        "try:\n    load_model(path)\n    print('LOADED WITHOUT TRUST')\n"
        "except UserError as e:\n    print('REFUSED', e)\n"
        "m = load_model(path, trust_code=True)\n"
        "print('SHAPE', list(m(torch.zeros(2, 3, 32, 32)).shape), type(m).__module__)\n"
    )
    p = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "REFUSED" in p.stdout and "trust_code=True" in p.stdout and "LOADED WITHOUT TRUST" not in p.stdout
    assert "SHAPE [2, 10]" in p.stdout
