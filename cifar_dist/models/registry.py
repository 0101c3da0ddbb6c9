"""Model registry. Every model takes (in_channels, image_size, num_classes) so one recipe runs on
CIFAR (3×32×32) and Fashion-MNIST (1×28×28).

    from cifar_dist.models import build_model
    model = build_model("tutorial_cnn", in_channels=3, image_size=32, num_classes=10)

The classes are Hugging Face Hub mixins: `TutorialCNN.from_pretrained("runs/<run>/model")` reads an
exported model folder (cifar_dist/export/) and returns the network in eval mode, its weights checked strictly.

    tutorial_cnn      the tutorial's CNN, layer for layer (541,094 parameters for CIFAR)
    tutorial_cnn_bn   the same layers with batch norm after each pool (541,206)
    resnet_fast   the ResNet-9 family, `model.width` wide (6.57 M at width 64)
    airbench      airbench94's shape: 2×2 patch stem, three conv groups of widths w, 4w, 4w
                  (airbench94 is width 64: 1.97 M parameters)

model.name also takes any torchvision classification model (`torchvision:resnet18`), a timm model
(`timm:NAME`, with the optional extra cifar-dist[timm]) and a user's own factory
(`package.module:factory`, importable from PYTHONPATH), with `model.kwargs` passed to it.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..errors import UserError, first_line

MODELS: dict[str, Callable[..., nn.Module]] = {}
# Old names -> registered names: checkpoints, model folders and commands written under them still work.
MODEL_ALIASES = {"seed_cnn": "tutorial_cnn", "seed_cnn_bn": "tutorial_cnn_bn"}


def register(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn

    return deco


class _HubModel(PyTorchModelHubMixin, library_name="cifar-dist", tags=["image-classification"]):
    """from_pretrained: the mixin builds the class from config.json's keys that match __init__'s
    arguments (extra keys such as class_names are ignored) and loads model.safetensors."""

    @classmethod
    def _from_pretrained(cls, *, strict: bool = True, **kwargs):
        # The mixin's default strict=False would skip a missing or renamed weight without a word.
        return super()._from_pretrained(strict=strict, **kwargs).eval()


class TutorialCNN(nn.Module, _HubModel):
    """The PyTorch CIFAR-10 tutorial's CNN, layer for layer.

    3 conv layers (3→16→32→64, 3×3, padding 1), each ReLU + 2×2 max-pool; dropout 0.3; fc 1024→500→10.
    For 3×32×32 input: 448 + 4,640 + 18,496 + 512,500 + 5,010 = 541,094 parameters.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        side = image_size // 2 // 2 // 2  # three 2×2 pools: 32 → 4, 28 → 3
        self.fc1 = nn.Linear(64 * side * side, 500)
        self.fc2 = nn.Linear(500, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._conv_pool_relu(self.conv1, x)
        x = self._conv_pool_relu(self.conv2, x)
        x = self._conv_pool_relu(self.conv3, x)
        # The tutorial's x.view(-1, 64*4*4) fails on channels_last tensors; flatten is the same maths.
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = F.relu(self.fc1(x))
        x = self.dropout(x)
        return self.fc2(x)

    def _conv_pool_relu(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """The tutorial's pool(relu(conv(x))), reordered as relu(pool(conv_without_bias(x)) + bias).

        Same function: ReLU, max and adding one constant per channel all commute with a 2×2 max
        (rounding is monotone too, so max_i fl(c_i + b) = fl(max_i c_i + b): the forward pass equals
        the tutorial's with the bias added after the convolution, bit for bit; tests/test_fast_path.py).
        Cheaper: the ReLU, the bias add and the bias gradient's sum run on 4× fewer values (the epoch
        time it saves: docs/results.md). Same parameters and state_dict keys as nn.Conv2d's.
        """
        x = self.pool(F.conv2d(x, conv.weight, None, conv.stride, conv.padding))
        return F.relu(x + conv.bias.view(1, -1, 1, 1))


@register("tutorial_cnn")
def tutorial_cnn(in_channels: int, image_size: int, num_classes: int, dropout: float = 0.3, **_) -> nn.Module:
    return TutorialCNN(in_channels, image_size, num_classes, dropout)


class TutorialCNNBN(nn.Module, _HubModel):
    """The tutorial's CNN with batch norm: each conv (no bias: the norm's shift replaces it) is
    followed by the 2×2 max-pool, then BatchNorm, then ReLU; fc 1024→500→10 as in the tutorial.

    For 3×32×32 input: 432 + 4,608 + 18,432 conv weights, 2·(16+32+64) = 224 norm weights and shifts,
    512,500 + 5,010 linear = 541,206 parameters (the tutorial's 541,094 - 112 conv biases + 224).
    The norm lets it train at higher learning rates: on CIFAR-10's validation split it reaches 0.77
    in 3 epochs where tutorial_cnn reaches 0.75 (docs/results.md); the norm after the pool costs little.
    `benchmarks/time_to_accuracy.py` uses it.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
            return [conv, nn.MaxPool2d(2, 2), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        side = image_size // 2 // 2 // 2
        self.features = nn.Sequential(*block(in_channels, 16), *block(16, 32), *block(32, 64), nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(64 * side * side, 500),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(500, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register("tutorial_cnn_bn")
def tutorial_cnn_bn(in_channels: int, image_size: int, num_classes: int, dropout: float = 0.3, **_) -> nn.Module:
    return TutorialCNNBN(in_channels, image_size, num_classes, dropout)


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    # No conv bias: the batch norm right after it has its own shift.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c, c), _conv_bn(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetFast(nn.Module, _HubModel):
    """A ResNet-9-family network (Page's DAWNBench ResNet-9, airbench's conv groups): conv-BN-ReLU
    blocks without conv biases, max-pool inside each group, residual pairs after groups 1 and 3,
    global max pool, a bias-free linear head scaled by 1/8 (keeps the initial logits small).

    Widths w, 2w, 4w, 8w for base width w (`model.width`); w=64 is ResNet-9 (6.57 M parameters).
    Any image size ≥ 8 works (three 2×2 pools, then a global pool): 32 for CIFAR, 28 for MNIST.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            _conv_bn(in_channels, w),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            _Residual(2 * w),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * w, 8 * w, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(8 * w),
            nn.ReLU(inplace=True),
            _Residual(8 * w),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(8 * w, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x)) * 0.125


SeedCNN, SeedCNNBN = TutorialCNN, TutorialCNNBN  # the old class names: SeedCNN.from_pretrained(...) still loads


@register("resnet_fast")
def resnet_fast(in_channels: int, image_size: int, num_classes: int, width: int = 64, **_) -> nn.Module:
    return ResNetFast(in_channels, num_classes, width)


class _AirbenchGroup(nn.Sequential):
    """conv 3×3 → 2×2 max-pool → BN → GELU → conv 3×3 → BN → GELU (airbench's ConvGroup): the pool comes
    right after the first conv, so the second runs at a quarter of the pixels."""

    def __init__(self, c_in: int, c_out: int, bn_learn_scale: bool):
        def norm() -> nn.BatchNorm2d:
            # airbench's norm: momentum 0.4 in PyTorch's convention (its 0.6 is the share kept), tiny eps.
            bn = nn.BatchNorm2d(c_out, momentum=0.4, eps=1e-12)
            bn.weight.requires_grad_(bn_learn_scale)  # fixed at 1 when not learned: a shift-only norm
            return bn

        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            norm(),
            nn.GELU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            norm(),
            nn.GELU(),
        )


