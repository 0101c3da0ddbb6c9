"""tracking.backend=tensorboard|mlflow: the W&B run's metrics, config and test results as scalars,
through Accelerate's own trackers, one run per job (the main process logs; the others' calls are
no-ops inside Accelerate). Files stay inside run.dir, nothing needs a network or an account:

    tensorboard   run.dir/tensorboard/<tracking.project>/events.out.tfevents.*   (tensorboard --logdir)
    mlflow        run.dir/mlruns/ (MLflow's file store; MLFLOW_TRACKING_URI wins: a server of yours)
                  MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri runs/<run>/mlruns

Logged: the config (flattened section.key; TensorBoard as hparams, MLflow as params), `train/*` every
train.log_every_steps, `epoch/*` every epoch, and at the end `test/loss`, `test/accuracy`,
`test/num_samples`, `test/per_class/<class>`, `best/epoch`, `best/val_loss`, `compute/*`; MLflow also keeps best.pt
as an artifact. A resumed job continues the same MLflow run (its id travels in TrainState).
Both are optional extras: pip install 'cifar-dist[tensorboard]' or 'cifar-dist[mlflow]'.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..distributed.collectives import broadcast_object
from ..errors import UserError

EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}  # module, extra


def require(backend: str) -> None:
    """A one-line error before any work when the backend's package is missing."""
    import importlib.util

    module, extra = EXTRAS[backend]
    if importlib.util.find_spec(module) is None:
        raise UserError(
            f"tracking.backend={backend} needs {module}, which is not installed: pip install 'cifar-dist[{extra}]' "
            f"(or choose --tracking.backend=wandb or none)"
        )


def flat_config(tree: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 0.1}, "job": {...}} -> {"optim.lr": 0.1, ...}: scalars as they are, lists,
    None and the rest as text (what TensorBoard's hparams and MLflow's params take)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        else:
            out[key] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


class ScalarTracker:
    """The trainer's tracker interface (log, log_test, finish) over Accelerate's TensorBoard or MLflow
    tracker. Collective to build (the run id is shared); the rest runs on the main process."""

    def __init__(self, cfg, accelerator, run_dir: Path, state, config: dict):
        """`config`: tracking.run_config's dict (the resolved config plus the job's facts)."""
        self.backend, self.accelerator, self.state = cfg.tracking.backend, accelerator, state
        self.last_step = state.step
        run_dir = Path(run_dir).resolve()
        kwargs = {}
        if self.backend == "tensorboard":
            # Accelerate's TensorBoard tracker writes under the accelerator's logging_dir/<project>
            accelerator.project_configuration.logging_dir = str(run_dir / "tensorboard")
        else:
            if accelerator.is_main_process:
                import mlflow

                if not os.environ.get("MLFLOW_TRACKING_URI"):
                    # MLflow >= 3.x refuses its file store ("maintenance mode") unless asked for it; it needs
                    # no server and no database packages, and keeps the run beside its checkpoints.
                    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").as_uri())
            kwargs = {"run_name": cfg.tracking.run_name or run_dir.name, "run_id": state.tracker_run_id or None}
        accelerator.init_trackers(cfg.tracking.project, config=flat_config(config), init_kwargs={self.backend: kwargs})
        run_id = ""
        if self.backend == "mlflow" and accelerator.is_main_process:
            run_id = accelerator.get_tracker("mlflow", unwrap=True).info.run_id
        state.tracker_run_id = broadcast_object(accelerator, run_id)
        where = run_dir / ("tensorboard" if self.backend == "tensorboard" else "mlruns")
        accelerator.print(f"{self.backend}: logging to {where}" + (f" (run {run_id})" if run_id else ""))

    def log(self, metrics: dict, step: int) -> None:
        values = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.accelerator.log(values, step=step)
        self.last_step = step

    def log_test(self, result, data, run_dir, best_path, compute: dict | None = None) -> None:
        values = {"test/loss": result.loss, "test/accuracy": result.accuracy, "test/num_samples": result.num_samples}
        values.update({f"compute/{k}": v for k, v in (compute or {}).items()})
        for name, pc in result.per_class.items():
            if pc["total"]:
                values[f"test/per_class/{name}"] = pc["correct"] / pc["total"]
        values["best/epoch"] = self.state.best_epoch
        if self.state.best_val_loss_or_none is not None:
            values["best/val_loss"] = self.state.best_val_loss_or_none
        self.accelerator.log(values, step=self.last_step)
        if self.backend == "mlflow" and self.accelerator.is_main_process and Path(best_path).exists():
            import mlflow

            mlflow.log_artifact(str(best_path))

    def finish(self, preempted: bool = False) -> None:
        if self.backend == "tensorboard" and self.accelerator.is_main_process:
            self.accelerator.get_tracker("tensorboard", unwrap=True).flush()
        if preempted:  # the job goes on after --resume: leave the MLflow run open-ended, not FINISHED
            return
        for tracker in self.accelerator.trackers:
            tracker.finish()  # closes the event file / ends the MLflow run (main process)
        self.accelerator.trackers.clear()  # so end_training does not finish them twice
