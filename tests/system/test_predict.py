"""evaluate.py --images: real PNG/JPEG files of other sizes, read with PIL, predicted by a trained
checkpoint; a non-image gets its own one-line error while the rest are still predicted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import eval_cmd, run
from PIL import Image

from cifar_dist.data import normalize_batch
from cifar_dist.errors import UserError
from cifar_dist.evaluate.predict import load_image, predict_files
from cifar_dist.export import build_model_from_checkpoint, load_checkpoint
from cifar_dist.models import build_model

# name, (width, height), PIL mode: none of them 32×32 RGB
FILES = [
    ("a_wide.png", (70, 50), "RGB"),
    ("b_tall.jpg", (40, 100), "RGB"),
    ("c_grey.png", (20, 20), "L"),
    ("d_alpha.png", (64, 64), "RGBA"),
    ("e_big.jpeg", (300, 200), "RGB"),
    ("f_palette.png", (33, 17), "P"),
]


def write_images(folder, rng):
    folder.mkdir()
    for name, (w, h), mode in FILES:
        channels = {"RGB": 3, "RGBA": 4}.get(mode)
        shape = (h, w, channels) if channels else (h, w)
        im = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode="L" if mode == "P" else None)
        (im.convert("P") if mode == "P" else im).save(folder / name)
    (folder / "README.txt").write_text("not an image, and not picked up from a folder")
    return folder


@pytest.mark.slow
def test_folder_of_png_and_jpeg_gives_one_row_per_image_in_order(tmp_path, trained_run):
    folder = write_images(tmp_path / "imgs", np.random.default_rng(0))
    out = tmp_path / "pred.json"
    p = run(eval_cmd("--checkpoint", str(trained_run), "--images", str(folder), "--json", str(out)), check=True)
    doc = json.loads(out.read_text())
    classes = load_checkpoint(trained_run)["classes"]
    assert [r["file"] for r in doc["predictions"]] == [str(folder / name) for name, _, _ in FILES]
    assert doc["failed"] == []
    for r in doc["predictions"]:
        assert r["class"] in classes and 0 < r["confidence"] <= 1
        confs = [t["confidence"] for t in r["top3"]]
        assert len(r["top3"]) == 3 and confs == sorted(confs, reverse=True) and sum(confs) <= 1 + 1e-6
        assert r["top3"][0] == {"class": r["class"], "confidence": r["confidence"]}
    for name, _, _ in FILES:  # the rich table names every file
        assert name in p.stdout


@pytest.mark.slow
@pytest.mark.parametrize("tta", [False, True], ids=["plain", "flip_tta"])
def test_lossless_32px_files_predict_exactly_like_the_evaluation_path(tmp_path, trained_run, tta):
    """CIFAR test images saved as PNG and predicted by `evaluate.py --images` must get the very
    confidences evaluate() gives the same images: same channel order, no resize artefacts, the
    checkpoint's own mean/std, and with eval.tta the same mirror-image averaging."""
    from cifar_dist.config import from_dict
    from cifar_dist.data import load_data
    from cifar_dist.distributed import build_accelerator
    from cifar_dist.evaluate.evaluation import EvalSettings, evaluate

    ckpt = load_checkpoint(trained_run)
    cfg = from_dict(ckpt["config"])
    accelerator = build_accelerator(cfg)
    data = load_data(cfg, accelerator)
    folder = tmp_path / "test_images"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(data.test_images[i].permute(1, 2, 0).numpy()).save(folder / f"{i:02d}.png")
    out = tmp_path / "pred.json"
    run(
        eval_cmd(
            "--checkpoint",
            str(trained_run),
            "--images",
            str(folder),
            f"--eval.tta={str(tta).lower()}",
            "--json",
            str(out),
        ),
        check=True,
    )
    doc = json.loads(out.read_text())
    model = build_model_from_checkpoint(ckpt, trained_run)
    result = evaluate(model, data.test_images[:6], data.test_labels[:6], data, accelerator, EvalSettings(tta=tta))
    assert doc["tta"] is tta
    assert [r["class"] for r in doc["predictions"]] == [ckpt["classes"][i] for i in result.predictions.tolist()]
    assert [r["confidence"] for r in doc["predictions"]] == result.confidences.tolist()
    # The flips matter: without them the same model gives other confidences.
    with torch.no_grad():
        plain = torch.softmax(model(normalize_batch(data.test_images[:6], data.mean, data.std)), dim=1).max(dim=1)
    assert torch.equal(plain.values, result.confidences) is not tta


