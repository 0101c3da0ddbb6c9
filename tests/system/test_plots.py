"""evaluate.py --plots: the six figures, written by the real CLI (one process and two DDP
processes), decoded back with PIL; and the figure objects themselves, whose images and text
objects must carry the values they claim to show."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import accelerate_cmd, eval_cmd, read_metrics, run
from PIL import Image

from cifar_dist.data import normalize_batch
from cifar_dist.data.synthetic import CIFAR10_CLASSES
from cifar_dist.evaluate.plots import (
    FIGURES,
    batch_figure,
    channels_figure,
    curves_figure,
    predictions_figure,
    text_colour,
    unnormalize,
)

# Pixel sizes (figsize × dpi, no cropping) for 10 classes and --plots-images 8 (a 2×4 grid):
EXPECTED_SIZE = {
    "batch.png": (640, 410),  # 4 cols × 1.6 in, 2 rows × 1.8 in + 0.5 in title; 100 dpi
    "predictions.png": (760, 450),  # 4 × 1.9 in, 2 × 2.0 + 0.5 in
    "channels.png": (
        4212,
        1524,
    ),  # 3 panels × 32 px × 0.28 in + 4 × 0.3 in margins; 32 × 0.28 + 1.05 + 0.15 in; 150 dpi
    "confusion.png": (865, 780),  # 1.4 + 10 × 0.6 + 1.25 in; 1.3 + 6 + 0.5 in
    "per_class.png": (900, 520),  # 9 in; 10 × 0.4 + 1.2 in
    "curves.png": (1200, 460),  # 12 × 4.6 in
}


def assert_png_ok(path, size):
    assert path.exists(), f"{path.name} was not written"
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == size, f"{path.name}: {im.size} != {size}"
        grey = np.asarray(im.convert("L"), dtype=np.float64)
    # not blank: real content, i.e. many non-white pixels and spread in brightness
    assert (grey < 250).mean() > 0.02, f"{path.name} is (nearly) blank"
    assert grey.std() > 10, f"{path.name} has almost no contrast"


@pytest.mark.slow
def test_cli_writes_all_six_figures(tmp_path, trained_run):
    out = tmp_path / "figs"
    p = run(eval_cmd("--checkpoint", str(trained_run), "--plots", str(out), "--plots-images", "8"), check=True)
    assert sorted(f.name for f in out.iterdir()) == sorted(FIGURES)
    for name, size in EXPECTED_SIZE.items():
        assert_png_ok(out / name, size)
    assert p.stdout.count("wrote batch.png") == 1


@pytest.mark.slow
def test_two_ddp_processes_write_once(tmp_path, trained_run):
    """Only the main process draws; the other rank waits for it and both exit 0."""
    out = tmp_path / "figs"
    p = run(
        eval_cmd("--checkpoint", str(trained_run), "--plots", str(out), "--plots-images", "8", launch=accelerate_cmd()),
        check=True,
    )
    assert p.stdout.count("wrote batch.png") == 1, p.stdout[-2000:]
    for name, size in EXPECTED_SIZE.items():
        assert_png_ok(out / name, size)


@pytest.mark.slow
def test_unwritable_plots_folder_is_one_line(tmp_path, trained_run):
    blocker = tmp_path / "figs"
    blocker.write_text("a file where the folder should be")
    p = run(eval_cmd("--checkpoint", str(trained_run), "--plots", str(blocker)))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot write the figures into") and "Traceback" not in p.stderr
    assert blocker.read_text() == "a file where the folder should be"


@pytest.mark.slow
def test_checkpoint_outside_its_run_folder_skips_curves(tmp_path, trained_run):
    lone = tmp_path / "lone.pt"
    shutil.copy(trained_run / "best.pt", lone)
    out = tmp_path / "figs"
    p = run(eval_cmd("--checkpoint", str(lone), "--plots", str(out), "--plots-images", "8"), check=True)
    assert "curves.png skipped" in p.stdout
    assert sorted(f.name for f in out.iterdir()) == sorted(set(FIGURES) - {"curves.png"})


# --------------------------------------------------------------------------- the figures' contents


def test_unnormalize_inverts_per_channel_normalize():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    back = unnormalize(normalize_batch(x, mean, std), mean, std)
    torch.testing.assert_close(back, x.float() / 255, atol=1e-6, rtol=0)
    # the tutorial's shortcut is only right for mean = std = 0.5; with these statistics it is far off
    assert (normalize_batch(x, mean, std) / 2 + 0.5 - x.float() / 255).abs().max() > 0.2


def test_text_colour_contrasts_with_the_pixel():
    assert text_colour((0, 0, 0)) == "white" and text_colour((1, 1, 1)) == "black"
    # WCAG contrast: white wins up to grey 117, black from 118 (see text_colour's docstring)
    assert text_colour((117 / 255,) * 3) == "white" and text_colour((118 / 255,) * 3) == "black"
    assert text_colour((0.0, 0.0, 0.6)) == "white"  # dark blue, as in the confusion matrix's full cells


def _panel_values(ax):
    """{(x, y): (text, colour)} of a panel's annotations."""
    return {tuple(round(v) for v in t.get_position()): (t.get_text(), t.get_color()) for t in ax.texts}


