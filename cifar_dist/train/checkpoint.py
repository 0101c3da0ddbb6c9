"""The Checkpointer: when and how a run saves. Two kinds, both written atomically (files.py):

- `best.pt`: the best-validation model, written by the main process only; its format (weights,
  resolved config, epoch, validation metrics, model metadata and provenance) is export/'s, which
  also writes the same model as `model/`. A run without a validation split (data.val_fraction=0)
  keeps its newest weights there instead.
- `last/`: the full training state (`accelerator.save_state`: model, optimizer, RNG of every rank,
  plus our TrainState), written by all ranks together; what `--resume` reads.

The checkpointer owns its timing: the loop calls `maybe_save` after every step and at every epoch
end (which epoch ends save: save_cadence.py), and `save_best` when best.py's `Best` judges an epoch the
best. File names: artifacts/run_dir.py.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import torch

from ..artifacts.export import checkpoint_dict, write_model_folder
from ..artifacts.run_dir import RunDir
from ..distributed.collectives import broadcast_object, raise_if_any, reduce_sum
from ..distributed.faults import write_failure
from ..errors import UserError, first_line
from ..files import atomic_write_bytes, fsync_dir
from .save_cadence import SaveCadence
from .state import TrainState, check_finite


class Checkpointer:
    def __init__(self, accelerator, run: RunDir, cfg, meta: dict, state: TrainState):
        self.accelerator = accelerator
        self.run = run
        self.cfg = cfg
        self.meta = meta  # model_metadata(cfg, data) and provenance.collect(), built once per run
        self.state = state
        self.every = cfg.train.checkpoint_every_steps
        self.cadence = SaveCadence(cfg.train.checkpoint_every_epochs)  # epoch ends: save_cadence.py

    # -- best model ---------------------------------------------------------------------------
    def save_best(self, model, epoch: int, val_metrics: dict | None) -> None:
        """Collective in effect: write best.pt and model/ for the epoch best.py's `Best.judge` chose (the same
        decision on every rank); only the main process writes. val_metrics None: no validation split."""
        error = None
        if self.accelerator.is_main_process:
            error = self._write_best(model, epoch, val_metrics or {})
        raise_if_any(self.accelerator, error)  # collective: every rank stops, none waits for the writer

    def _write_best(self, model, epoch: int, val_metrics: dict) -> str | None:
        weights = {k: v.detach().cpu() for k, v in self.accelerator.unwrap_model(model).state_dict().items()}
        weights = {k.removeprefix("_orig_mod."): v for k, v in weights.items()}  # torch.compile wrapper
        ckpt = checkpoint_dict(weights, self.cfg, self.meta, epoch, self.state, val_metrics, self.accelerator)
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
    def maybe_save(self, running=None, epoch_end: bool = False, stop: bool = False, final: bool = False) -> bool:
        """Collective: saves the full state when it is due: at an epoch end by train.checkpoint_every_epochs
        (save_cadence.py), every train.checkpoint_every_steps steps, on a stop request, and at the end of
        training (`final`). Mid-epoch, `running` holds this rank's running train sums (loss_sum, correct,
        seen), totalled over ranks into the state."""
        due = final or stop or bool(self.every and self.state.step % self.every == 0)
        if epoch_end and not due:
            due = broadcast_object(self.accelerator, self.cadence.due(self.state.epoch))
        if not due:
            return False
        if running is not None:
            self._keep_partial(running)
        t = time.perf_counter()
        self.save_state()
        self.cadence.saved(time.perf_counter() - t)
        return True

    def _keep_partial(self, running) -> None:
        """The epoch's running sums, totalled over ranks (Accelerate saves TrainState from rank 0
        only, so per-rank sums would lose the other ranks' share)."""
        s, c, n = reduce_sum(self.accelerator, list(running))
        check_finite(s, self.state, self.run.last)
        self.state.keep_partial(s, c, n)

    def save_state(self) -> None:
        """Collective: every rank calls it (save_state writes per-rank RNG files)."""
        self.state.capture_rng(self.accelerator)
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
