"""cifar-dist: the PyTorch CIFAR-10 tutorial, grown into a distributed, resumable, tracked toolkit."""

__version__ = "0.1.0"


def load_model(path, device="cpu", trust_code=False):
    """The network of an exported model folder (`<run.dir>/model`), a run folder or a best.pt, with its
    weights, in eval mode: `from cifar_dist import load_model; model = load_model("runs/x/model")`.
    A model from your own `package.module:factory` imports that code: only with trust_code=True."""
    from .artifacts.export import load_model as _load_model

    return _load_model(path, device, trust_code=trust_code)


# The model classes, for `from cifar_dist import TutorialCNN` (and TutorialCNN.from_pretrained): imported on
# first use, so `import cifar_dist` stays light (no torch until a model is asked for).
_MODEL_CLASSES = ("TutorialCNN", "TutorialCNNBN", "ResNetFast", "Airbench")
__all__ = ["load_model", *_MODEL_CLASSES]


def __getattr__(name: str):
    if name in _MODEL_CLASSES or name in ("SeedCNN", "SeedCNNBN"):  # the old names of the tutorial's classes
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'cifar_dist' has no attribute {name!r}")
