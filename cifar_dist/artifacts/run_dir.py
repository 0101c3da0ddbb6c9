"""The run folder: every name in it, and the checks made before a run starts or resumes.

runs/<name>/
  best.pt             the best-validation model: weights, config, metadata (checkpoint.py)
  model/              the same model for use outside the toolkit: model.safetensors, config.json,
                      README.md (export/; `cifar_dist.load_model("runs/<name>/model")`)
  last/               the full training state (Accelerate's save_state); what --resume reads
  last.old/           the previous last/, kept only while a newer one is renamed into place
  last.tmp-<step>/    a state being written; a crash may leave one, the next save removes it
  config.json         the resolved config of the state in last/
  metrics.jsonl       one JSON line per epoch
  test_metrics.json   the final test of the best model
  wandb/              the W&B run's files (tracking.py)

from cifar_dist.run_dir import RunDir
RunDir("runs/x").best            # Path("runs/x/best.pt")
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..distributed.collectives import broadcast_object, raise_if_any
from ..files import atomic_write_bytes

# Accelerate names the first object registered for checkpointing (our TrainState) this way; its
# presence marks a complete state folder.
STATE_FILE = "custom_checkpoint_0.pkl"

# Leftovers of an interrupted write: `last.tmp-<step>/`, `model.tmp-<pid>/`, `model.old-<pid>/` and
# `.<name>.tmp<pid>` (checkpoint.atomic_write_bytes). None is ever read; all can be large.
STALE_PATTERNS = ("last.tmp-*", "model.tmp-*", "model.old-*", ".*.tmp[0-9]*")

# Config keys that must not change when a run resumes: they define the model and the data split.
# data.root only for imagefolder, where it names the images; CIFAR's root may move (node-local scratch).
RESUME_FIXED = [
    ("seed",),
    ("data", "name"),
    ("data", "image_size"),
    ("data", "val_fraction"),
    ("data", "normalize"),
    ("data", "synthetic_train_size"),
    ("data", "synthetic_test_size"),
    ("model", "name"),
    ("model", "width"),
    ("model", "kwargs"),
    ("train", "per_device_batch_size"),
    ("train", "ema_decay"),  # last/ holds the EMA only when it is on
    ("train", "global_batch_size"),
    ("train", "max_per_device_batch_size"),
]


class RunDir:
    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    best = property(lambda self: self.path / "best.pt")
    model = property(lambda self: self.path / "model")
    last = property(lambda self: self.path / "last")
    last_old = property(lambda self: self.path / "last.old")
    config = property(lambda self: self.path / "config.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    test_metrics = property(lambda self: self.path / "test_metrics.json")
    wandb = property(lambda self: self.path / "wandb")

    def last_tmp(self, step: int) -> Path:
        return self.path / f"last.tmp-{step}"

    def model_tmp(self) -> Path:
        return self.path / f"model.tmp-{os.getpid()}"

    def model_old(self) -> Path:
        return self.path / f"model.old-{os.getpid()}"

    def resumable(self) -> Path | None:
        """The complete state to resume from: last/, or last.old/ after a crash between two renames."""
        for p in (self.last, self.last_old):
            if (p / STATE_FILE).exists():
                return p
        return None

    def holds_run(self) -> bool:
        return self.resumable() is not None or self.best.exists() or self.metrics.exists()

    def make_removed_at_exit_if_unsaved(self) -> None:
        """`mkdir -p`, and the cleanup of a failed start: the folders this creates are removed at exit
        when the run saved nothing there. A run that fails before its first saved state (data that will
        not load, a bad resume, a loss that blows up) leaves no folder behind, while a folder it did not
        create stays exactly as it was. The removal runs from atexit, registered before W&B registers
        its own teardown, so it comes after that teardown has written its last file (atexit runs newest
        first; cli.exit_process runs it too)."""
        import atexit

        created = [p for p in (self.path, *self.path.parents) if not p.exists()]  # deepest first
        self.path.mkdir(parents=True, exist_ok=True)
        if created:
            atexit.register(self.remove_if_nothing_saved, created)

    def remove_if_nothing_saved(self, created: list[Path]) -> None:
        """The cleanup of a failed start: remove `created` (the folders make_removed_at_exit_if_unsaved
        made, deepest first) unless the run saved a state or a best model there."""
        if self.best.exists() or self.resumable() is not None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        for parent in created[1:]:  # only while empty: another job may have started in it meanwhile
            try:
                parent.rmdir()
            except OSError:
                break

    def clean_stale(self) -> list[Path]:
        """Delete what interrupted writes left behind (main process only); returns what it removed."""
        removed = []
        for pattern in STALE_PATTERNS:
            for p in self.path.glob(pattern):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
        return removed


def run_dir_of(checkpoint) -> Path:
    """The run folder of a --checkpoint: the folder itself, or the one holding best.pt or model/."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir() and not (checkpoint / "model.safetensors").exists():
        return checkpoint
    return checkpoint.parent


