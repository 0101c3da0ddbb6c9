"""python -m cifar_dist [train|eval] ARGS  (train when no subcommand is given)."""

import sys

from .cli import eval_main, train_main

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["eval"]:
        eval_main(args[1:])
    train_main(args[1:] if args[:1] == ["train"] else args)
