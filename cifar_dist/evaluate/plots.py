"""The tutorial's figures, as PNG files a user can open: a batch of training images, one image's
colour channels with every pixel value written on it, test predictions, the confusion matrix,
per-class accuracy and the training curves.

    python evaluate.py --checkpoint runs/<run>/ --plots figs/ [--plots-images 16]

`write_all` is called by every rank (it ends in a collective error check); only the main process
draws and writes. Each function below returns a matplotlib Figure (no pyplot, so no global state
and no display backend: the Agg canvas renders it), which the tests inspect directly.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch

from ..artifacts.metrics import read_metrics
from ..errors import UserError
from ..files import atomic_write_bytes
from ..progress import bar

DPI = 100
CHANNELS_DPI = 150  # 1024 numbers per panel: more pixels per digit, see channels_figure
RIGHT, WRONG = "#1a7f37", "#cf222e"  # green / red that stay readable on white
FIGURES = ("batch.png", "channels.png", "predictions.png", "confusion.png", "per_class.png", "curves.png")


# --------------------------------------------------------------------------- helpers (pure)


def unnormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Invert Normalize(mean, std) on an NCHW float batch: x·std + mean, clipped to [0, 1].
    The tutorial's `img / 2 + 0.5` is this formula for mean = std = 0.5 only."""
    m = torch.as_tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x * s + m).clamp_(0, 1)


