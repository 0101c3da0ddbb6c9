"""`python -m cifar_dist.sweep SPACE.yaml --study DIR` (console script `cifar-sweep`): one worker; start
several (or a SLURM array: slurm/sweep.sbatch) on the same --study folder to search in parallel.
`--report DIR` prints and writes the report of a study at any time. Bad input: one line, exit 2,
nothing written. docs/sweeps.md has the whole story."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .toolkit import UserError, print_error

USAGE = __doc__


def parser() -> argparse.ArgumentParser:
    from .trial import DEFAULT_LAUNCHER

    p = argparse.ArgumentParser(prog="cifar-sweep", description=USAGE, allow_abbrev=False)
    p.add_argument("space", nargs="?", help="the search space YAML (docs/sweeps.md, sweeps/*.yaml)")
    p.add_argument("--study", help="the study folder (journal, trials, report); workers share it")
    p.add_argument("--report", metavar="DIR", help="print and write the report of study folder DIR, then exit")
    p.add_argument(
        "--launcher",
        default=None,
        help=f"the command a trial's overrides follow (default: the space's launch:, else '{DEFAULT_LAUNCHER}')",
    )
    p.add_argument(
        "--worker-index", type=int, default=None, help="added to the sampler's seed (default: array task id or 0)"
    )
    p.add_argument(
        "--heartbeat", type=float, default=10.0, help="seconds between heartbeats (a trial is dead after 6 missed)"
    )
    p.add_argument("--debug", action="store_true", help="a traceback instead of the one-line error")
    return p


def run(argv: list[str]) -> int:
    import os

    args = parser().parse_args(argv)
    from .study import StudyDir

    if args.report:
        return report(StudyDir(Path(args.report)))
    if not args.space or not args.study:
        raise UserError("give a space file and a study folder: python -m cifar_dist.sweep SPACE.yaml --study DIR")
    if args.heartbeat <= 0:
        raise UserError(f"--heartbeat must be > 0 seconds, got {args.heartbeat}")
    from .space import load_space
    from .study import check_folder
    from .trial import DEFAULT_LAUNCHER
    from .worker import Options, Worker

    space = load_space(args.space)
    sd = StudyDir(Path(args.study))
    check_folder(space, sd)  # read-only: nothing is written before every check has passed
    worker = args.worker_index if args.worker_index is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", 0))
    opts = Options(args.launcher or space.launch or DEFAULT_LAUNCHER, worker, args.heartbeat)
    w = Worker(space, sd, opts)
    code = w.run()
    if code == 0:
        from .report import write_report

        with w.lock:
            print(write_report(w.study, space, sd), end="", flush=True)
    return code


def report(sd) -> int:
    from .report import write_report
    from .study import load, saved_space

    space = saved_space(sd)
    if not sd.journal.exists():
        raise UserError(f"{sd.path} has no journal.log yet: no worker has started")
    print(write_report(load(sd), space, sd), end="")
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = run(argv)
    except UserError as e:
        if "--debug" in argv:
            raise
        print_error(str(e))
        code = e.exit_code
    sys.exit(code)
