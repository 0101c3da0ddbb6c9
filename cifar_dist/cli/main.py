"""Command-line entry points: `cifar-train` / `train.py` and `cifar-eval` / `evaluate.py`.

    cifar-train --preset tutorial_fast --data.name=fashion_mnist --train.epochs=3
    cifar-eval --checkpoint runs/<run>/ --split test --json out.json

Bad input ends in one line on stderr and exit code 2 (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import UserError, print_error


def run_cli(fn, argv: list[str] | None) -> int | str | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        code = fn(argv) or 0  # the command's exit status: a stop request's (0 after USR1, 143 after TERM)
    except SystemExit as e:  # argparse: --help, or its own usage error
        code = e.code
    except UserError as e:
        if debug:
            raise
        from ..distributed.accelerator import env_local_rank

        if env_local_rank() == 0:  # every rank fails the same way; say it once per machine
            print_error(str(e))
        else:  # and leave after the rank that says it
            wait_for_launcher_stop()
        code = e.exit_code
    except Exception as e:  # a collective whose peer died or hung: one line per surviving rank
        from ..distributed.faults import peer_failure

        message = None if debug else peer_failure(e)
        if message is None:
            raise
        print_error(message)
        wait_for_launcher_stop()  # so the launcher sees the peer fail first, and blames it
        return 1
    return code


def main(fn, argv: list[str] | None) -> None:
    """The one way out of train.py and evaluate.py: whatever happened, the process ends through
    exit_process (a rank of several skips interpreter finalization, where gloo's threads abort)."""
    from ..distributed.wait_policy import choose_wait_policy

    choose_wait_policy(sys.argv[1:] if argv is None else argv)  # before torch starts its thread pool
    try:
        code = run_cli(fn, argv)
    except KeyboardInterrupt:  # here, not in run_cli: Ctrl-C may also land in run_cli's own handlers
        code = 130
        try:
            interrupted(code)
        except KeyboardInterrupt:  # a second Ctrl-C before interrupted() took over the signal
            leave_now(code)
        # No interpreter finalization: it puts SIGINT's default back, and a second Ctrl-C then would
        # kill the process by the signal instead of exit 130.
        exit_process(code, finalize=False)
    except BaseException:  # noqa: BLE001 - a bug, or --debug: the traceback Python prints, then the same exit
        import traceback

        traceback.print_exc()
        code = 1
    exit_process(code)


def interrupted(code: int) -> None:
    """After Ctrl-C: the one line, then the tracker's run closed within tracking.CLOSE_DEADLINE_S. A second
    Ctrl-C from here on ends the process at once."""
    import signal

    signal.signal(signal.SIGINT, lambda signum, frame: leave_now(code))
    print("interrupted", file=sys.stderr)
    from ..tracking.tracker import end_interrupted

    end_interrupted(code)


def exit_process(code, finalize: bool = True) -> None:
    """Leave the process with `code` (what sys.exit takes). Every exit of train.py and evaluate.py
    comes here (cli.main): success, a one-line error, a stop request, a failed peer, a traceback.
    A process that was one rank of several skips interpreter finalization, after running what a
    normal exit runs (atexit: wandb's teardown, logging's flush) and flushing its output.

    Why: once DDP has used a gloo process group, torch never frees it (pytorch#107298); if one of its
    threads drops its last finished collective while the main thread finalizes, the decref must take
    the GIL, which ends that thread inside a C++ frame: std::terminate, SIGABRT, a lost worker after
    the run has written everything, blamed by the launcher. The measurements and the core dump's
    stack are in docs/results.md, "Measurements behind the code"."""
    from ..distributed.accelerator import env_world_size
    from ..tracking.deadline import abandoned

    if abandoned():  # a close that never returned (wandb's, its service dead): its exit hooks would wait too
        leave_now(code)
    if finalize and env_world_size() <= 1:
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    leave_now(code)


def leave_now(code) -> None:
    """End the process at once with `code`, output flushed, no exit hooks and no interpreter finalization."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message") prints it and exits 1
        print(code, file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# --help's first keys, in this order; every key follows after the options.
MOST_USED_KEYS = (
    "optim.lr",
    "train.per_device_batch_size",
    "train.global_batch_size",
    "train.epochs",
    "data.name",
    "data.root",
    "run.dir",
)
PROCESSES_HELP = """processes (not a config key: the launcher starts them; each takes global_batch_size / processes):
  accelerate launch --num_processes N train.py ...          N GPUs of this machine (or num_processes in
                                                            `accelerate config` / a --config_file YAML)
  accelerate launch --config_file accelerate_configs/cpu_ddp.yaml train.py ...   2 CPU processes (DDP)"""


def most_used_help() -> str:
    """The most used keys' entries of the generated key list (two lines each), then how to set the
    number of processes."""
    from ..config.schema import config_help

    lines = config_help().splitlines()
    entries = {
        line.split("=", 1)[0].strip().removeprefix("--"): (line, meaning)
        for line, meaning in zip(lines[::2], lines[1::2])
    }
    shown = [line for key in MOST_USED_KEYS for line in entries[key]]
    return "most used (all keys below the options):\n" + "\n".join(shown) + "\n\n" + PROCESSES_HELP


# torchrun polls its workers every 0.1 s (accelerate launch's --monitor_interval); waiting up to this
# long for its SIGTERM is only paid in full when no other local worker exits (a hung peer, a peer on
# another machine), where the job has already waited train.dist_timeout_s or lost a machine.
LAUNCHER_GRACE_S = 10.0


def wait_for_launcher_stop(grace_s: float = LAUNCHER_GRACE_S) -> None:
    """Under torchrun, stay until its SIGTERM (at most grace_s), which it sends to every other worker
    once it has seen one exit with a failure. Two callers (cli.run_cli), both about who leaves first:
    - after a peer died mid-collective: the launcher names the failure it saw first as the root cause
      (timestamps to the second; within one poll, the lowest local rank), so a survivor that left at
      once could be blamed instead of the peer;
    - a rank that is not its machine's first, after a one-line error every rank hits: the first one
      prints it, and a rank that left sooner had the launcher stop the first before it printed
      (docs/results.md, "Measurements behind the code").
    Without torchrun (srun tasks, mpirun) there is no such report and nothing to wait for."""
    import signal
    import time

    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    got: list[int] = []
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    except ValueError:  # not the main thread
        return
    # preemption's handler recorded a SIGTERM that came before ours was installed
    if getattr(previous, "signum", None) == signal.SIGTERM:
        return
    # A sleep, not sigwait: the signal may land on any of gloo's threads; Python runs the handler on
    # the main thread between two sleeps.
    deadline = time.monotonic() + grace_s
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)


def _train(argv: list[str]) -> int | None:
    from ..config.keys import reject_unknown_options
    from ..config.rules import config_warnings
    from ..config.schema import PRESET_ALIASES, PRESETS, config_help, config_yaml, resolve

    p = argparse.ArgumentParser(
        prog="cifar-train",
        allow_abbrev=False,
        formatter_class=argparse.RawTextHelpFormatter,
        description=f"Train on CIFAR-10 (and friends). Any config key: --section.key=value.\n\n{most_used_help()}",
        epilog=f"presets: {', '.join(PRESETS)} (old names: {', '.join(PRESET_ALIASES)})\n\n"
        f"config keys (defaults < --preset < --config < these; the defaults are the tutorial's):\n{config_help()}",
    )
    p.add_argument(
        "--preset", default=None, help="named recipe (default: tutorial, the PyTorch CIFAR-10 tutorial exactly)"
    )
    p.add_argument("--config", default=None, help="YAML file with config sections (--print-config writes one)")
    p.add_argument("--resume", action="store_true", help="continue run.dir from its last full state")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    args, rest = p.parse_known_args(argv)
    reject_unknown_options(p, rest, extra=("--seed",))  # a top-level config key
    if args.resume:
        rest.append("--train.resume=true")
    cfg = resolve(args.preset, args.config, rest)
    if args.print_config:
        print(config_yaml(cfg), end="")
        for line in config_warnings(cfg):
            print(line, file=sys.stderr)
        return
    from ..sweep.pruning import hook_from_env
    from ..train.loop import train

    # A sweep's trial (CIFAR_DIST_SWEEP_TRIAL set) reports each validation and may be pruned; else None.
    return train(cfg, after_epoch=hook_from_env()).get("exit_code", 0)


def _eval(argv: list[str]) -> None:
    from .evaluate import main

    main(argv)


def train_main(argv: list[str] | None = None) -> None:
    main(_train, argv)


def eval_main(argv: list[str] | None = None) -> None:
    main(_eval, argv)
