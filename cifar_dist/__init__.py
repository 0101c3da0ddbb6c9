"""cifar-dist: the PyTorch CIFAR-10 tutorial, grown into a distributed, resumable, tracked toolkit."""

__version__ = "0.1.0"


def load_model(path, device="cpu", trust_code=False):
    """The network of an exported model folder (`<run.dir>/model`), a run folder or a best.pt, with its
    weights, in eval mode: `from cifar_dist import load_model; model = load_model("runs/x/model")`.
    A model from your own `package.module:factory` imports that code: only with trust_code=True."""
    from .export import load_model as _load_model

    return _load_model(path, device, trust_code=trust_code)
