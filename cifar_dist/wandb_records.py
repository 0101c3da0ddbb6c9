"""Reading an offline W&B run back: the old path, kept for users' imports and commands; it lives in
tracking/records.py (the reader) and cli/wandb_records.py (the command).

    python -m cifar_dist.wandb_records runs/<run>            # every W&B run under run.dir
    python -m cifar_dist.wandb_records runs/<run>/wandb/offline-run-20250101_120000-ab12cd34 --json
"""

from .tracking.records import RecordFileError, RunRecords, describe, find_run_files, inspect, read_run  # noqa: F401

if __name__ == "__main__":
    from .cli.main import main as run_command
    from .cli.wandb_records import main

    run_command(main, None)
