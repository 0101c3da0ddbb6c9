"""Checkpoints (file names: run_dir.py). Two kinds, both written atomically (temporary name, fsync, rename):

- `best.pt`: the best-validation model, written by the main process only; a single file with
  weights, resolved config, epoch, validation metrics and the model metadata (`model_metadata`:
  architecture and its arguments, class names, normalisation). `evaluate.py` reads it and
  `build_model_from_checkpoint` rebuilds the network from it. A run without a validation split
  (data.val_fraction=0) keeps its newest weights there instead. Alongside it, `model/` (export.py).
- `last/`: the full training state (`accelerator.save_state`: model, optimizer, RNG of every rank,
  plus our TrainState), written by all ranks together; what `--resume` reads.

The checkpointer owns its timing: the loop calls `maybe_save_best` after validation and
`maybe_save` after every step and at every epoch end.
"""

from __future__ import annotations

import io
import json
import math
import os
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .distributed import gather_per_rank, raise_if_any, reduce_sum
from .errors import UserError, first_line
from .faults import write_failure
from .run_dir import RunDir

FORMAT = "cifar-dist-checkpoint"
FORMAT_VERSION = 1
# The model.* config keys a network is built with, besides its data shape: dropout and width for the
# built-in ones, kwargs for torchvision:, timm: and a user's package.module:factory.
BUILTIN_MODEL_ARGS = ("dropout", "width")
MODEL_ARGS = (*BUILTIN_MODEL_ARGS, "kwargs")


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

    def restore_rng(self, rank: int) -> None:
        """Put this rank's torch RNG back where the interrupted run saved it."""
        torch.set_rng_state(self.rng_state[rank % len(self.rng_state)])
        if self.cuda_rng_state is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(self.cuda_rng_state[rank % len(self.cuda_rng_state)])

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

    return {
        "python": sys.version.split()[0],
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "accelerate": str(accelerate.__version__),
    }


# -- the checkpoint format: what a model is, written once, read once ------------------------------
def model_metadata(cfg, data) -> dict:
    """What rebuilding the network needs, stored in best.pt (and, reshaped, in model/config.json)."""
    from .models import model_source

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


