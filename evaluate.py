"""Evaluate a checkpoint: `python evaluate.py --checkpoint runs/<run>/ [--split test|val] [--json out.json]`.

Also under `accelerate launch` with several processes: the numbers are identical.
"""

from cifar_dist.cli import eval_main

if __name__ == "__main__":
    eval_main()
