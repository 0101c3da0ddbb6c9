"""Experiment tracking behind one small interface: `tracking.backend=wandb` (the default) writes one
Weights & Biases run per job through Accelerate's trackers; `none` logs nothing (the metrics still
go to run.dir/metrics.jsonl).

    WANDB_MODE=offline accelerate launch --config_file accelerate_configs/cpu_ddp.yaml train.py \
        --data.name=synthetic --train.epochs=2 --tracking.backend=wandb
    wandb sync runs/<run>/wandb/offline-run-*          # upload later, from any machine with network
    python -m cifar_dist.wandb_records runs/<run>      # or read the offline run here, no account needed

Rules this module keeps:
- One run per job: only the main process calls `init_trackers`; Accelerate's `log` is a no-op on
  the other ranks. Nothing here is a collective except the broadcast of the run id in
  `build_tracker`, which every rank calls.
- Training never depends on W&B: mode `auto` goes offline without an API key or a reachable
  server, an online start that fails falls back to offline, and any W&B error later (the wandb-core
  service dying, a full disk) prints one line and turns tracking off for the rest of the job.
- run.dir and the run point at each other: the wandb files live in run.dir/wandb/, the run id is in
  TrainState (so in last/ and best.pt) and resuming continues the same run (id + resume="allow");
  the run's config holds the absolute run.dir.
"""

from __future__ import annotations

import os
import random
import socket
import string
import sys
from pathlib import Path

from ..artifacts.run_dir import RunDir
from ..distributed.collectives import broadcast_object
from ..errors import first_line
from .deadline import finished_within
from .wandb_mode import resolve_mode

SAMPLE_PREDICTIONS = 100  # rows of the test-prediction table (the first images of the test split)
# How long closing a run may take before the job leaves without it. Offline it takes about a second;
# a service that died with the job's signal never answers (docs/wandb.md, "Ctrl-C and scancel").
CLOSE_DEADLINE_S = 5.0


class NullTracker:
    run_id = ""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def log_test(self, result, data, run_dir, best_path, compute: dict | None = None) -> None:
        pass

    def finish(self, preempted: bool = False) -> None:
        pass


def end_interrupted(exit_code: int) -> None:
    """After Ctrl-C: close this process's W&B run, if one is open, with `exit_code`, and tear down
    wandb's service connection, so that wandb's exit hook does not print a traceback about a lost
    connection; all within CLOSE_DEADLINE_S. When the service died with the same signal (a terminal's
    Ctrl-C reaches the whole process group; the launcher SIGTERMs the tree), wandb's teardown can wait
    forever on its asyncio thread: then the run stays unclosed and the process leaves anyway."""
    wandb = sys.modules.get("wandb")  # never imported: nothing to close
    if wandb is None:
        return

    def close() -> None:
        try:
            if wandb.run is not None:
                wandb.run.finish(exit_code=exit_code)
        finally:
            wandb.teardown()

    finished_within(close, CLOSE_DEADLINE_S, "wandb close after interrupt")


def _lost_connection_warning(record) -> bool:
    return record.getMessage() != "socket.send() raised exception."


def _quiet_lost_connection_warnings() -> None:
    """After wandb's service dies, asyncio logs "socket.send() raised exception." on stderr for each of
    wandb's writes to the lost connection (from the fifth on); the tracker's own W&B line says it once."""
    import logging

    logger = logging.getLogger("asyncio")
    if _lost_connection_warning not in logger.filters:
        logger.addFilter(_lost_connection_warning)


def accelerator_tracking(cfg) -> dict:
    """Accelerator(log_with, project_dir): TensorBoard wants a folder up front (scalar_trackers moves it)."""
    if cfg.tracking.backend in ("tensorboard", "mlflow"):
        from .scalar import require

        require(cfg.tracking.backend)  # a one-line error before any work
    b = cfg.tracking.backend
    return {"log_with": None if b == "none" else b, "project_dir": "." if b == "tensorboard" else None}


def new_run_id() -> str:
    """8 characters of [a-z0-9], the form W&B's own ids take."""
    rng = random.SystemRandom()
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def run_config(cfg, accelerator, run_dir: Path, provenance: dict) -> dict:
    """The resolved config plus what the config does not say but a result depends on."""
    import torch
    import wandb  # noqa: F401 - a missing or broken wandb fails here, and the run goes on without it

    from ..distributed.accelerator import mixed_precision_source

    job = {
        "world_size": accelerator.num_processes,
        "device": str(accelerator.device),
        "distributed_type": getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type)),
        "mixed_precision": str(accelerator.mixed_precision),
        "mixed_precision_source": mixed_precision_source(cfg, accelerator),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if accelerator.device.type == "cuda" else None,
        "run_dir": str(Path(run_dir).resolve()),
        "host": socket.gethostname(),
        **provenance,  # versions, git, command: as best.pt and model/config.json hold them
    }
    return {**cfg.to_dict(), "job": job}


