"""The study folder and the Optuna study in it: one journal file that every worker shares (on a shared
filesystem, no database server), the space it was made with, a lock, heartbeats.

    STUDY/space.json            the checked space and the study's name (one space a folder; `trials` may change)
    STUDY/journal.log           Optuna's JournalFileBackend: the study itself
    STUDY/sweep.lock            held while a worker counts the trials and takes the next one
    STUDY/heartbeats/NNNN       touched every few seconds while trial NNNN runs (its worker is alive)
    STUDY/trials/NNNN/          trial NNNN's run.dir (a retry of it trains in the same folder)
    STUDY/trials/NNNN.log       its output, appended across resumes
    STUDY/report.md, STUDY/figures/*.png   the report (sweep --report STUDY writes them at any time)

Optuna's JournalStorage has no heartbeat of its own (RDBStorage has), so the heartbeat is a file's
mtime; a RUNNING trial whose heartbeat is older than the grace period is failed here and handed to
Optuna's RetryFailedTrialCallback, which queues one copy of it (same parameters, same run folder).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .pruning import build_pruner, open_journal
from .space import Param, Space
from .toolkit import UserError

MAX_RETRY = 1


@dataclass(frozen=True)
class StudyDir:
    path: Path

    @property
    def name(self) -> str:
        """The study's name in the journal: the folder's name when it was made (space.json keeps it, so
        a study folder that is moved or renamed still opens)."""
        if self.space.exists():
            return json.loads(self.space.read_text()).get("study", self.path.resolve().name)
        return self.path.resolve().name

    journal = property(lambda self: self.path / "journal.log")
    space = property(lambda self: self.path / "space.json")
    lock = property(lambda self: self.path / "sweep.lock")
    heartbeats = property(lambda self: self.path / "heartbeats")
    trials = property(lambda self: self.path / "trials")
    figures = property(lambda self: self.path / "figures")
    report = property(lambda self: self.path / "report.md")

    def run_dir(self, root: int) -> Path:
        return self.trials / f"{root:04d}"

    def heartbeat(self, number: int) -> Path:
        return self.heartbeats / f"{number:04d}"


def check_folder(space: Space, sd: StudyDir) -> None:
    """Read-only: a folder holding another space, or other files, is refused before anything is written."""
    if sd.space.exists():
        saved = json.loads(sd.space.read_text())
        if saved.get("fingerprint") != space.fingerprint():
            mine, theirs = json.loads(space.fingerprint()), json.loads(saved.get("fingerprint", "{}"))
            diff = next((k for k in mine if mine[k] != theirs.get(k)), "?")
            raise UserError(
                f"study folder {sd.path} holds a different space (its '{diff}' differs from {space.source}'s); "
                f"use a new --study folder, or the space saved in {sd.space}"
            )
    elif sd.path.exists() and any(sd.path.iterdir()):
        raise UserError(
            f"study folder {sd.path} holds other files and no space.json; use a new or empty --study folder"
        )


def save_space(space: Space, sd: StudyDir) -> None:
    sd.path.mkdir(parents=True, exist_ok=True)
    if not sd.space.exists():
        tmp = sd.space.with_suffix(f".tmp{id(space)}")
        saved = {"study": sd.name, "fingerprint": space.fingerprint(), "space": asdict(space)}
        tmp.write_text(json.dumps(saved, indent=1, default=str))
        tmp.replace(sd.space)


def saved_space(sd: StudyDir) -> Space:
    """The space a study folder was made with (sweep --report)."""
    if not sd.space.exists():
        raise UserError(f"{sd.path} is not a study folder (no space.json); pass the --study folder of a sweep")
    d = json.loads(sd.space.read_text())["space"]
    d["params"] = [Param(**{**p, "choices": tuple(p["choices"])}) for p in d["params"]]
    return Space(**d)


def build_sampler(space: Space, worker: int):
    """TPE (with constant_liar: parallel workers avoid sampling next to each other's running trials),
    random or grid. TPE's and random's seed is the space's plus the worker's index, so workers draw
    different points; the grid's is the space's in every worker (it shuffles the grid with it and gives
    trial N the N-th point: different seeds made two workers run one point twice, measured)."""
    import optuna

    seed = space.seed + worker
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if space.sampler == "grid":
        return optuna.samplers.GridSampler({p.key: list(p.choices) for p in space.params}, seed=space.seed)
    startup = max(2, min(10, space.trials // 3))  # TPE's random start: a third of a small study
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=startup)


def quiet_optuna() -> None:
    """Optuna's INFO lines and its 'experimental' warnings (retry_history, the matplotlib plots) off."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_study(space: Space, sd: StudyDir, worker: int = 0):
    """-> (study, its storage): the storage too, for what Study has no method for (a trial's state)."""
    import optuna

    quiet_optuna()
    storage = open_journal(sd.journal)
    study = optuna.create_study(
        study_name=sd.name,
        storage=storage,
        sampler=build_sampler(space, worker),
        pruner=build_pruner(space.pruner),
        direction=space.direction,
        load_if_exists=True,
    )
    return study, storage


def load(sd: StudyDir):
    import optuna

    quiet_optuna()
    return optuna.load_study(study_name=sd.name, storage=open_journal(sd.journal))


def retry_class():
    """Optuna's retry callback: RetryHeartbeatStaleTrialCallback since 4.9, RetryFailedTrialCallback before."""
    import optuna.storages as storages

    return getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback


def retry_callback():
    return retry_class()(max_retry=MAX_RETRY, inherit_intermediate_values=True)


def root_number(study, number: int) -> int:
    """The first trial of a retry chain: its run folder is every retry's (resumes from its last/)."""
    history = retry_class().retry_history(study.get_trials(deepcopy=False)[number])
    return history[0] if history else number


def trial_id(study, storage, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


@dataclass
class Tally:
    done: int  # COMPLETE, PRUNED, and FAIL that is not retried
    running: int
    waiting: int


def tally(study) -> Tally:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {retry_class().retried_trial_number(t) for t in trials}
    done = sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and t.number not in retried)
        for t in trials
    )
    count = lambda s: sum(t.state == s for t in trials)
    return Tally(done, count(TrialState.RUNNING), count(TrialState.WAITING))


