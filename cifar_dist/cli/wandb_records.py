"""python -m cifar_dist.wandb_records RUN [--json]: an offline W&B run, read back without an account."""

from __future__ import annotations

import argparse
import json

from ..errors import print_error
from ..tracking.records import RecordFileError, describe, find_run_files, read_run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cifar_dist.wandb_records", description=__doc__.splitlines()[0])
    p.add_argument("path", help="a run.dir, a wandb run folder, or a run-*.wandb file")
    p.add_argument("--json", action="store_true", help="print config, summary, epoch rows and artifacts as JSON")
    args = p.parse_args(argv)
    files = find_run_files(args.path)
    if not files:
        print_error(f"no run-*.wandb file under {args.path}; pass a run.dir or a wandb run folder")
        return 2
    try:
        runs = [read_run(f) for f in files]
    except RecordFileError as e:
        print_error(str(e))
        return 2
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "file": str(r.path),
                        "run_id": r.run_id,
                        "config": r.config,
                        "summary": r.summary,
                        "epochs": r.epoch_rows(),
                        "artifacts": r.artifacts,
                        "exit_code": r.exit_code,
                    }
                    for r in runs
                ],
                indent=2,
                default=str,
            )
        )
    else:
        print("\n".join(describe(r) for r in runs))
    return 0


if __name__ == "__main__":
    from .main import main as run_command

    run_command(main, None)
