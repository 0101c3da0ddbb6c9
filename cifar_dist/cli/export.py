"""python -m cifar_dist.export RUN [--push-to-hub REPO_ID]: (re)write a run's model/ folder from its
best.pt, and upload it to the Hugging Face Hub; the command line of export/__init__.py's model format."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..artifacts.export import WEIGHTS, load_checkpoint, push_to_hub, write_model_folder
from ..artifacts.run_dir import RunDir, run_dir_of


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(
        prog="python -m cifar_dist.export",
        allow_abbrev=False,
        description="Write a run's best model as model/ and optionally upload it.",
    )
    p.add_argument("checkpoint", help="a run folder, its best.pt, or its model/ folder")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="upload model/ to this Hub repository")
    p.add_argument("--private", action="store_true", help="create the Hub repository as private")
    args = p.parse_args(argv)
    path = Path(args.checkpoint)
    run = RunDir(run_dir_of(path))
    if not (path / WEIGHTS).exists():  # from best.pt: (re)write model/, with the test results if there
        ckpt = load_checkpoint(path)
        ckpt.setdefault("command", "")
        test = json.loads(run.test_metrics.read_text()) if run.test_metrics.exists() else None
        print(f"wrote {write_model_folder(run, ckpt, test)}")
    folder = path if (path / WEIGHTS).exists() else run.model
    if args.push_to_hub:
        print(f"uploaded {folder} to {args.push_to_hub}: {push_to_hub(folder, args.push_to_hub, args.private)}")


if __name__ == "__main__":
    from .main import main as run_command

    run_command(main, None)
