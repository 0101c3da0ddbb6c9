"""python -m cifar_dist.sweep SPACE.yaml --study DIR | --report DIR"""

from .cli import main

if __name__ == "__main__":
    main()