def test_channels_view_shows_the_known_pixel_values():
    y, x = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    img = torch.stack([(x * 8) % 256, (y * 8) % 256, (x * 3 + y * 5 + 17) % 256]).to(torch.uint8)
    img[0, 5, 7], img[2, 31, 0] = 255, 0  # two corner cases
    fig = channels_figure(img, "known")
    panels = [ax for ax in fig.axes if ax.texts]
    assert [ax.get_title() for ax in panels] == ["red channel", "green channel", "blue channel"]
    for k, ax in enumerate(panels):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), img[k].numpy())
        values = _panel_values(ax)
        assert len(values) == 32 * 32
        for yy in range(32):
            for xx in range(32):
                v = int(img[k, yy, xx])
                assert values[(xx, yy)] == (str(v), "black" if v >= 118 else "white"), (k, xx, yy)
    assert _panel_values(panels[0])[(7, 5)] == ("255", "black")
    assert _panel_values(panels[2])[(0, 31)] == ("0", "white")


def test_grey_image_gets_one_panel():
    img = torch.arange(28 * 28, dtype=torch.int64).remainder(256).to(torch.uint8).view(1, 28, 28)
    fig = channels_figure(img)
    panels = [ax for ax in fig.axes if ax.texts]
    assert [ax.get_title() for ax in panels] == ["grey channel"]
    assert _panel_values(panels[0])[(27, 27)][0] == str(int(img[0, 27, 27]))


def test_batch_figure_titles_and_unnormalised_pixels():
    imgs = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(16) % 10
    mean, std = (0.3, 0.5, 0.7), (0.2, 0.25, 0.3)
    fig = batch_figure(imgs, labels, CIFAR10_CLASSES, mean, std)
    assert len(fig.axes) == 16
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 8)
    assert [ax.get_title() for ax in fig.axes] == [CIFAR10_CLASSES[i % 10] for i in range(16)]
    shown = np.asarray(fig.axes[3].images[0].get_array())
    np.testing.assert_allclose(shown, imgs[3].permute(1, 2, 0).numpy() / 255, atol=1e-6)


def test_prediction_titles_are_green_when_right_and_red_when_wrong():
    imgs = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    labels, preds = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 5, 2, 9])
    fig = predictions_figure(imgs, labels, preds, CIFAR10_CLASSES, "test")
    titles = [(ax.get_title(), ax.title.get_color()) for ax in fig.axes]
    assert titles == [
        ("airplane (airplane)", "#1a7f37"),
        ("dog (automobile)", "#cf222e"),
        ("bird (bird)", "#1a7f37"),
        ("truck (cat)", "#cf222e"),
    ]
    assert "2/4 right" in fig.get_suptitle()


@pytest.mark.slow
def test_curves_mark_the_best_epoch(trained_run):
    rows = read_metrics(trained_run / "metrics.jsonl")
    best = torch.load(trained_run / "best.pt", weights_only=True)["epoch"]
    fig = curves_figure(rows, best)
    for ax in fig.axes:
        labels = {line.get_label(): line for line in ax.get_lines()}
        assert {"train", "validation", f"best epoch ({best})"} <= set(labels)
        assert list(labels[f"best epoch ({best})"].get_xdata()) == [best, best]
        assert list(labels["validation"].get_xdata()) == [r["epoch"] for r in rows]
    val_loss = [r["val_loss"] for r in rows]
    np.testing.assert_allclose(
        [s for s in fig.axes[0].get_lines() if s.get_label() == "validation"][0].get_ydata(), val_loss
    )


@pytest.mark.slow
def test_sparse_validation_is_drawn_where_it_was_measured(trained_run):
    """train.eval_every_epochs > 1 (tutorial_fast validates once, at the end): the validation points are
    drawn as large markers and the legend names their epochs, instead of one point that looks like a
    stray mark under the best-epoch star."""
    rows = read_metrics(trained_run / "metrics.jsonl")
    last = rows[-1]["epoch"]
    for r in rows[:-1]:  # as a run validating only at its last epoch writes them
        for k in ("val_loss", "val_accuracy", "val_samples", "best"):
            r.pop(k, None)
    fig = curves_figure(rows, last)
    for ax in fig.axes:
        [val] = [line for line in ax.get_lines() if line.get_label().startswith("validation")]
        assert val.get_label() == f"validation (epoch {last})"
        assert list(val.get_xdata()) == [last] and val.get_markersize() >= 8
        assert f"validation (epoch {last})" in [t.get_text() for t in ax.get_legend().get_texts()]
