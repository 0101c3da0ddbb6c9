"""Predict the class of real image files with a trained checkpoint.

    python evaluate.py --checkpoint runs/<run>/ --images cat.jpg photos/ --json predictions.json

Files are read with PIL, as torchvision's ImageFolder reads them (PNG, JPEG, GIF, BMP, TIFF, WebP;
torchvision's own `decode_image` is deprecated since 0.29 and reads fewer formats), converted to the
model's channels (RGB, or grey for Fashion-MNIST), resized so the shorter side matches the model's
input and centre-cropped to a square, then normalised with the checkpoint's own mean and std.
With eval.tta (the checkpoint's config, or --eval.tta=true|false) each image's logits are averaged
with its mirror image's, and with eval.tta_translate=N also with copies shifted N pixels up-left and
down-right and their mirrors (6 views), exactly as evaluation does (evaluation.logits_of), so a file
predicts what evaluate.py reports for the same image.
A folder contributes its image files (by extension, sorted by name). A file that cannot be read
gets a one-line error naming it; the others are still predicted, and the command ends with exit
code 2 if any failed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import UserError, first_line, print_error
from ..files import atomic_write_bytes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def expand(paths: list[str]) -> list[Path]:
    """Files as given, in order; a folder becomes its image files sorted by name (not recursive,
    hidden files skipped). A missing path stays in the list and fails later with its own error."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(
                sorted(
                    f
                    for f in p.iterdir()
                    if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
                )
            )
        else:
            out.append(p)
    return out


def load_image(path: Path, in_channels: int, size: int) -> torch.Tensor:
    """-> uint8 (C, size, size). Raises ValueError with a short reason for anything unreadable."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF

    if not path.exists():
        raise ValueError("no such file")
    if path.is_dir():
        raise ValueError("is a folder with no image files")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if in_channels == 1 else "RGB")  # drops alpha, expands grey/palette
    except UnidentifiedImageError:
        raise ValueError("not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # truncated, corrupt, absurdly large
        raise ValueError(f"unreadable image ({first_line(e, 80)})") from None
    x = TF.pil_to_tensor(im)
    # Shorter side to `size`, then the central square: keeps the aspect ratio, loses the edges of
    # long images (a 64×32 photo keeps its middle 32×32 after halving).
    x = TF.resize(x, [size], antialias=True)
    return TF.center_crop(x, [size, size])


@torch.no_grad()
def predict_tensor(
    model, images_u8: torch.Tensor, mean, std, batch_size: int = 256, tta: bool = False, tta_translate: int = 0
) -> torch.Tensor:
    """uint8 NCHW -> softmax probabilities (N, classes), in batches, on the model's device."""
    from ..data.datasets import normalize_batch
    from .evaluation import logits_of

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs = []
    for i in range(0, len(images_u8), batch_size):
        x = normalize_batch(images_u8[i : i + batch_size].to(device), mean, std)
        probs.append(torch.softmax(logits_of(model, x, tta, tta_translate).float(), dim=1).cpu())
    model.train(was_training)
    return torch.cat(probs) if probs else torch.zeros(0, 0)


def _top3_rows(files: list, probs: torch.Tensor, classes: list[str]) -> list[dict]:
    """One JSON row per file: its class, confidence and top-3 classes."""
    top_p, top_i = probs.topk(min(3, probs.shape[1]), dim=1)
    return [
        {
            "file": str(f),
            "class": classes[ix[0]],
            "confidence": ps[0],
            "top3": [{"class": classes[i], "confidence": p} for i, p in zip(ix, ps)],
        }
        for f, ps, ix in zip(files, top_p.tolist(), top_i.tolist())
    ]


def predict_files(
    model,
    ckpt: dict,
    paths: list[str],
    json_path: str | None = None,
    console=None,
    tta: bool = False,
    tta_translate: int = 0,
) -> dict:
    """Predict every image, print a table, write JSON; raise UserError at the end if any file failed
    (after the others were predicted and written). Returns the JSON document."""
    from rich.console import Console

    m, classes = ckpt["model"], ckpt["classes"]
    mean, std = ckpt["normalize"]["mean"], ckpt["normalize"]["std"]
    files = expand(paths)
    if not files:
        raise UserError(f"no image files in {', '.join(paths)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    ok_files, tensors, failed = [], [], []
    for f in files:
        try:
            tensors.append(load_image(f, m["in_channels"], m["image_size"]))
            ok_files.append(f)
        except ValueError as e:
            failed.append({"file": str(f), "error": str(e)})
            if len(files) > 1:  # one file: its line is the final error below (one line in all)
                print_error(f"{f}: {e}")
    rows = []
    if tensors:
        probs = predict_tensor(model, torch.stack(tensors), mean, std, tta=tta, tta_translate=tta_translate)
        rows = _top3_rows(ok_files, probs, classes)
    doc = {
        "checkpoint_classes": classes,
        "input": {"channels": m["in_channels"], "size": m["image_size"]},
        "tta": tta,
        "tta_translate": tta_translate if tta else 0,
        "predictions": rows,
        "failed": failed,
    }

    (console or Console()).print(_table(rows, files, m, tta, tta_translate))

    if json_path:
        try:
            atomic_write_bytes(Path(json_path), (json.dumps(doc, indent=2) + "\n").encode())
        except OSError as e:
            raise UserError(f"cannot write {json_path} ({e.strerror}); choose a writable path for --json") from None
    if failed and len(files) == 1:
        raise UserError(f"{failed[0]['file']}: {failed[0]['error']}")
    if failed:
        names = ", ".join(x["file"] for x in failed[:3]) + (" ..." if len(failed) > 3 else "")
        raise UserError(
            f"{len(failed)} of {len(files)} files could not be predicted ({names}); the other {len(rows)} were"
        )
    return doc


def views_label(tta: bool, tta_translate: int) -> str:
    """What the logits are averaged over (evaluation.logits_of), for the table's title."""
    if not tta:
        return ""
    if not tta_translate:
        return "; test-time views: the image and its mirror"
    return f"; test-time views: the image, shifted ±{tta_translate} px, each with its mirror (6)"


def _table(rows: list[dict], files: list[Path], m: dict, tta: bool, tta_translate: int = 0):
    """The predictions as a rich table: file, class, confidence, top-3."""
    from rich.table import Table

    # Names relative to the files' common folder, said once in the title: long absolute paths would
    # otherwise be folded over several lines in an 80-column terminal.
    common = os.path.commonpath([str(f.parent.absolute()) for f in files])
    table = Table(
        title=f"{len(rows)} image{'s' if len(rows) != 1 else ''} in {common} "
        f"({m['in_channels']}×{m['image_size']}×{m['image_size']} input{views_label(tta, tta_translate)})"
    )
    table.add_column("file", overflow="fold")
    table.add_column("class")
    table.add_column("confidence", justify="right")
    table.add_column("top-3")
    for r in rows:
        table.add_row(
            os.path.relpath(Path(r["file"]).absolute(), common),
            r["class"],
            f"{100 * r['confidence']:.1f}%",
            ", ".join(f"{t['class']} {100 * t['confidence']:.1f}%" for t in r["top3"]),
        )
    return table
