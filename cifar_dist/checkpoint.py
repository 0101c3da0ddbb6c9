"""Checkpoints. Two kinds, both written atomically (temporary name, fsync, rename):

- `run.dir/best.pt`: the best-validation model, written by the main process only; a single file
  with weights, resolved config, epoch, validation metrics, class names and versions. It is what
  `evaluate.py` reads. A run without a validation split (data.val_fraction=0) keeps its newest
  weights there instead.
- `run.dir/last/`: the full training state (`accelerator.save_state`: model, optimizer, RNG of
  every rank, plus our TrainState), written by all ranks together; what `--resume` reads.

The checkpointer owns its timing: the loop calls `maybe_save_best` after validation and
`maybe_save_state` after every step.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .distributed import gather_per_rank, raise_if_any
from .errors import UserError
from .faults import clean_stale, write_failure

FORMAT = "cifar-dist-checkpoint"
FORMAT_VERSION = 1


@dataclass
class TrainState:
    """Where the run is. Registered with Accelerate, so it travels inside `last/`."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed in total
    step_in_epoch: int = 0  # steps completed in the current epoch (mid-epoch saves)
    best_val_loss: float = float("inf")
    best_epoch: int = -1
    tracker_run_id: str = ""
    config: dict = field(default_factory=dict)  # the resolved config, so last/ is self-describing too
    rng_state: list | None = None  # per rank: torch CPU RNG at the save point (restored after the loader skips)
    cuda_rng_state: list | None = None
    partial: dict = field(default_factory=dict)  # running train sums of a partly done epoch

    @property
    def best_val_loss_or_none(self) -> float | None:
        """For JSON and W&B: None when nothing was validated (data.val_fraction=0), not Infinity."""
        return self.best_val_loss if math.isfinite(self.best_val_loss) else None

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            if hasattr(self, k):
                setattr(self, k, v)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def versions() -> dict:
    import accelerate
    import torchvision

    return {"python": sys.version.split()[0], "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "accelerate": str(accelerate.__version__)}


def load_checkpoint(path: str | Path) -> dict:
    """Read a best-model checkpoint (a file, or a run folder holding best.pt), or fail in one line."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; pass a run folder or its best.pt to --checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, not a torch file at all
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable cifar-dist checkpoint (truncated or corrupt: {first[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is a torch file but not a cifar-dist checkpoint; pass the best.pt that train.py wrote")
    return ckpt


class MetricsLog:
    """`run.dir/metrics.jsonl`: one JSON line per epoch, rewritten atomically each time."""

    def __init__(self, path: Path, accelerator):
        self.path = Path(path)
        self.accelerator = accelerator
        self.rows: list[dict] = []

    def load(self, epochs_completed: int) -> None:
        """On resume: keep the rows of epochs the restored state has completed (a crash after the
        row was written but before the state was saved repeats that epoch). Rows count epochs from 1."""
        if self.path.exists():
            rows = [json.loads(l) for l in self.path.read_text().splitlines() if l.strip()]
            self.rows = [r for r in rows if r.get("epoch", 0) <= epochs_completed]

    def append(self, row: dict) -> None:
        """Collective: every rank keeps the rows, the main process writes, all stop if that fails."""
        self.rows.append(row)
        error = None
        if self.accelerator.is_main_process:
            try:
                atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in self.rows).encode())
            except OSError as e:
                error = write_failure("the metrics", self.path, e, kept="the previous metrics.jsonl")
        raise_if_any(self.accelerator, error)


class Checkpointer:
    def __init__(self, accelerator, run_dir: Path, cfg, meta: dict, state: TrainState):
        self.accelerator = accelerator
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.meta = meta  # model name/in_channels/image_size/num_classes, classes, mean/std
        self.state = state
        self.every = cfg.train.checkpoint_every_steps

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last"

    # -- best model ---------------------------------------------------------------------------
    def maybe_save_best(self, model, epoch: int, val_metrics: dict | None) -> bool:
        """Collective in effect (same decision on every rank, since validation metrics are exact
        and identical everywhere); only the main process writes.

        val_metrics None: the run has no validation split (data.val_fraction=0, a final fit on every
        training image), so there is nothing to compare and best.pt takes the newest weights."""
        if val_metrics is None:
            self.state.best_epoch = epoch
            self.accelerator.print(f"No validation split (data.val_fraction=0): saving the epoch {epoch} model ...")
            val_metrics = {}
        elif val_metrics["val_loss"] < self.state.best_val_loss:
            previous = self.state.best_val_loss
            self.state.best_val_loss = val_metrics["val_loss"]
            self.state.best_epoch = epoch
            self.accelerator.print(f"Validation loss decreased ({previous:.6f} --> {val_metrics['val_loss']:.6f}).  Saving model ...")
        else:
            return False
        error = None
        if self.accelerator.is_main_process:
            weights = {k: v.detach().cpu() for k, v in self.accelerator.unwrap_model(model).state_dict().items()}
            weights = {k.removeprefix("_orig_mod."): v for k, v in weights.items()}  # torch.compile wrapper
            ckpt = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_state": weights,
                    "config": self.cfg.to_dict(), "epoch": epoch, "step": self.state.step,
                    "val_metrics": val_metrics, "versions": versions(),
                    "world_size": self.accelerator.num_processes, "tracker_run_id": self.state.tracker_run_id,
                    **self.meta}
            buf = io.BytesIO()
            torch.save(ckpt, buf)
            try:
                atomic_write_bytes(self.best_path, buf.getvalue())
            except OSError as e:
                error = write_failure("the best model", self.best_path, e, kept="the previous best.pt")
        raise_if_any(self.accelerator, error)  # collective: every rank stops, none waits for the writer
        return True

    # -- full state --------------------------------------------------------------------------
    def save_state(self) -> None:
        """Collective: every rank calls it (save_state writes per-rank RNG files)."""
        # Every rank's RNG (each draws its own dropout masks); TrainState is written by rank 0 only,
        # so the states are gathered into it, one per rank.
        self.state.rng_state = gather_per_rank(self.accelerator, torch.get_rng_state())
        self.state.cuda_rng_state = (gather_per_rank(self.accelerator, torch.cuda.get_rng_state())
                                     if torch.cuda.is_available() else None)
        tmp = self.run_dir / f"last.tmp-{self.state.step}"
        if self.accelerator.is_main_process:
            clean_stale(self.run_dir)  # this step's and any a crash left behind
        self.accelerator.wait_for_everyone()
        error = None
        try:
            self.accelerator.save_state(str(tmp))  # no collective inside: a rank that fails here goes on
        except Exception as e:  # disk full: OSError, SafetensorError or torch's "unexpected pos"
            error = write_failure("the training state", tmp, e, kept=self._kept())
        if error is None and self.accelerator.is_main_process:
            try:
                for f in tmp.iterdir():  # accelerate does not fsync; we do, before the rename publishes it
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
                fsync_dir(tmp)
            except OSError as e:
                error = write_failure("the training state", tmp, e, kept=self._kept())
        try:
            raise_if_any(self.accelerator, error)
        except UserError:
            if self.accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)  # give the space back; `last` was never touched
            raise
        if self.accelerator.is_main_process:
            old = self.run_dir / "last.old"
            # `last` or `last.old` is complete at every instant: `last.old` goes only once a newer
            # `last` exists (after a crash between the two renames, `last.old` is all there is).
            if self.last_path.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(self.last_path, old)
            os.replace(tmp, self.last_path)
            fsync_dir(self.run_dir)
            shutil.rmtree(old, ignore_errors=True)
            self._write_config()
        self.accelerator.wait_for_everyone()

    def _kept(self) -> str:
        path = self.resumable_path()
        return f"{path} (the state before this save)" if path else "the rest of run.dir"

    def _write_config(self) -> None:
        """`run.dir/config.json` is the config of the state in `last/`: written with it, so a run that
        fails before its first save (bad data, a bad resume) leaves run.dir exactly as it was.
        Small, so it fits where the state just did; a failure here loses nothing (the state is saved)."""
        data = json.dumps(self.cfg.to_dict(), indent=2).encode()
        path = self.run_dir / "config.json"
        if not path.exists() or path.read_bytes() != data:
            atomic_write_bytes(path, data)

    def maybe_save_state(self) -> bool:
        if self.every and self.state.step % self.every == 0:
            self.save_state()
            return True
        return False

    def resumable_path(self) -> Path | None:
        for p in (self.last_path, self.run_dir / "last.old"):
            if (p / "custom_checkpoint_0.pkl").exists():
                return p
        return None

    def load_state(self) -> None:
        """Collective: restore model, optimizer, RNGs and TrainState on every rank."""
        path = self.resumable_path()
        if path is None:
            raise UserError(f"nothing to resume in {self.run_dir} (no last/ state); drop --resume to start a new run")
        try:
            self.accelerator.load_state(str(path))
        except Exception as e:
            raise UserError(f"cannot resume from {path}: {str(e).splitlines()[0][:160]}; the config may differ from the run's (model, dataset) or the state is corrupt") from None
