"""The model format, in its two forms: `best.pt` (a torch file: weights, config, model metadata,
provenance; written by checkpoint.py) and the folder a Hugging Face user recognises, written by every
run as `<run.dir>/model/`: `model.safetensors`, `config.json` (architecture and its arguments, class
names, input size and channels, normalisation) and a `README.md` model card (test results once the
run's test has run). Both are read back by `load_checkpoint` and rebuilt by `build_model_from_checkpoint`.

    from cifar_dist import load_model
    model = load_model("runs/<run>/model")                       # torch.nn.Module, eval mode, CPU
    python -m cifar_dist.export runs/<run>                       # (re)write model/ from best.pt
    python -m cifar_dist.export runs/<run> --push-to-hub you/cifar10-seed   # upload model/ to the Hub

Loading needs torch, safetensors and this package, not the toolkit's config.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch

from ..errors import UserError, first_line
from ..files import atomic_write_bytes, fsync_dir
from .run_dir import RunDir

CHECKPOINT_FORMAT = "cifar-dist-checkpoint"  # best.pt
CHECKPOINT_FORMAT_VERSION = 1
# The model.* config keys a network is built with, besides its data shape: dropout and width for the
# built-in ones, kwargs for torchvision:, timm: and a user's package.module:factory.
BUILTIN_MODEL_ARGS = ("dropout", "width")
MODEL_ARGS = (*BUILTIN_MODEL_ARGS, "kwargs")
FORMAT = "cifar-dist-model"  # model/config.json
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
# Where a model came from, copied between best.pt's dict and config.json's "training" section in
# both directions; the value is what a checkpoint without the key reads as.
_PROVENANCE = {
    "epoch": None,
    "step": None,
    "val_metrics": {},
    "world_size": None,
    "versions": {},
    "git": {},
    "command": "",
    "weights": "trained",  # or "ema <decay>": the moving average of the weights (train.ema_decay)
}


def _provenance(source: dict) -> dict:
    return {k: source.get(k, dict(d) if isinstance(d, dict) else d) for k, d in _PROVENANCE.items()}


# -- best.pt: what a model is, written once, read once ---------------------------------------------
def model_metadata(cfg, data) -> dict:
    """What rebuilding the network needs, stored in best.pt (and, reshaped, in model/config.json)."""
    from ..models.registry import model_source

    keys = BUILTIN_MODEL_ARGS if model_source(cfg.model.name) == "builtin" else ("kwargs",)
    return {
        "model": {
            "name": cfg.model.name,
            "in_channels": data.in_channels,
            "image_size": data.image_size,
            "num_classes": data.num_classes,
            **{k: getattr(cfg.model, k) for k in keys},
        },
        "classes": list(data.classes),
        "normalize": {"mean": list(data.mean), "std": list(data.std)},
    }


def checkpoint_dict(weights: dict, cfg, meta: dict, epoch: int, state, val_metrics: dict, accelerator) -> dict:
    """best.pt's content: the weights, the resolved config, where in the run they come from, and
    `meta`: the model metadata (model_metadata) and the run's provenance (provenance.collect)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_state": weights,
        "config": cfg.to_dict(),
        "epoch": epoch,
        "step": state.step,
        "val_metrics": val_metrics,
        "world_size": accelerator.num_processes,
        "tracker_run_id": state.tracker_run_id,
        **meta,
        # which weights these are: the EMA's (train.ema_decay > 0) or the optimizer's own
        "weights": f"ema {cfg.train.ema_decay}" if cfg.train.ema_decay else "trained",
    }


def build_model_from_checkpoint(ckpt: dict, source="the checkpoint", trust_code: bool = False) -> torch.nn.Module:
    """The network a checkpoint (load_checkpoint's dict) describes, with its weights, in eval mode.
    A model from a user's package.module:factory is imported only with trust_code=True."""
    from ..models.registry import build_model

    m = ckpt["model"]
    try:
        model = build_model(
            m["name"],
            m["in_channels"],
            m["image_size"],
            m["num_classes"],
            trust_code=trust_code,
            **{k: m[k] for k in MODEL_ARGS if k in m},
        )
        model.load_state_dict(ckpt["model_state"])
    except (RuntimeError, KeyError) as e:
        raise UserError(
            f"{source} does not match model {m.get('name')!r} with {m.get('num_classes')} classes "
            f"({first_line(e, 100)}); it was written by another model or version"
        ) from None
    return model.eval()