class Airbench(nn.Module, _HubModel):
    """airbench94's network (Jordan 2024): a 2×2 conv stem without padding (32 → 31 pixels) to
    2·C·4 channels and GELU; three `_AirbenchGroup`s of widths w, 4w, 4w (31 → 15 → 7 → 3); a 3×3
    max-pool; a bias-free linear head scaled by 1/9. Width 64 is airbench94 (64/256/256).

    The stem is an ordinary trainable conv unless the trainer overwrites it with
    airbench.patch_whitening_filters and freezes it (model.whiten); `dirac_init` starts every 3×3
    conv as the identity on its input channels (airbench.dirac_init_).
    """

    def __init__(self, in_channels=3, num_classes=10, width=64, bn_learn_scale=True, dirac_init=False):
        super().__init__()
        stem = 2 * in_channels * 4
        self.whiten = nn.Conv2d(in_channels, stem, 2, padding=0, bias=True)
        w = (stem, width, 4 * width, 4 * width)
        self.groups = nn.Sequential(*(_AirbenchGroup(w[i], w[i + 1], bn_learn_scale) for i in range(3)))
        self.head = nn.Linear(w[3], num_classes, bias=False)
        if dirac_init:
            from .whitening import dirac_init_

            for m in self.groups.modules():
                if isinstance(m, nn.Conv2d):
                    dirac_init_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(F.gelu(self.whiten(x)))
        x = torch.flatten(F.adaptive_max_pool2d(x, 1), 1)  # 3×3 → 1: airbench's MaxPool2d(3) at 32 pixels
        return self.head(x) / 9


@register("airbench")
def airbench(
    in_channels: int, image_size: int, num_classes: int, width: int = 64, bn_learn_scale: bool = True, **kw
) -> nn.Module:
    return Airbench(in_channels, num_classes, width, bn_learn_scale, bool(kw.get("dirac_init", False)))


BUILTIN_KINDS = ("torchvision", "timm")  # model.name prefixes besides a user's package.module:factory
_CODE_NAME = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")


