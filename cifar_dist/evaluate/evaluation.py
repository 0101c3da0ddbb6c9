"""Exact, sharded evaluation over a whole split.

Each rank evaluates whole single-process batches (no padding), then per-sample losses and
predictions are gathered, ordered by sample index and reduced as sums and counts in float64.
The result is identical for 1, 2 or N processes, also when N × batch does not divide the split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data.datasets import norm_stats, normalize_batch
from ..distributed.collectives import eval_batches, gather_varlen
from ..progress import bar


@dataclass(frozen=True)
class EvalSettings:
    """How a split is evaluated: the same for the trainer's validation and test and for evaluate.py."""

    batch_size: int = 500  # images per evaluation batch on each process
    tta: bool = False  # flip test-time augmentation
    tta_translate: int = 0  # with tta: also views shifted ±N pixels
    channels_last: bool = False  # NHWC batches, as the model was trained

    @classmethod
    def from_config(cls, cfg) -> EvalSettings:
        return cls(cfg.eval.per_device_batch_size, cfg.eval.tta, cfg.eval.tta_translate, cfg.train.channels_last)


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    num_samples: int
    correct: int
    confusion: list[list[int]]  # confusion[true][pred]
    classes: list[str]
    predictions: torch.Tensor = field(repr=False)  # (N,) predicted class per sample, in split order
    confidences: torch.Tensor = field(repr=False)  # (N,) softmax probability of the prediction
    top3: torch.Tensor = field(repr=False)  # (N, 3) classes

    @property
    def per_class(self) -> dict[str, dict[str, int]]:
        return {
            name: {"correct": self.confusion[i][i], "total": sum(self.confusion[i])}
            for i, name in enumerate(self.classes)
        }

    def to_json(self) -> dict:
        return {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "num_samples": self.num_samples,
            "per_class": self.per_class,
            "confusion": self.confusion,
        }

    def tutorial_lines(self, label: str = "Test") -> list[str]:
        """The tutorial's report: 'Test Accuracy of  bird: 65% (659/1000)' (percentages rounded down,
        as the tutorial does)."""
        lines = []
        for name, pc in self.per_class.items():
            if pc["total"]:
                lines.append(
                    f"{label} Accuracy of {name:>5s}: {100 * pc['correct'] // pc['total']:2d}% "
                    f"({pc['correct']:2d}/{pc['total']:2d})"
                )
            else:
                lines.append(f"{label} Accuracy of {name:>5s}: N/A (no training examples)")
        lines.append(
            f"\n{label} Accuracy (Overall): {100 * self.correct // max(self.num_samples, 1)}% "
            f"({self.correct}/{self.num_samples})"
        )
        return lines


def print_report(result: EvalResult, split: str, accelerator) -> None:
    """The one report of an evaluated split, in the tutorial's format, printed once (main process);
    its counts are the ones --json and test_metrics.json hold."""
    label = "Test" if split == "test" else "Validation"
    accelerator.print(f"{label} Loss: {result.loss:.6f}\n")
    for line in result.tutorial_lines(label):
        accelerator.print(line)


