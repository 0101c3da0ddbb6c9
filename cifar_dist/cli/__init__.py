"""The commands, one module each: `cifar-train`/`train.py` and the one way out of the process (`main`),
`cifar-eval`/`evaluate.py` (`evaluate`), `python -m cifar_dist.export` (`export`), `python -m
cifar_dist.wandb_records` (`wandb_records`). Importing this stays light: torch loads after the wait policy."""

from .main import eval_main, exit_process, main, run_cli, train_main

__all__ = ["eval_main", "exit_process", "main", "run_cli", "train_main"]