def build_tracker(cfg, accelerator, run_dir, state, provenance: dict):
    """Collective (every rank calls it): decides the mode and the run id on the main process and
    shares the id, which goes into TrainState and so into every checkpoint."""
    if cfg.tracking.backend in ("tensorboard", "mlflow"):
        from .scalar import ScalarTracker

        return ScalarTracker(cfg, accelerator, Path(run_dir), state, run_config(cfg, accelerator, run_dir, provenance))
    if cfg.tracking.backend != "wandb":
        return NullTracker()
    decided = None
    if accelerator.is_main_process:
        mode, why = resolve_mode(cfg.tracking.mode)
        decided = (mode, why, state.tracker_run_id or os.environ.get("WANDB_RUN_ID") or new_run_id())
    mode, why, run_id = broadcast_object(accelerator, decided)
    if mode == "disabled":
        accelerator.print(f"W&B: tracking disabled ({why})")
        return NullTracker()
    resuming = bool(state.tracker_run_id)
    state.tracker_run_id = run_id
    return WandbTracker(cfg, accelerator, Path(run_dir), state, mode, why, resuming, provenance)


class WandbTracker:
    def __init__(self, cfg, accelerator, run_dir: Path, state, mode: str, why: str, resuming: bool, provenance: dict):
        self.cfg, self.accelerator, self.run_dir, self.state = cfg, accelerator, run_dir, state
        self.provenance = provenance
        self.run_id = state.tracker_run_id
        self.run = None  # the wandb Run, main process only, None once tracking is off
        self.last_step = state.step
        if accelerator.is_main_process:
            self._start(mode, why, resuming)

    # -- start ----------------------------------------------------------------------------------
    def _init_kwargs(self, mode: str) -> dict:
        t = self.cfg.tracking
        kw = {
            "id": self.run_id,
            "resume": "allow",
            "mode": mode,
            "job_type": "train",
            "name": t.run_name or os.environ.get("WANDB_NAME") or self.run_dir.resolve().name,
        }
        if t.entity:
            kw["entity"] = t.entity
        if t.tags:
            kw["tags"] = list(t.tags)
        if "WANDB_DIR" not in os.environ:
            kw["dir"] = str(self.run_dir.resolve())  # -> run.dir/wandb/
        return kw

    def _project(self) -> str:
        from ..config.schema import TrackingConfig

        default = TrackingConfig().project
        if self.cfg.tracking.project == default and os.environ.get("WANDB_PROJECT"):
            return os.environ["WANDB_PROJECT"]
        return self.cfg.tracking.project

    def _start(self, mode: str, why: str, resuming: bool) -> None:
        # Artifact files (the model, tables) are staged in WANDB_DATA_DIR until they are uploaded;
        # for an offline run that is until `wandb sync`, so keep them inside run.dir with the run.
        os.environ.setdefault("WANDB_DATA_DIR", str(RunDir(self.run_dir).wandb.resolve()))
        try:
            config = run_config(self.cfg, self.accelerator, self.run_dir, self.provenance)
        except Exception as e:  # wandb missing or broken: train without it
            self._warn(f"cannot start ({type(e).__name__}: {e})")
            return
        _quiet_lost_connection_warnings()
        attempts = [mode] if mode == "offline" else [mode, "offline"]
        for attempt in attempts:
            try:
                self.accelerator.init_trackers(
                    self._project(), config=config, init_kwargs={"wandb": self._init_kwargs(attempt)}
                )
                self.run = self.accelerator.get_tracker("wandb", unwrap=True)
                mode = attempt
                break
            except Exception as e:
                self._drop_tracker()
                first = first_line(e)
                if attempt != attempts[-1]:
                    why = f"{attempt} start failed: {first[:160]}"
                    continue
                self._warn(f"cannot start ({first[:200]})")
                return
        try:
            self.run.define_metric("epoch/*", step_metric="epoch/epoch")  # epoch panels: x = epoch
            if mode == "offline":
                sync_dir = Path(self.run.dir).parent
                self.accelerator.print(
                    f"W&B: run {self.run_id} is offline ({why}); upload it with: wandb sync {sync_dir}"
                )
            elif resuming:
                self.accelerator.print(f"W&B: continuing run {self.run_id}")
        except Exception as e:
            self._fail("start", e)

    # -- failure handling -----------------------------------------------------------------------
    def _warn(self, what: str) -> None:
        self.accelerator.print(f"W&B: {what}; training continues without W&B tracking")

    def _drop_tracker(self) -> None:
        """Take the wandb tracker out of Accelerate's list, so `end_training` does not touch it."""
        self.accelerator.trackers[:] = [t for t in self.accelerator.trackers if getattr(t, "name", "") != "wandb"]

    def _fail(self, what: str, e: BaseException) -> None:
        first = first_line(e)
        self._warn(f"{what} failed ({type(e).__name__}: {first[:200]})")
        self.run = None
        self._drop_tracker()
        # After the wandb-core service dies every call raises, and wandb's atexit hook would print a
        # traceback at exit (docs/results.md); tearing down now unregisters it (bounded: it can hang).
        import wandb

        finished_within(wandb.teardown, CLOSE_DEADLINE_S, "wandb teardown after an error")

    # -- the interface the trainer uses ---------------------------------------------------------
    def log(self, metrics: dict, step: int) -> None:
        if self.run is None:
            return
        metrics = {k: v for k, v in metrics.items() if v is not None}  # only what was measured
        try:
            self.accelerator.log(metrics, step=step)
            self.last_step = step
        except Exception as e:
            self._fail("logging", e)

    def log_test(self, result, data, run_dir, best_path, compute: dict | None = None) -> None:
        """Main process only: test metrics, per-class accuracy, confusion matrix, a table of sample
        predictions, the best checkpoint as a model artifact (aliases best, latest), and in the summary
        the run's training compute (`compute`: Job.compute's train_flops_per_image, train_pflops)."""
        if self.run is None:
            return
        try:
            self._log_test(result, data, Path(run_dir), Path(best_path))
            if compute:
                self.run.summary.update({f"compute/{k}": v for k, v in compute.items()})
        except Exception as e:
            self._fail("logging test results", e)

    def _log_test(self, result, data, run_dir: Path, best_path: Path) -> None:
        import wandb

        classes = list(result.classes)
        per_class = {
            name: pc["correct"] / pc["total"] if pc["total"] else None for name, pc in result.per_class.items()
        }
        bars = wandb.Table(columns=["class", "accuracy"], data=[[n, a] for n, a in per_class.items() if a is not None])
        values = {
            "test/loss": result.loss,
            "test/accuracy": result.accuracy,
            "test/num_samples": result.num_samples,
            "test/per_class_accuracy": wandb.plot.bar(bars, "class", "accuracy", title="Test accuracy per class"),
            "test/confusion": wandb.plot.confusion_matrix(
                y_true=data.test_labels.tolist(),
                preds=result.predictions.tolist(),
                class_names=classes,
                title="Test confusion matrix",
            ),
            "test/predictions": self._predictions_table(result, data),
        }
        self.accelerator.log(values, step=self.last_step)
        best_val_loss = self.state.best_val_loss_or_none
        summary = {
            "test/per_class": per_class,
            "best/epoch": self.state.best_epoch,
            "best/val_loss": best_val_loss,
            "run_dir": str(run_dir.resolve()),
        }
        self.run.summary.update({k: v for k, v in summary.items() if v is not None})  # no validation: no best/val_loss
        if best_path.exists():
            art = wandb.Artifact(
                f"model-{self.run_id}",
                type="model",
                description=(
                    f"{'best-validation' if best_val_loss is not None else 'final (no validation split)'} "
                    f"{self.cfg.model.name} on {self.cfg.data.name} from {run_dir.resolve()}"
                ),
                metadata={
                    "epoch": self.state.best_epoch,
                    "val_loss": best_val_loss,
                    "test_loss": result.loss,
                    "test_accuracy": result.accuracy,
                    "model": self.cfg.model.name,
                    "data": self.cfg.data.name,
                    "world_size": self.accelerator.num_processes,
                    "run_dir": str(run_dir.resolve()),
                },
            )
            art.add_file(str(best_path), name="best.pt")
            self.run.log_artifact(art, aliases=["best", "latest"])

    @staticmethod
    def _predictions_table(result, data):
        import wandb

        n = min(SAMPLE_PREDICTIONS, result.num_samples)
        classes = result.classes
        table = wandb.Table(columns=["index", "image", "true", "predicted", "confidence", "correct", "top3"])
        for i in range(n):
            img = data.test_images[i].permute(1, 2, 0).numpy()  # uint8 CHW -> HWC
            img = img[..., 0] if img.shape[-1] == 1 else img
            true, pred = int(data.test_labels[i]), int(result.predictions[i])
            table.add_data(
                i,
                wandb.Image(img),
                classes[true],
                classes[pred],
                float(result.confidences[i]),
                true == pred,
                ", ".join(classes[int(k)] for k in result.top3[i]),
            )
        return table

    def finish(self, preempted: bool = False) -> None:
        """Close the run (main process). `preempted`: the job stops early to be resumed; W&B marks
        the run as preempting rather than finished-for-good. Bounded by CLOSE_DEADLINE_S: after
        scancel the service has had the same SIGTERM, and closing would wait for it forever."""
        if self.run is None:
            return
        errors: list[Exception] = []

        def close() -> None:
            try:
                if preempted:
                    self.run.mark_preempting()
                self.accelerator.get_tracker("wandb").finish()
            except Exception as e:
                errors.append(e)

        if not finished_within(close, CLOSE_DEADLINE_S, "wandb finish"):
            self.accelerator.print(
                f"W&B: closing the run took over {CLOSE_DEADLINE_S:g} s (its service is gone); left open"
            )
            self.run = None
            self._drop_tracker()
        elif errors:
            self._fail("finishing the run", errors[0])
        else:
            self._drop_tracker()  # finished here; Accelerate's end_training then only ends the process group
            self.run = None