def load_checkpoint(path: str | Path) -> dict:
    """Read a best-model checkpoint (best.pt, a run folder holding it, or an exported model/ folder),
    or fail in one line."""
    path = Path(path)
    if (path / WEIGHTS).exists():
        return read_model_folder(path)
    if path.is_dir():
        path = RunDir(path).best
    if not path.exists():
        raise UserError(
            f"checkpoint {path} does not exist; pass a run folder, its best.pt or its model/ folder to --checkpoint"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, not a torch file at all
        raise UserError(
            f"{path} is not a readable cifar-dist checkpoint (truncated or corrupt: {first_line(e, 120)})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is a torch file but not a cifar-dist checkpoint; pass the best.pt that train.py wrote")
    return ckpt


# -- model/: the same model as a Hugging Face folder -----------------------------------------------
def model_config(ckpt: dict) -> dict:
    """config.json: the model's own arguments at the top level (what `from_pretrained` passes to the
    class), then what a user needs to feed it and read its output, then where it came from."""
    from ..models.registry import model_source

    m = ckpt["model"]
    args = {k: v for k, v in m.items() if k != "name"}
    source = model_source(m["name"])
    return {
        "architecture": m["name"],
        # How to rebuild it: the registry name, torchvision.models.get_model / timm.create_model (NAME after
        # the prefix, with num_classes and kwargs), or the user's factory, imported only with trust_code.
        "source": source,
        **args,
        "input_size": [m["in_channels"], m["image_size"], m["image_size"]],
        "class_names": list(ckpt["classes"]),
        "normalize": dict(ckpt["normalize"]),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "training": {"config": ckpt["config"], **_provenance(ckpt)},
    }


def read_model_folder(folder) -> dict:
    """An exported folder as a checkpoint dict (the shape load_checkpoint returns for best.pt)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        conf = json.loads((folder / "config.json").read_text())
        weights = load_file(folder / WEIGHTS)
    except (OSError, ValueError) as e:
        raise UserError(
            f"{folder} is not a readable exported model ({first_line(e, 120)}); "
            f"rewrite it with: python -m cifar_dist.export <run.dir>"
        ) from None
    if conf.get("format") != FORMAT:
        raise UserError(f"{folder}/config.json was not written by cifar-dist (no format {FORMAT!r})")
    model = {
        "name": conf["architecture"],
        "in_channels": conf["in_channels"],
        "image_size": conf["input_size"][-1],
        "num_classes": len(conf["class_names"]),
        **{k: conf[k] for k in MODEL_ARGS if k in conf},
    }
    training = conf.get("training", {})
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model,
        "classes": conf["class_names"],
        "normalize": conf["normalize"],
        "model_state": weights,
        "config": training.get("config", {}),
        **_provenance(training),
    }


def load_model(path, device: str | torch.device = "cpu", trust_code: bool = False) -> torch.nn.Module:
    """The network in an exported folder (or a best.pt / run folder), with its weights, in eval mode.

    A model built by a user's own `package.module:factory` is rebuilt by importing and running that
    code, so (like Hugging Face's trust_remote_code) it loads only with trust_code=True; built-in,
    torchvision: and timm: models load without it."""
    return build_model_from_checkpoint(load_checkpoint(path), source=path, trust_code=trust_code).to(device)


def _pct(correct: int, total: int) -> str:
    return f"{100 * correct / total:.1f}%" if total else "n/a"


def _validation(val: dict | None) -> str:
    if not val:
        return "no validation split: the newest weights"
    return f"validation loss {val['val_loss']:.4f}, accuracy {100 * val['val_accuracy']:.2f}%"


def model_card(conf: dict, test: dict | None = None) -> str:
    """README.md of the folder: YAML front matter the Hub reads, then what the model is and how it did."""
    t = conf["training"]
    cfg = t.get("config", {})
    data = cfg.get("data", {}).get("name", "unknown")
    args = ", ".join(f"{k}={conf[k]}" for k in ("dropout", "width", "kwargs") if k in conf)
    c, s = conf["input_size"][0], conf["input_size"][-1]
    lines = [
        "---",
        "library_name: cifar-dist",
        "tags:",
        "- image-classification",
        "- pytorch_model_hub_mixin",
        "metrics:",
        "- accuracy",
        "---",
        "",
        f"# {conf['architecture']} trained on {data}",
        "",
        f"- architecture: `{conf['architecture']}` ({args}), input {c}×{s}×{s}, {len(conf['class_names'])} classes",
        f"- normalisation: mean {conf['normalize']['mean']}, std {conf['normalize']['std']}",
        (
            f"- dataset: {data}, validation fraction {cfg.get('data', {}).get('val_fraction')}, "
            f"preset {cfg.get('preset')}, seed {cfg.get('seed')}"
        ),
        f"- best epoch: {t.get('epoch')} ({_validation(t.get('val_metrics'))}); weights: {t.get('weights')}",
        f"- training command: `{t.get('command') or 'unknown'}` on {t.get('world_size')} process(es)",
    ]
    lines += _test_lines(test)
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from cifar_dist import load_model",
        (
            'model = load_model("path/to/this/folder", trust_code=True)  # imports and runs '
            f"{conf['architecture']} (must be on PYTHONPATH)"
            if conf.get("source") == "code"
            else 'model = load_model("path/to/this/folder")  # eval mode; or TutorialCNN.from_pretrained(...)'
        ),
        "logits = model(x)  # x: float (N, C, H, W), normalised with config.json's mean and std",
        "```",
        "",
    ]
    return "\n".join(lines)


def _test_lines(test: dict | None) -> list[str]:
    """The model card's test results: compute, accuracy and a per-class table (or that none exist yet)."""
    if test is None:
        return ["- test accuracy: not measured yet (written when the run's final test has run)"]
    lines = []
    if "train_pflops" in test:
        lines.append(
            f"- training compute: {test['train_pflops']:.4g} PFLOP "
            f"({test['train_flops_per_image'] / 1e9:.4g} GFLOP per training image, forward + backward)"
        )
    lines += [
        f"- test accuracy: {100 * test['accuracy']:.2f}% on {test['num_samples']:,} images (loss {test['loss']:.4f})",
        "",
        "| class | test accuracy | correct / total |",
        "|---|---:|---:|",
    ]
    return lines + [
        f"| {name} | {_pct(pc['correct'], pc['total'])} | {pc['correct']}/{pc['total']} |"
        for name, pc in test["per_class"].items()
    ]


def write_model_folder(run: RunDir, ckpt: dict, test: dict | None = None) -> Path:
    """Main process. Write run.dir/model/ from a best.pt dict: into model.tmp-<pid>/, then renamed
    into place, so a reader sees the old model or the new one, never a mix. (A crash between moving
    the old folder aside and renaming the new one leaves no model/ until the next best save; best.pt
    is intact, and `python -m cifar_dist.export <run.dir>` rewrites it.)"""
    from safetensors.torch import save_file

    tmp = run.model_tmp()
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        conf = model_config(ckpt)
        save_file(
            {k: v.contiguous() for k, v in ckpt["model_state"].items()}, str(tmp / WEIGHTS), metadata={"format": "pt"}
        )
        atomic_write_bytes(tmp / "config.json", (json.dumps(conf, indent=2) + "\n").encode())
        atomic_write_bytes(tmp / "README.md", model_card(conf, test).encode())
        with open(tmp / WEIGHTS, "rb") as f:
            os.fsync(f.fileno())
        old = run.model_old()
        if run.model.exists():
            os.replace(run.model, old)
        os.replace(tmp, run.model)
        fsync_dir(run.path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run.model


def add_test_results(run: RunDir, test: dict) -> None:
    """Main process, after the final test: the model card gains the test accuracy and per-class table.
    A failure costs only the card's test lines (test_metrics.json holds them), so it warns, never stops."""
    if not run.model.exists():  # nothing validated and saved (a run cut short by train.max_steps)
        return
    try:
        conf = json.loads((run.model / "config.json").read_text())
        atomic_write_bytes(run.model / "README.md", model_card(conf, test).encode())
    except OSError as e:
        print(f"warning: could not add the test results to {run.model}/README.md ({first_line(e)})", file=sys.stderr)


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder; a missing token or network ends in one line (UserError)."""
    import huggingface_hub as hub

    if not hub.get_token():
        raise UserError(
            f"no Hugging Face token: run `hf auth login` or set HF_TOKEN, then retry "
            f"(nothing uploaded; the model is in {folder})"
        )
    try:
        hub.create_repo(repo_id, private=private, exist_ok=True)
        info = hub.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload cifar-dist model")
    except Exception as e:  # offline (HF_HUB_OFFLINE), no route, a bad token, a name taken
        raise UserError(
            f"could not upload to the Hugging Face Hub ({first_line(e, 160)}); "
            f"nothing uploaded; the model is in {folder}"
        ) from None
    return str(getattr(info, "commit_url", info))
