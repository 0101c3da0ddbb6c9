"""Command-line entry points: `cifar-train` / `train.py` and `cifar-eval` / `evaluate.py`.

    cifar-train --preset seed_fast --data.name=fashion_mnist --train.epochs=3
    cifar-eval --checkpoint runs/<run>/ --split test --json out.json

Bad input ends in one line on stderr and exit code 2 (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import sys

from .errors import UserError, print_error


def run_cli(fn, argv: list[str] | None) -> int | str | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        fn(argv)
        code = 0
    except SystemExit as e:  # a stop request (state saved: 0 after USR1, 143 after TERM), or argparse
        code = e.code
    except UserError as e:
        if debug:
            raise
        from .distributed import env_local_rank

        if env_local_rank() == 0:  # every rank fails the same way; say it once per machine
            print_error(str(e))
        else:  # and leave after the rank that says it
            from .distributed import wait_for_launcher_stop

            wait_for_launcher_stop()
        code = e.exit_code
    except Exception as e:  # a collective whose peer died or hung: one line per surviving rank
        from .faults import peer_failure

        message = None if debug else peer_failure(e)
        if message is None:
            raise
        print_error(message)
        from .distributed import wait_for_launcher_stop

        wait_for_launcher_stop()  # so the launcher sees the peer fail first, and blames it
        return 1
    return code


def main(fn, argv: list[str] | None) -> None:
    """The one way out of train.py and evaluate.py: whatever happened, the process ends through
    exit_process (a rank of several skips interpreter finalization, where gloo's threads abort)."""
    from .wait_policy import choose_wait_policy

    choose_wait_policy()  # before torch starts its thread pool (the import below starts it)
    from .distributed import exit_process

    try:
        code = run_cli(fn, argv)
    except KeyboardInterrupt:  # here, not in run_cli: Ctrl-C may also land in run_cli's own handlers
        print("interrupted", file=sys.stderr)
        code = 130
        from .tracking import end_interrupted

        end_interrupted(code)
    except BaseException:  # noqa: BLE001 - a bug, or --debug: the traceback Python prints, then the same exit
        import traceback

        traceback.print_exc()
        code = 1
    exit_process(code)


def reject_unknown_options(parser: argparse.ArgumentParser, rest: list[str], extra: tuple[str, ...] = ()) -> None:
    """A flag that is neither the parser's nor a --section.key override (nor one of `extra`) is a
    typo: say which option was probably meant, instead of a config error about a key or a value."""
    import difflib

    known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")] + ["--debug", *extra]
    for arg in rest:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and "." not in name and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"options: {', '.join(known)}, or --section.key=value"
            raise UserError(f"unknown option {name}; {hint}")


# --help's first keys, in this order; every key follows after the options.
MOST_USED_KEYS = ("optim.lr", "train.per_device_batch_size", "train.epochs", "data.name", "data.root", "run.dir")
PROCESSES_HELP = """processes (not a config key: the launcher starts them; global batch = per-device batch × processes):
  accelerate launch --num_processes N train.py ...          N GPUs of this machine (or num_processes in
                                                            `accelerate config` / a --config_file YAML)
  accelerate launch --config_file accelerate_configs/cpu_ddp.yaml train.py ...   2 CPU processes (DDP)"""


def most_used_help() -> str:
    """The most used keys' entries of the generated key list (two lines each), then how to set the
    number of processes."""
    from .config import config_help

    lines = config_help().splitlines()
    entries = {
        line.split("=", 1)[0].strip().removeprefix("--"): (line, meaning)
        for line, meaning in zip(lines[::2], lines[1::2])
    }
    shown = [line for key in MOST_USED_KEYS for line in entries[key]]
    return "most used (all keys below the options):\n" + "\n".join(shown) + "\n\n" + PROCESSES_HELP


def _train(argv: list[str]) -> None:
    from .config import PRESETS, config_help, config_warnings, config_yaml, resolve

    p = argparse.ArgumentParser(
        prog="cifar-train",
        allow_abbrev=False,
        formatter_class=argparse.RawTextHelpFormatter,
        description=f"Train on CIFAR-10 (and friends). Any config key: --section.key=value.\n\n{most_used_help()}",
        epilog=f"presets: {', '.join(PRESETS)}\n\nconfig keys (defaults < --preset < "
        f"--config < these; the defaults are the tutorial's):\n{config_help()}",
    )
    p.add_argument("--preset", default=None, help="named recipe (default: seed, the tutorial)")
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
    from .trainer import train

    train(cfg)


def _eval(argv: list[str]) -> None:
    from .evaluate_cli import main

    main(argv)


def train_main(argv: list[str] | None = None) -> None:
    main(_train, argv)


def eval_main(argv: list[str] | None = None) -> None:
    main(_eval, argv)