def _flip_mean(net, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (net(x) + net(torch.flip(x, dims=[3])))


def logits_of(net, x: torch.Tensor, tta: bool, translate: int = 0) -> torch.Tensor:
    """The model's logits; with tta (flip test-time augmentation), averaged with those of the mirror
    image. evaluate.py's splits and its --images predictions both go through here.
    With tta and translate = t > 0 (eval.tta_translate): also the image shifted t pixels up-left and
    t down-right (reflect padding, as in training), each with its mirror: 6 views, the unshifted pair
    weighted 1/2 and each shifted pair 1/4 (airbench's translate-and-flip views)."""
    if not tta:
        return net(x)
    logits = _flip_mean(net, x)
    if translate:
        h, w = x.shape[-2:]
        padded = F.pad(x, (translate,) * 4, mode="reflect")
        ends = 2 * translate
        shifted = _flip_mean(net, padded[..., :h, :w]) + _flip_mean(net, padded[..., ends : ends + h, ends : ends + w])
        logits = 0.5 * logits + 0.25 * shifted
    return logits


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch to the device. On CUDA through pinned memory, so the copy is asynchronous: non_blocking
    from pageable memory is a synchronous copy in all but name."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def evaluate_split(model, data, split: str, accelerator, settings: EvalSettings) -> EvalResult:
    """Collective: `model` on a whole split of a DataBundle ("val" or "test")."""
    images, labels = data.split(split)
    return evaluate(model, images, labels, data, accelerator, settings)


def _gathered(accelerator, idx_parts, loss_parts, prob_parts, num_classes: int, n: int):
    """Collective: every rank's per-image losses and probabilities, gathered and put in split order
    (whatever the world size); checks that the shards covered the split exactly once."""
    idx = torch.cat(idx_parts) if idx_parts else torch.zeros(0, dtype=torch.int64)
    losses = torch.cat(loss_parts).cpu() if loss_parts else torch.zeros(0)
    probs = torch.cat(prob_parts).cpu() if prob_parts else torch.zeros(0, num_classes)
    idx = gather_varlen(accelerator, idx)
    losses = gather_varlen(accelerator, losses)
    probs = gather_varlen(accelerator, probs)
    order = torch.argsort(idx)  # split order, whatever the world size
    idx, losses, probs = idx[order], losses[order], probs[order]
    assert torch.equal(idx, torch.arange(n)), "evaluation shards must cover the split exactly once"
    return losses, probs


@torch.no_grad()  # no autograd graph: kept per batch until the end, it took ~6 MB an image with 6-view TTA
def evaluate(
    model, images_u8: torch.Tensor, labels: torch.Tensor, data, accelerator, settings: EvalSettings
) -> EvalResult:
    """Collective: every rank must call it. `data` gives the normalisation and class names (a
    DataBundle). `model` may be DDP-wrapped; we run the bare module so no rank waits on another's
    forward (uneven batch counts are fine)."""
    mean, std, classes = data.mean, data.std, data.classes
    batch_size, tta, tta_translate = settings.batch_size, settings.tta, settings.tta_translate
    net = accelerator.unwrap_model(model)
    was_training = net.training
    net.eval()
    device = accelerator.device
    mean, std = norm_stats(mean, std, device)  # once per evaluation, not per batch
    idx_parts, loss_parts, prob_parts = [], [], []
    batches = eval_batches(len(labels), batch_size, accelerator.process_index, accelerator.num_processes)
    with bar(
        "evaluating" + ((" with flip and translate TTA" if tta_translate else " with flip TTA") if tta else ""),
        len(batches),
        accelerator.is_main_process,
    ) as advance:
        for batch in batches:
            lo, hi = batch[0], batch[-1] + 1  # eval_batches deals out contiguous ranges
            x = normalize_batch(_to_device(images_u8[lo:hi], device), mean, std)
            if settings.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = _to_device(labels[lo:hi], device)
            with accelerator.autocast():
                logits = logits_of(net, x, tta, tta_translate).float()
            idx_parts.append(torch.arange(lo, hi))
            # kept on the device: a .cpu() per batch would wait for the GPU every batch
            loss_parts.append(F.cross_entropy(logits, y, reduction="none"))
            prob_parts.append(torch.softmax(logits, dim=1))
            advance()
    net.train(was_training)
    num_classes = len(classes)
    losses, probs = _gathered(accelerator, idx_parts, loss_parts, prob_parts, num_classes, len(labels))
    conf, preds = probs.max(dim=1)
    top3 = probs.topk(min(3, num_classes), dim=1).indices
    n = len(labels)
    correct = int((preds == labels).sum())
    confusion = torch.bincount(labels * num_classes + preds, minlength=num_classes**2).view(num_classes, num_classes)
    loss = float(losses.double().sum() / max(n, 1))  # sum, then divide
    return EvalResult(
        loss=loss,
        accuracy=correct / max(n, 1),
        num_samples=n,
        correct=correct,
        confusion=confusion.tolist(),
        classes=list(classes),
        predictions=preds,
        confidences=conf,
        top3=top3,
    )