def model_source(name: str) -> str:
    """Where model.name's network comes from: builtin, torchvision, timm or code (a user's
    package.module:factory); a one-line UserError for anything else."""
    if name in MODELS or name in MODEL_ALIASES:  # an old name (seed_cnn) is the built-in it became
        return "builtin"
    prefix, _, rest = name.partition(":")
    if prefix in BUILTIN_KINDS and rest:
        return prefix
    if _CODE_NAME.fullmatch(name):
        return "code"
    raise UserError(
        f"model.name={name!r} is not valid; choose one of: {', '.join(MODELS)}, torchvision:NAME, timm:NAME "
        f"or package.module:factory (your own code)"
    )


def build_model(
    name: str,
    in_channels: int,
    image_size: int,
    num_classes: int,
    kwargs: dict | None = None,
    trust_code: bool = True,
    **builtin_args,
) -> nn.Module:
    """The network model.name names. Built-ins take model.dropout / model.width (`builtin_args`); the
    others take model.kwargs and are checked once on a [2, C, S, S] batch of zeros: the output must be
    [batch, num_classes]. `trust_code=False` refuses to import a user's package.module:factory (what
    loading a downloaded model does unless the caller says it trusts the code)."""
    name = MODEL_ALIASES.get(name, name)
    source = model_source(name)
    if source == "builtin":
        return MODELS[name](in_channels=in_channels, image_size=image_size, num_classes=num_classes, **builtin_args)
    kwargs = dict(kwargs or {})
    if source == "torchvision":
        model = _torchvision_model(name.partition(":")[2], num_classes, kwargs)
    elif source == "timm":
        model = _timm_model(name.partition(":")[2], in_channels, num_classes, kwargs)
    else:
        if not trust_code:
            raise UserError(
                f"refusing to import {name!r}: it is your own Python code, and running it is your call; "
                f"pass trust_code=True (evaluate.py: --trust-code) if you trust it"
            )
        model = _code_model(name, in_channels, image_size, num_classes, kwargs)
    check_output(model, name, in_channels, image_size, num_classes)
    return model


def _torchvision_model(arch: str, num_classes: int, kwargs: dict) -> nn.Module:
    import torchvision
    from torchvision import models as tvm

    if arch not in tvm.list_models(module=tvm):  # classification models only (not detection, video, ...)
        raise UserError(
            f"torchvision {torchvision.__version__} has no classification model {arch!r}; "
            f"see torchvision.models.list_models(module=torchvision.models)"
        )
    try:
        return tvm.get_model(arch, num_classes=num_classes, **kwargs)  # weights=None: randomly initialised
    except (TypeError, ValueError) as e:
        raise UserError(f"torchvision:{arch} with model.kwargs={kwargs} failed: {first_line(e, 160)}") from None


def _timm_model(arch: str, in_channels: int, num_classes: int, kwargs: dict) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UserError(
            f"model.name=timm:{arch} needs timm, which is not installed: pip install 'cifar-dist[timm]'"
        ) from None
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except (RuntimeError, TypeError, ValueError, KeyError) as e:
        raise UserError(f"timm:{arch} with model.kwargs={kwargs} failed: {first_line(e, 160)}") from None


def _code_model(name: str, in_channels: int, image_size: int, num_classes: int, kwargs: dict) -> nn.Module:
    """package.module:factory, called with num_classes (and in_channels, image_size when its
    signature takes them) and model.kwargs."""
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ModuleNotFoundError, or the module's own code failing
        raise UserError(
            f"model.name={name}: cannot import {module_name!r} ({type(e).__name__}: {first_line(e, 120)}); "
            f"put its folder on PYTHONPATH (or pip install it) and check the name"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"model.name={name}: {module_name} has no function or class {attr!r}")
    shape = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes}
    try:
        params = inspect.signature(factory).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        args = {k: v for k, v in shape.items() if k == "num_classes" or takes_any or k in params}
    except (TypeError, ValueError):  # no signature to read (a C callable): pass num_classes only
        args = {"num_classes": num_classes}
    try:
        model = factory(**args, **kwargs)
    except TypeError as e:
        raise UserError(
            f"model.name={name}: calling {attr}({', '.join([*args, *kwargs])}) failed: {first_line(e, 120)}; "
            f"it must take num_classes (and optionally in_channels, image_size) plus model.kwargs"
        ) from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model.name={name}: {attr}(...) returned {type(model).__name__}, not a torch.nn.Module")
    return model


def check_output(model: nn.Module, name: str, in_channels: int, image_size: int, num_classes: int) -> None:
    """One forward pass on a [2, C, S, S] batch of zeros in eval mode (no dropout draws, no BatchNorm
    update): the logits must be [batch, num_classes]."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, image_size, image_size))
    except Exception as e:
        raise UserError(
            f"model {name} failed on a [2, {in_channels}, {image_size}, {image_size}] batch "
            f"({type(e).__name__}: {first_line(e, 120)}); it must take the dataset's images"
        ) from None
    finally:
        model.train(was_training)
    shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != [2, num_classes]:
        raise UserError(
            f"model {name} returned {shape} for a batch of 2 images; it must return logits of shape "
            f"[batch, num_classes] = [2, {num_classes}]"
        )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
