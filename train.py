"""Train a classifier: `accelerate launch train.py [--preset NAME] [--config FILE] [--section.key=value ...]`.

The tutorial run is the default: `accelerate launch train.py`.
"""

from cifar_dist.cli import train_main

if __name__ == "__main__":
    train_main()
