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
import threading
from pathlib import Path
from urllib.parse import urlparse

from ..artifacts.run_dir import RunDir
from ..distributed.collectives import broadcast_object
from ..errors import first_line

SAMPLE_PREDICTIONS = 100  # rows of the test-prediction table (the first images of the test split)
PROBE_TIMEOUT_S = 3.0  # how long `auto` waits for a TCP connection to the W&B server
_ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}


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
    connection. Under `accelerate launch` the launcher SIGTERMs the whole process tree, wandb's
    service included, at the same moment: then finishing fails and only the teardown is left."""
    wandb = sys.modules.get("wandb")  # never imported: nothing to close
    if wandb is None:
        return
    import contextlib

    for close in (lambda: wandb.run is not None and wandb.run.finish(exit_code=exit_code), wandb.teardown):
        with contextlib.suppress(BaseException):  # the service is gone (or a second Ctrl-C): nothing to save
            close()


def accelerator_tracking(cfg) -> dict:
    """Accelerator(log_with, project_dir): TensorBoard wants a folder up front (scalar_trackers moves it)."""
    if cfg.tracking.backend in ("tensorboard", "mlflow"):
        from .scalar import require

        require(cfg.tracking.backend)  # a one-line error before any work
    b = cfg.tracking.backend
    return {"log_with": None if b == "none" else b, "project_dir": "." if b == "tensorboard" else None}


# -- deciding the mode (main process only: it may touch the network) ------------------------------
def _has_credentials(base_url: str) -> bool:
    """The credential sources wandb documents, read without a network call: WANDB_API_KEY,
    WANDB_IDENTITY_TOKEN_FILE, a .netrc entry for the server, an api_key in wandb's settings file."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import configparser
    import netrc

    host = urlparse(base_url).hostname or ""
    for path in [os.environ.get("NETRC"), "~/.netrc", "~/_netrc"]:
        if path and Path(path).expanduser().is_file():
            try:
                if netrc.netrc(Path(path).expanduser()).authenticators(host):
                    return True
            except (netrc.NetrcParseError, OSError):
                pass
    settings = Path(os.environ.get("WANDB_CONFIG_DIR", "~/.config/wandb")).expanduser() / "settings"
    parser = configparser.ConfigParser()
    try:
        parser.read(settings)
        return bool(parser.get("default", "api_key", fallback=""))
    except configparser.Error:
        return False


def _reachable(base_url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connection to the server, DNS included, bounded by `timeout` (getaddrinfo has no
    timeout of its own, so it runs in a daemon thread)."""
    url = urlparse(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    ok = []

    def probe():
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            ok.append(True)
        except (OSError, ValueError):
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def resolve_mode(mode: str) -> tuple[str, str]:
    """-> (online|offline|disabled, why). An explicit tracking.mode wins; `auto` honours
    WANDB_MODE / WANDB_DISABLED, then goes online only with credentials and a reachable server."""
    if mode != "auto":
        return mode, f"tracking.mode={mode}"
    if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
        return "disabled", "WANDB_DISABLED is set"
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode in _ENV_MODES:
        return _ENV_MODES[env_mode], f"WANDB_MODE={env_mode}"
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    if not _has_credentials(base_url):
        return "offline", "no W&B API key found; `wandb login` or WANDB_API_KEY makes runs online"
    if not _reachable(base_url):
        return "offline", f"W&B server {urlparse(base_url).hostname} is unreachable"
    return "online", "API key found and server reachable"


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
        # traceback at exit (docs/results.md); tearing down now unregisters it.
        try:
            import wandb

            wandb.teardown()
        except BaseException:  # noqa: BLE001 - the service is gone; SystemExit from it included
            pass

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
        the run as preempting rather than finished-for-good."""
        if self.run is None:
            return
        try:
            if preempted:
                self.run.mark_preempting()
            self.accelerator.get_tracker("wandb").finish()
            self._drop_tracker()  # finished here; Accelerate's end_training then only ends the process group
            self.run = None
        except Exception as e:
            self._fail("finishing the run", e)
