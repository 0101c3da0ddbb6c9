"""Accuracy against training compute: the toolkit's presets as measured on CIFAR-10 (JPEG q75 copy), the peer
(airbench94's own script) measured on the same copy, and published anchors (lossless CIFAR-10), as a markdown
table and a figure (PFLOPs on a log scale).

    python benchmarks/frontier.py                                # table to stdout
    python benchmarks/frontier.py --figure docs/figures/frontier.png

Each preset's compute is counted here, not copied: FLOPs per training image of its real model
(cifar_dist/models/flops.py, forward + backward) times the images it trains on (epochs × steps per epoch ×
global batch, one process, CIFAR-10's 50,000 training images less the preset's validation share).
The accuracies are the test accuracies docs/results.md reports for the same runs (measured, here);
the peer's point is airbench94's own published script run here on the same JPEG copy (FACTS.md, 2026-12-06:
one run, its 6-view TTA); the published points are marked as such and were not run here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cifar_dist.config import resolve
from cifar_dist.models import build_model
from cifar_dist.models.flops import pflops, train_flops_per_image

CIFAR10_TRAIN = 50_000
# (label, preset, overrides, test accuracy, runs) from docs/results.md: CIFAR-10 JPEG q75 copy, this box.
MEASURED = [
    ("tutorial", "tutorial", [], 0.7456, "1 run"),
    (
        "time_to_accuracy (3 epochs)",
        "tutorial_fast",
        ["--model.name=tutorial_cnn_bn", "--train.epochs=3"],
        0.7658,
        "1 run",
    ),
    ("tutorial_fast", "tutorial_fast", [], 0.8403, "median of 6"),
    ("resnet_fast", "resnet_fast", [], 0.8836, "median of 3"),
    ("airbench w32 (10 epochs, 40,000)", "airbench", ["--model.width=32", "--data.val_fraction=0.2"], 0.8787, "1 run"),
    ("fast (w32, 26 epochs, all 50,000)", "fast", [], 0.9015, "median of 3"),
    ("airbench (w64, 10 epochs, all 50,000)", "airbench", [], 0.9068, "median of 3"),
    ("airbench_muon (w64, Muon, 8 epochs)", "airbench_muon", [], 0.9084, "median of 3"),
    ("airbench_muon, 29 epochs", "airbench_muon", ["--train.epochs=29"], 0.9170, "1 run"),
]  # fmt: skip
LABEL_LEFT = {
    "airbench w32 (10 epochs, 40,000)",
    "fast (w32, 26 epochs, all 50,000)",
    "airbench_muon (w64, Muon, 8 epochs)",
}
# Points that sit on top of each other near 0.3 PFLOP / 90.6 %: their labels go where these offsets say.
LABEL_OFFSET = {
    "airbench (w64, 10 epochs, all 50,000)": (6, -2),
    "airbench94's own script, this copy": (6, -16),
    "airbench_muon (w64, Muon, 8 epochs)": (-6, 10),
    "airbench_muon, 29 epochs": (5, 6),
    "resnet_fast": (5, -12),
}
# (label, PFLOP, accuracy, runs): the peer's own code, measured on this JPEG copy (FACTS.md, 2026-12-06: legacy
# airbench94.py changed only to run on the CPU, 9.9 epochs of 50,000, test with its 6-view TTA; 0.8993 without).
PEER = [("airbench94's own script, this copy", 0.36, 0.9059, "1 run, peer's code")]
# (label, PFLOP, accuracy): airbench's README (airbench94 and airbench94_muon: 94.01 % on lossless CIFAR-10;
# a ResNet-18 run to 96 %). Published, not measured here.
PUBLISHED = [
    ("airbench94 (published)", 0.36, 0.9401),
    ("airbench94_muon (published)", 0.29, 0.9401),
    ("ResNet-18 (published)", 32.3, 0.96),
]


def preset_compute(preset: str, overrides: list[str]) -> tuple[float, int]:
    """(FLOPs per training image, images trained) of a preset on CIFAR-10-shaped photos."""
    cfg = resolve(preset, None, ["--data.name=imagefolder", *overrides])
    model = build_model(
        cfg.model.name, 3, 32, 10, dropout=cfg.model.dropout, width=cfg.model.width, kwargs=cfg.model.kwargs
    )
    if cfg.model.whiten:  # frozen: the first layer runs no backward at all
        model.whiten.weight.requires_grad_(False)
    train = CIFAR10_TRAIN - int(round(CIFAR10_TRAIN * cfg.data.val_fraction))
    batch = cfg.train.global_batch_size or cfg.train.per_device_batch_size  # one process: the whole batch
    return train_flops_per_image(model, 3, 32), cfg.train.epochs * (train // batch) * batch


def rows() -> list[dict]:
    out = []
    for label, preset, overrides, acc, runs in MEASURED:
        per_image, images = preset_compute(preset, overrides)
        out.append(
            {"label": label, "gflop_per_image": per_image / 1e9, "images": images,
             "pflops": pflops(per_image, images), "accuracy": acc, "runs": runs, "published": False}
        )  # fmt: skip
    for label, pf, acc, runs in PEER:
        out.append(
            {"label": label, "gflop_per_image": None, "images": None, "pflops": pf, "accuracy": acc,
             "runs": runs, "published": False, "peer": True}
        )  # fmt: skip
    for label, pf, acc in PUBLISHED:
        out.append(
            {"label": label, "gflop_per_image": None, "images": None, "pflops": pf, "accuracy": acc,
             "runs": "published", "published": True}
        )  # fmt: skip
    return out


def table(rs: list[dict]) -> str:
    lines = ["| point | GFLOP / image | images trained | PFLOP | test accuracy | source |", "|---|---|---|---|---|---|"]
    for r in rs:
        g = f"{r['gflop_per_image']:.4g}" if r["gflop_per_image"] else "—"
        n = f"{r['images']:,}" if r["images"] else "—"
        a = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "not measured"
        lines.append(f"| {r['label']} | {g} | {n} | {r['pflops']:.4g} | {a} | {r['runs']} |")
    return "\n".join(lines)


def _kind(r: dict) -> str:
    return "published" if r["published"] else "peer" if r.get("peer") else "ours"


def figure(rs: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    kinds = {  # kind: (marker, size, face, edge, legend)
        "ours": ("o", 50, None, None, "cifar-dist presets, measured (JPEG q75 copy)"),
        "peer": ("D", 60, "none", "tab:green", "airbench94's own script, measured (same JPEG copy)"),
        "published": ("*", 120, "none", "tab:red", "published, lossless CIFAR-10 (not measured here)"),
    }
    for kind, (marker, size, face, edge, legend) in kinds.items():
        pts = [r for r in rs if _kind(r) == kind and r["accuracy"] is not None]
        ax.scatter(
            [r["pflops"] for r in pts],
            [100 * r["accuracy"] for r in pts],
            marker=marker,
            s=size,
            facecolors=face,
            edgecolors=edge,
            label=legend,
        )
        for i, r in enumerate(pts):  # labels alternately below and above their points: neighbours stay legible
            left = r["label"] in LABEL_LEFT  # where the points crowd, the label goes left of its point
            ax.annotate(r["label"], (r["pflops"], 100 * r["accuracy"]), textcoords="offset points",
                        xytext=LABEL_OFFSET.get(r["label"], (-5, -3) if left else (5, 5 if i % 2 else -10)),
                        ha="right" if left else "left",
                        fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training compute (PFLOP, forward + backward, log scale)")
    ax.set_ylabel("CIFAR-10 test accuracy (%)")
    ax.set_title("Accuracy against training compute")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", bbox_to_anchor=(0.4, 0.15), fontsize=8)  # the empty space right of the CNNs
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figure", type=Path, default=None, help="also draw the figure here (PNG)")
    args = parser.parse_args(argv)
    rs = rows()
    print(table(rs))
    if args.figure:
        figure(rs, args.figure)
        print(f"figure: {args.figure}")
    return rs


if __name__ == "__main__":
    main()