def _get(tree: dict, path: tuple, default=None):
    for p in path:
        if not isinstance(tree, dict) or p not in tree:
            return default
        tree = tree[p]
    return tree


def _start_problem(cfg, run: RunDir) -> tuple[str | None, bool]:
    """(the one-line reason this run cannot start in run.dir or None, whether it resumes). Reads only."""
    has_state = run.resumable() is not None
    if cfg.train.resume == "false" and run.holds_run():
        return (
            f"run.dir {run.path} already holds a run; pass --resume to continue it "
            f"or choose a new --run.dir (nothing was changed)"
        ), False
    if cfg.train.resume == "true" and not has_state:
        return f"nothing to resume in {run.path} (no last/ state); drop --resume to start a new run there", False
    resume = has_state and cfg.train.resume != "false"
    if resume and run.config.exists():
        from ..config.schema import Config, canonical_names

        saved = canonical_names(json.loads(run.config.read_text()))  # old model names read as the new ones
        fixed = RESUME_FIXED + [("data", "root")] * (cfg.data.name == "imagefolder")
        now, defaults = cfg.to_dict(), Config().to_dict()  # a key newer than the saved run: its default
        changed = [".".join(p) for p in fixed if _get(saved, p, _get(defaults, p)) != _get(now, p)]
        if changed:
            return (
                f"cannot resume {run.path}: {', '.join(changed)} differ from the saved run "
                f"(see {run.config}); resume with the same settings or start a new --run.dir"
            ), resume
    return None, resume


def _make_writable_or_problem(run: RunDir) -> str | None:
    """Create run.dir (removed again at exit if the run saves nothing there: the cleanup of a failed
    start) and probe that it can be written; the one-line reason when it cannot. Only a probe:
    config.json is written with the first saved state (Checkpointer), so a run that fails before then
    (bad data, a bad resume) leaves run.dir as it was."""
    probe = run.path / f".write-probe{os.getpid()}"
    try:
        run.make_removed_at_exit_if_unsaved()
        atomic_write_bytes(probe, b"")
        probe.unlink()
    except OSError as e:
        return f"cannot write to run.dir {run.path} ({e.strerror}); choose a writable --run.dir"
    return None


def prepare_run_dir(cfg, accelerator) -> tuple[RunDir, bool]:
    """Collective. Pick run.dir, decide whether this is a resume, and fail early (on every rank) when
    the folder holds another run, cannot be written, or was made with a different model/data config."""
    name = cfg.run.dir or f"runs/{cfg.data.name}-{_slug(cfg.model.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = RunDir(broadcast_object(accelerator, name))
    cfg.run.dir = str(run.path)
    error, resume = None, False
    if accelerator.is_main_process:
        error, resume = _start_problem(cfg, run)
        if error is None:
            error = _make_writable_or_problem(run)
    raise_if_any(accelerator, error)
    return run, broadcast_object(accelerator, resume)


def _slug(name: str) -> str:
    """A model name as part of a folder name: torchvision:resnet18 -> torchvision-resnet18."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