@pytest.mark.slow
def test_non_image_gets_one_line_and_the_others_are_still_predicted(tmp_path, trained_run):
    folder = write_images(tmp_path / "imgs", np.random.default_rng(1))
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((folder / "b_tall.jpg").read_bytes()[:200])  # a JPEG cut off mid-header
    out = tmp_path / "pred.json"
    p = run(
        eval_cmd(
            "--checkpoint",
            str(trained_run),
            "--images",
            str(notes),
            str(folder),
            str(broken),
            str(tmp_path / "missing.png"),
            "--json",
            str(out),
        )
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    err = p.stderr.strip().splitlines()
    assert f"error: {notes}: not an image PIL can read" in err
    assert any(line.startswith(f"error: {broken}: ") for line in err)
    assert f"error: {tmp_path / 'missing.png'}: no such file" in err
    assert err[-1].startswith("error: 3 of 9 files could not be predicted")
    doc = json.loads(out.read_text())
    assert [r["file"] for r in doc["predictions"]] == [str(folder / name) for name, _, _ in FILES]
    assert [f["file"] for f in doc["failed"]] == [str(notes), str(broken), str(tmp_path / "missing.png")]


def test_images_are_converted_to_the_models_channels_and_size(tmp_path):
    rgb = tmp_path / "rgb.jpg"
    Image.fromarray(np.full((50, 90, 3), (200, 40, 10), dtype=np.uint8)).save(rgb, quality=95)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((64, 48), 77, dtype=np.uint8)).save(grey)
    x = load_image(rgb, 3, 32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    assert abs(int(x[0].float().mean()) - 200) <= 3 and abs(int(x[2].float().mean()) - 10) <= 3  # R stays R
    assert load_image(rgb, 1, 28).shape == (1, 28, 28)
    g = load_image(grey, 3, 32)
    assert g.shape == (3, 32, 32) and (g == 77).all()  # grey replicated into R, G, B


def test_grey_model_predicts_colour_files(tmp_path):
    """A Fashion-MNIST-shaped checkpoint (1×28×28, its own normalisation): colour files of other
    sizes are converted to grey and predicted."""
    torch.manual_seed(0)
    classes = [f"c{i}" for i in range(10)]
    model = build_model("tutorial_cnn", 1, 28, 10).eval()
    ckpt = {
        "model": {"name": "tutorial_cnn", "in_channels": 1, "image_size": 28, "num_classes": 10},
        "classes": classes,
        "normalize": {"mean": [0.286], "std": [0.353]},
    }
    folder = write_images(tmp_path / "imgs", np.random.default_rng(2))
    out = tmp_path / "p.json"
    doc = predict_files(model, ckpt, [str(folder)], str(out))
    assert len(doc["predictions"]) == len(FILES) and json.loads(out.read_text()) == doc
    assert doc["input"] == {"channels": 1, "size": 28}


@pytest.mark.slow
def test_folder_without_images_is_a_user_error(tmp_path, trained_run):
    (tmp_path / "empty").mkdir()
    ckpt = load_checkpoint(trained_run)
    with pytest.raises(UserError, match="no image files"):
        predict_files(build_model_from_checkpoint(ckpt, trained_run), ckpt, [str(tmp_path / "empty")])


@pytest.mark.slow
def test_a_single_bad_file_is_exactly_one_error(tmp_path, trained_run, capsys):
    bad = tmp_path / "cat.png"
    bad.write_text("not a png")
    ckpt = load_checkpoint(trained_run)
    with pytest.raises(UserError, match=r"cat\.png: not an image PIL can read$"):
        predict_files(build_model_from_checkpoint(ckpt, trained_run), ckpt, [str(bad)])
    assert capsys.readouterr().err == ""  # the UserError is the one line; no per-file line before it