def build_model_from_checkpoint(ckpt: dict, source="the checkpoint", trust_code: bool = False) -> torch.nn.Module:
    """The network a checkpoint (load_checkpoint's dict) describes, with its weights, in eval mode.
    A model from a user's package.module:factory is imported only with trust_code=True."""
    from .models import build_model

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
    if (path / "model.safetensors").exists():
        from .export import read_model_folder

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
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
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
    def __init__(self, accelerator, run: RunDir, cfg, meta: dict, state: TrainState):
        self.accelerator = accelerator
        self.run = run
        self.cfg = cfg
        self.meta = meta  # model_metadata(cfg, data)
        self.state = state
        self.every = cfg.train.checkpoint_every_steps

    # -- best model ---------------------------------------------------------------------------
    def maybe_save_best(self, model, epoch: int, val_metrics: dict | None) -> bool:
        """Collective in effect (same decision on every rank, since validation metrics are exact
        and identical everywhere); only the main process writes best.pt and model/.

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
            self.accelerator.print(
                f"Validation loss decreased ({previous:.6f} --> {val_metrics['val_loss']:.6f}).  Saving model ..."
            )
        else:
            return False
        error = None
        if self.accelerator.is_main_process:
            error = self._write_best(model, epoch, val_metrics)
        raise_if_any(self.accelerator, error)  # collective: every rank stops, none waits for the writer
        return True

    def _write_best(self, model, epoch: int, val_metrics: dict) -> str | None:
        from .export import write_model_folder

        weights = {k: v.detach().cpu() for k, v in self.accelerator.unwrap_model(model).state_dict().items()}
        weights = {k.removeprefix("_orig_mod."): v for k, v in weights.items()}  # torch.compile wrapper
        ckpt = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_state": weights,
            "config": self.cfg.to_dict(),
            "epoch": epoch,
            "step": self.state.step,
            "val_metrics": val_metrics,
            "versions": versions(),
            "world_size": self.accelerator.num_processes,
            "tracker_run_id": self.state.tracker_run_id,
            "command": shlex.join(sys.argv),
            **self.meta,
        }
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        try:
            atomic_write_bytes(self.run.best, buf.getvalue())
        except OSError as e:
            return write_failure("the best model", self.run.best, e, kept="the previous best.pt")
        try:
            write_model_folder(self.run, ckpt)
        except OSError as e:
            return write_failure("the exported model", self.run.model, e, kept="the previous model/")
        return None

    # -- full state --------------------------------------------------------------------------
    def maybe_save(self, running=None, epoch_end: bool = False, stop: bool = False) -> bool:
        """Collective: saves the full state when it is due: at an epoch end, every
        train.checkpoint_every_steps steps, or on a stop request. Mid-epoch, `running` holds this
        rank's running train sums (loss_sum, correct, seen), totalled over ranks into the state."""
        due = epoch_end or stop or bool(self.every and self.state.step % self.every == 0)
        if not due:
            return False
        if running is not None:
            self._keep_partial(running)
        self.save_state()
        return True

    def _keep_partial(self, running) -> None:
        """The epoch's running sums, totalled over ranks (Accelerate saves TrainState from rank 0
        only, so per-rank sums would lose the other ranks' share)."""
        s, c, n = reduce_sum(self.accelerator, list(running))
        check_finite(s, self.state, self.run)
        self.state.partial = {"loss_sum": s, "correct": int(c), "seen": int(n)}

    def save_state(self) -> None:
        """Collective: every rank calls it (save_state writes per-rank RNG files)."""
        # Every rank's RNG (each draws its own dropout masks); TrainState is written by rank 0 only,
        # so the states are gathered into it, one per rank.
        self.state.rng_state = gather_per_rank(self.accelerator, torch.get_rng_state())
        self.state.cuda_rng_state = (
            gather_per_rank(self.accelerator, torch.cuda.get_rng_state()) if torch.cuda.is_available() else None
        )
        tmp = self.run.last_tmp(self.state.step)
        if self.accelerator.is_main_process:
            self.run.clean_stale()  # this step's and any a crash left behind
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
            self._publish(tmp)
        self.accelerator.wait_for_everyone()

    def _publish(self, tmp: Path) -> None:
        # `last` or `last.old` is complete at every instant: `last.old` goes only once a newer
        # `last` exists (after a crash between the two renames, `last.old` is all there is).
        last, old = self.run.last, self.run.last_old
        if last.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(last, old)
        os.replace(tmp, last)
        fsync_dir(self.run.path)
        shutil.rmtree(old, ignore_errors=True)
        self._write_config()

    def _kept(self) -> str:
        path = self.run.resumable()
        return f"{path} (the state before this save)" if path else "the rest of run.dir"

    def _write_config(self) -> None:
        """`config.json` is the config of the state in `last/`: written with it, so a run that
        fails before its first save (bad data, a bad resume) leaves run.dir exactly as it was.
        Small, so it fits where the state just did; a failure here loses nothing (the state is saved)."""
        data = json.dumps(self.cfg.to_dict(), indent=2).encode()
        path = self.run.config
        if not path.exists() or path.read_bytes() != data:
            atomic_write_bytes(path, data)

    def load_state(self) -> None:
        """Collective: restore model, optimizer, RNGs and TrainState on every rank."""
        path = self.run.resumable()
        if path is None:
            raise UserError(f"nothing to resume in {self.run.path} (no last/ state); drop --resume to start a new run")
        try:
            self.accelerator.load_state(str(path))
        except Exception as e:
            raise UserError(
                f"cannot resume from {path}: {first_line(e, 160)}; the config may differ from the "
                f"run's (model, dataset) or the state is corrupt"
            ) from None


def check_finite(loss_sum: float, state: TrainState, run: RunDir) -> None:
    if not math.isfinite(loss_sum):
        raise UserError(
            f"training loss became {loss_sum} by step {state.step} (epoch {state.epoch + 1}); lower "
            f"--optim.lr or check the data; the last good state is kept in {run.last}"
        )