def fail_stale(study, storage, sd: StudyDir, grace_s: float) -> list[str]:
    """Under the lock: RUNNING trials whose heartbeat is older than grace_s are failed (their worker
    died without saying so) and retried once by Optuna's RetryFailedTrialCallback. Returns what it did."""
    from optuna.trial import TrialState

    said, now = [], time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = sd.heartbeat(t.number)
        last = beat.stat().st_mtime if beat.exists() else t.datetime_start.timestamp()
        if now - last <= grace_s:
            continue
        storage.set_trial_state_values(trial_id(study, storage, t.number), TrialState.FAIL)
        failed = study.get_trials(deepcopy=False)[t.number]
        retry_callback()(study, failed)
        retried = failed.number in {retry_class().retried_trial_number(x) for x in study.get_trials()}
        said.append(
            f"trial {t.number}: no heartbeat for {now - last:.0f} s (its worker died): failed"
            + ("; queued once more, resuming in its run folder" if retried else f"; not retried (max {MAX_RETRY})")
        )
        beat.unlink(missing_ok=True)
    return said


class Heartbeat:
    """Touches STUDY/heartbeats/NNNN every interval_s while a trial runs; the file holds the trial's
    process group id (a test that kills a 'node' kills it too)."""

    def __init__(self, path: Path, interval_s: float):
        self.path, self.interval_s = path, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def start(self, pgid: int | str = "") -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(str(pgid))
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(OSError):
                self.path.touch()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 1)
        self.path.unlink(missing_ok=True)
