"""The trial's side of pruning, inside the training processes: after every validated epoch the main
process reports the objective to the study and asks the pruner; every rank gets its verdict.

A sweep starts each trial with CIFAR_DIST_SWEEP_TRIAL set (a JSON object: the journal file, the study
name, the trial number, the objective, the pruner, a marker path). `hook_from_env()` turns it into the
`after_epoch` hook of `train()` (cli.py passes it on; None when the variable is absent, so a plain run
never imports Optuna). Why the training process talks to the journal itself: the journal file is
already the study's shared, lock-protected store, reachable from wherever the trial runs; the
verdict is needed inside the training loop at an epoch boundary, where every rank must leave
together. A pruned trial returns True from the hook: `train()` ends there as at its last epoch (the
state of that epoch saved, the best weights tested) and the marker file tells the sweep worker to
record the trial as PRUNED.
"""

from __future__ import annotations

import json
import os
import sys

ENV = "CIFAR_DIST_SWEEP_TRIAL"
PRUNERS = ("median", "percentile", "hyperband", "threshold", "none")


def build_pruner(spec: dict):
    """{name: median, n_startup_trials: 2, ...} -> an Optuna pruner (options are its keyword arguments);
    TypeError/ValueError for options it does not take."""
    import optuna

    classes = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "threshold": optuna.pruners.ThresholdPruner,
        "none": optuna.pruners.NopPruner,
    }
    return classes[spec["name"]](**{k: v for k, v in spec.items() if k != "name"})


def open_journal(path: str):
    """The study's storage: Optuna's journal in one file, shared by every worker and trial."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def hook_from_env():
    """The after_epoch hook for a trial started by a sweep, or None for a plain run."""
    raw = os.environ.get(ENV)
    return PruningHook(json.loads(raw)) if raw else None


class PruningHook:
    """after_epoch(epoch, row, evaluate_split) -> bool, called on every rank (trainer.train)."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.trial = None

    def __call__(self, epoch: int, row: dict, evaluate_split=None) -> bool:
        metric = self.spec["objective"]
        if metric not in row:  # not a validated epoch (or no validation at all): nothing to report
            return False
        from accelerate import PartialState

        state = PartialState()
        verdict = self._report(epoch, float(row[metric])) if state.is_main_process else False
        if state.num_processes > 1:  # a collective on every rank: all leave at this epoch, or none
            from accelerate.utils import broadcast_object_list

            box = [verdict]
            broadcast_object_list(box, from_process=0)
            verdict = box[0]
        return bool(verdict)

    def _report(self, epoch: int, value: float) -> bool:
        """Main process. A study that cannot be reached costs pruning, never the run."""
        try:
            trial = self._trial()
            trial.report(value, epoch)
            if not trial.should_prune():
                return False
        except Exception as e:  # noqa: BLE001 - any failure of the journal: train on unpruned
            print(f"sweep: cannot report to the study ({type(e).__name__}: {e}); no pruning", file=sys.stderr)
            return False
        with open(self.spec["marker"], "w") as f:
            json.dump({"epoch": epoch, "value": value}, f)
        print(
            f"Pruned by the sweep's {self.spec['pruner']['name']} pruner at epoch {epoch} "
            f"({self.spec['objective']} {value:.4f}): stopping here like an early stop",
            flush=True,
        )
        return True

    def _trial(self):
        if self.trial is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            storage = open_journal(self.spec["journal"])
            study = optuna.load_study(
                study_name=self.spec["study"],
                storage=storage,
                sampler=optuna.samplers.RandomSampler(),  # not used: the worker samples
                pruner=build_pruner(self.spec["pruner"]),
            )
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(self.spec["study"]), self.spec["trial"]
            )
            self.trial = optuna.trial.Trial(study, trial_id)
            _label_wandb_run(self.spec)
        return self.trial


def _label_wandb_run(spec: dict) -> None:
    """The trial's number and parameters in its W&B run's config (W&B's parallel-coordinates and
    importance panels read them); the group is set by the worker (WANDB_RUN_GROUP)."""
    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return
    import contextlib

    with contextlib.suppress(Exception):  # tracking never stops a run (tracking.py's rule)
        wandb.run.config.update(
            {"sweep": {"study": spec["study"], "trial": spec["trial"], "params": spec["params"]}},
            allow_val_change=True,
        )