def _luminance(rgb) -> float:
    """WCAG relative luminance of an sRGB colour with components in [0, 1]."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def text_colour(rgb) -> str:
    """Black or white, whichever has the higher WCAG contrast ratio against `rgb`. For grey pixels
    the switch lands at value 118 (luminance 0.179, where (1.05)/(L+0.05) = (L+0.05)/0.05)."""
    lum = _luminance(rgb)
    return "black" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "white"


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: Path, dpi: int = DPI) -> Path:
    """Render with Agg at a fixed size (no bbox cropping, so the pixel size is figsize × dpi) and
    publish atomically: a reader never sees half a PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _show(ax, img_u8: torch.Tensor) -> None:
    """uint8 CHW -> imshow, pixels as pixels (no smoothing), no axes."""
    if img_u8.shape[0] == 1:
        ax.imshow(img_u8[0].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(img_u8.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(n: int) -> tuple[int, int]:
    """The tutorial's layout: two rows (one for a single image)."""
    rows = 1 if n == 1 else 2
    return rows, math.ceil(n / rows)


# --------------------------------------------------------------------------- figures


def batch_figure(images_u8: torch.Tensor, labels: torch.Tensor, classes: list[str], mean, std):
    """Training images titled with their class, shown as the model's normalised input mapped back."""
    from ..data.datasets import normalize_batch

    x = unnormalize(normalize_batch(images_u8, mean, std), mean, std)  # what the model sees, un-normalised
    n = len(images_u8)
    rows, cols = _grid(n)
    fig = _figure(cols * 1.6, rows * 1.8 + 0.5)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        if x.shape[1] == 1:
            ax.imshow(x[i, 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(x[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(classes[int(labels[i])], fontsize=10)
    stats = ", ".join(f"{m:.3f}" for m in mean), ", ".join(f"{s:.3f}" for s in std)
    fig.suptitle(f"{n} training images (un-normalised: x·std + mean, mean ({stats[0]}), std ({stats[1]}))", fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 0.6 / (rows * 1.8 + 0.5), wspace=0.08, hspace=0.3)
    return fig


CELL_IN = 0.28  # inches per pixel in channels.png: "255" at 6.5 pt is 3 × 0.636 em ≈ 12.4 pt of a 20 pt cell
VALUE_PT = 6.5


def channels_figure(image_u8: torch.Tensor, title: str = ""):
    """One grey panel per channel (R, G, B; a single one for grey images) with every pixel's value
    (0-255) written on it in black or white, whichever contrasts more with that pixel."""
    c, h, w = image_u8.shape
    names = ["grey"] if c == 1 else ["red", "green", "blue"][:c] if c <= 3 else [f"channel {i}" for i in range(c)]
    panel_w, panel_h = w * CELL_IN, h * CELL_IN
    margin_w, top_in, bottom_in = 0.3, 1.05, 0.15
    fig_w = c * panel_w + (c + 1) * margin_w
    fig_h = panel_h + top_in + bottom_in
    fig = _figure(fig_w, fig_h)
    values = image_u8.numpy()
    for k in range(c):
        left = (margin_w + k * (panel_w + margin_w)) / fig_w
        ax = fig.add_axes((left, bottom_in / fig_h, panel_w / fig_w, panel_h / fig_h))
        ax.imshow(values[k], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{names[k]} channel", fontsize=14)
        for y in range(h):
            for x in range(w):
                v = int(values[k, y, x])
                ax.text(x, y, str(v), ha="center", va="center", fontsize=VALUE_PT, color=text_colour((v / 255,) * 3))
    if title:
        fig.suptitle(title, fontsize=14, y=1 - 0.12 / fig_h, va="top")
    return fig


def spread_indices(n: int, k: int) -> torch.Tensor:
    """k indices spread evenly over range(n), first and last included: 0, n/k, 2n/k, ..."""
    return torch.linspace(0, n - 1, k).round().long()


def predictions_figure(
    images_u8: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, classes: list[str], split: str
):
    n = len(images_u8)
    rows, cols = _grid(n)
    fig = _figure(cols * 1.9, rows * 2.0 + 0.5)
    right = 0
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        _show(ax, images_u8[i])
        ok = int(preds[i]) == int(labels[i])
        right += ok
        ax.set_title(f"{classes[int(preds[i])]} ({classes[int(labels[i])]})", fontsize=9, color=RIGHT if ok else WRONG)
    fig.suptitle(f"{n} {split} images: prediction (true class), green right, red wrong: {right}/{n} right", fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 0.6 / (rows * 2.0 + 0.5), wspace=0.1, hspace=0.3)
    return fig


def confusion_figure(confusion: list[list[int]], classes: list[str], split: str):
    """Counts in the cells, colour = fraction of the true class (row-normalised), so a rare class's
    mistakes are as visible as a common one's."""
    from matplotlib import colormaps

    k = len(classes)
    counts = torch.tensor(confusion, dtype=torch.float64)
    frac = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    cell = 0.6 if k <= 20 else max(0.15, 12 / k)
    side = k * cell
    left, bottom, top, right = 1.4, 1.3, 0.5, 1.25  # inches for class names, rotated names, title, colour bar
    fig_w, fig_h = left + side + right, bottom + side + top
    fig = _figure(fig_w, fig_h)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, side / fig_w, side / fig_h))
    cmap = colormaps["Blues"]
    im = ax.imshow(frac.numpy(), cmap=cmap, vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=9 if k <= 20 else 5)
    ax.set_yticks(range(k), classes, fontsize=9 if k <= 20 else 5)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 30:  # beyond that the numbers no longer fit their cells
        for t in range(k):
            for p in range(k):
                ax.text(
                    p,
                    t,
                    str(int(counts[t, p])),
                    ha="center",
                    va="center",
                    fontsize=9 if k <= 20 else 6,
                    color=text_colour(cmap(float(frac[t, p]))),
                )
    cax = fig.add_axes(((left + side + 0.2) / fig_w, bottom / fig_h, 0.2 / fig_w, side / fig_h))
    fig.colorbar(im, cax=cax, label="fraction of the true class")
    total, right = int(counts.sum()), int(counts.diagonal().sum())
    ax.set_title(
        f"confusion matrix, {split} split: {right}/{total} right ({100 * right / max(total, 1):.1f}%)", fontsize=11
    )
    return fig


def per_class_figure(per_class: dict[str, dict[str, int]], split: str):
    names = list(per_class)
    k = len(names)
    acc = [100 * v["correct"] / v["total"] if v["total"] else 0.0 for v in per_class.values()]
    bar = 0.4 if k <= 30 else 0.15
    fig_h = k * bar + 1.2  # + 0.7 in below for the axis label, 0.5 in above for the title
    fig = _figure(9, fig_h)
    ax = fig.add_axes((0.16, 0.7 / fig_h, 0.8, k * bar / fig_h))
    y = list(range(k))
    bars = ax.barh(y, acc, color="#4c72b0")
    ax.set_yticks(y, names, fontsize=9 if k <= 30 else 5)
    ax.invert_yaxis()  # first class on top, as in the report table
    ax.set_xlim(0, 118)  # room for the labels right of a 100% bar
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("accuracy (%)")
    if k <= 30:
        ax.bar_label(
            bars,
            [
                f"{a:.1f}% ({v['correct']}/{v['total']})" if v["total"] else "no images"
                for a, v in zip(acc, per_class.values())
            ],
            padding=3,
            fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.85},
        )  # over the lines
    correct = sum(v["correct"] for v in per_class.values())
    total = sum(v["total"] for v in per_class.values())
    overall = 100 * correct / max(total, 1)
    ax.axvline(overall, color="black", linestyle="--", linewidth=1, zorder=0)  # behind bars and labels
    ax.axvline(100 / k, color="grey", linestyle=":", linewidth=1, zorder=0)
    ax.set_title(
        f"per-class accuracy, {split} split (dashed: overall {overall:.1f}%, dotted: chance {100 / k:.0f}%)",
        fontsize=11,
    )
    return fig


def curves_figure(rows: list[dict], best_epoch: int | None):
    """Loss and accuracy per epoch, train and validation, with the best-validation epoch marked
    (the one whose weights best.pt holds)."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(12, 4.6)
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
    for ax, what in zip(axes, ("loss", "accuracy")):
        scale = 100 if what == "accuracy" else 1
        for split, style in (("train", "-o"), ("val", "-s")):
            pts = [(r["epoch"], scale * r[f"{split}_{what}"]) for r in rows if f"{split}_{what}" in r]
            if not pts:
                continue
            label, size = "train" if split == "train" else "validation", 4
            if split == "val" and len(pts) < len(rows):  # train.eval_every_epochs > 1: say where it was measured
                label, size = f"validation ({_epochs_label([e for e, _ in pts])})", 8
            ax.plot(*zip(*pts), style, markersize=size, label=label)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="#cf222e", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
            best = [r for r in rows if r.get("epoch") == best_epoch and f"val_{what}" in r]
            if best:
                ax.plot(
                    [best_epoch],
                    [scale * best[0][f"val_{what}"]],
                    "*",
                    markersize=16,
                    markerfacecolor="none",
                    markeredgecolor="#cf222e",
                )  # hollow, so the validation point stays visible under it
        ax.set_xlabel("epoch")
        ax.set_ylabel(what if what == "loss" else "accuracy (%)")
        # why validation can sit below train: the train value is the mean over the epoch's steps
        ax.set_title(f"{what} per epoch (train: mean over the epoch, validation: at its end)", fontsize=10)
        last = max([r.get("epoch", 1) for r in rows] + [best_epoch or 1])
        ax.set_xlim(0.5, last + 0.5)  # also a 1-epoch run gets whole-epoch ticks, not 0.945 ... 1.05
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def _epochs_label(epochs: list[int]) -> str:
    """Where a sparse validation curve has points: "epoch 30", "epochs 10, 20, 30"."""
    if len(epochs) == 1:
        return f"epoch {epochs[0]}"
    shown = ", ".join(map(str, epochs[:4])) + (", ..." if len(epochs) > 4 else "")
    return f"epochs {shown}"


# --------------------------------------------------------------------------- all of them


def _best_epoch(ckpt: dict, rows: list[dict]) -> int | None:
    if isinstance(ckpt.get("epoch"), int):
        return ckpt["epoch"]
    marked = [r["epoch"] for r in rows if r.get("best")]
    return marked[-1] if marked else None


def write_all(
    out_dir: Path,
    data,
    result,
    split: str,
    ckpt: dict,
    checkpoint: Path,
    accelerator,
    n_images: int = 16,
    channel_index: int = 0,
) -> dict[str, Path]:
    """Collective (every rank calls it; only the main process draws). Returns {name: path} of the
    files written (empty on other ranks); curves.png is skipped, with a note, when the run folder
    has no metrics.jsonl (a best.pt copied elsewhere)."""
    from ..distributed.collectives import raise_if_any

    written: dict[str, Path] = {}
    message = None
    if accelerator.is_main_process:
        try:
            written = _write_all(Path(out_dir), data, result, split, ckpt, Path(checkpoint), n_images, channel_index)
        except UserError as e:
            message = str(e)
        except OSError as e:
            message = f"cannot write the figures into {out_dir} ({e.strerror}); choose a writable folder for --plots"
    raise_if_any(accelerator, message)
    return written


def _write_all(out: Path, data, result, split, ckpt, checkpoint, n_images, channel_index) -> dict[str, Path]:
    if n_images < 1:
        raise UserError(f"--plots-images must be >= 1, got {n_images}")
    images, labels = data.split(split)
    if n_images > min(len(data.train_labels), len(labels)):
        raise UserError(
            f"--plots-images {n_images} is more than the {min(len(data.train_labels), len(labels))} images available"
        )
    out.mkdir(parents=True, exist_ok=True)
    from ..artifacts.run_dir import RunDir, run_dir_of

    metrics = RunDir(run_dir_of(checkpoint)).metrics
    with bar("drawing figures", 5 + metrics.exists()) as advance:  # a bar on a terminal only
        written = _draw(out, data, images, labels, result, split, ckpt, metrics, n_images, channel_index, advance)
    if not metrics.exists():
        print(f"note: curves.png skipped: {metrics} does not exist (the checkpoint is not in its run folder)")
    print(f"wrote {', '.join(p.name for p in written.values())} to {out}")
    return written


def _draw(out, data, images, labels, result, split, ckpt, metrics, n_images, channel_index, advance) -> dict[str, Path]:
    written = {}
    fig = batch_figure(data.train_images[:n_images], data.train_labels[:n_images], data.classes, data.mean, data.std)
    written["batch"] = save_png(fig, out / "batch.png")
    advance()
    img = data.train_images[channel_index]
    title = (
        f"training image {channel_index}: {data.classes[int(data.train_labels[channel_index])]}"
        f"{' (the first in batch.png)' if channel_index == 0 else ''}\npixel values 0-255"
    )
    written["channels"] = save_png(channels_figure(img, title), out / "channels.png", dpi=CHANNELS_DPI)
    advance()
    # Evenly spaced over the split, not its first n: an image-folder split is sorted by class, so its
    # first 16 would all be airplanes. Deterministic, so reruns draw the same images.
    pick = spread_indices(len(labels), n_images)
    fig = predictions_figure(images[pick], labels[pick], result.predictions[pick], data.classes, split)
    written["predictions"] = save_png(fig, out / "predictions.png")
    advance()
    written["confusion"] = save_png(confusion_figure(result.confusion, data.classes, split), out / "confusion.png")
    advance()
    written["per_class"] = save_png(per_class_figure(result.per_class, split), out / "per_class.png")
    advance()
    if metrics.exists():
        rows = read_metrics(metrics)
        written["curves"] = save_png(curves_figure(rows, _best_epoch(ckpt, rows)), out / "curves.png")
        advance()
    return written
