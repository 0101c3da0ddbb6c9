"""Evaluate a trained checkpoint on a whole split; the checkpoint carries its config, so nothing
else is needed.

    python evaluate.py --checkpoint runs/<run>/ --json out.json
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml evaluate.py --checkpoint runs/<run>/ --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..artifacts.export import build_model_from_checkpoint, load_checkpoint
from ..errors import UserError
from ..files import atomic_write_bytes

EVAL_SECTIONS = ("data", "eval", "train")  # the config sections evaluate.py's --section.key=value may set


def main(argv: list[str]) -> None:
    from ..config.keys import reject_unknown_options

    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    reject_unknown_options(parser, rest)
    ckpt = load_checkpoint(args.checkpoint)
    cfg = _config(ckpt, args, rest)
    model = build_model_from_checkpoint(ckpt, source=args.checkpoint, trust_code=args.trust_code)
    if args.images:
        _predict_images(model, ckpt, cfg, args)
    else:
        _evaluate_split(model, ckpt, cfg, args)


def _parser() -> argparse.ArgumentParser:
    from ..config.schema import config_help

    p = argparse.ArgumentParser(
        prog="cifar-eval",
        allow_abbrev=False,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawTextHelpFormatter,
        epilog=f"config keys that apply here (defaults: the checkpoint's own config):\n{config_help(EVAL_SECTIONS)}",
    )
    p.add_argument("--checkpoint", required=True, help="a run folder, its best.pt, or its exported model/ folder")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="allow importing the model's own package.module:factory (a model trained from your own code)",
    )
    p.add_argument("--json", default=None, help="write loss, accuracy, per-class counts and the confusion matrix here")
    p.add_argument("--batch-size", type=int, default=None, help="short for --eval.per_device_batch_size")
    p.add_argument("--plots", default=None, help="write the figures (PNG) into this folder")
    p.add_argument(
        "--plots-images",
        type=int,
        default=16,
        help="images in batch.png and predictions.png (two rows; default 16, a 2x8 grid)",
    )
    p.add_argument("--images", nargs="+", default=None, help="predict these image files or folders instead")
    return p


def _config(ckpt: dict, args, rest: list[str]):
    """The checkpoint's config with this command's --data/--eval/--train overrides, validated."""
    from ..config.rules import validate
    from ..config.schema import apply_overrides, from_dict

    cfg = from_dict(ckpt["config"])
    apply_overrides(cfg, rest, sections=EVAL_SECTIONS, who="evaluate.py")
    cfg.train.compile = False
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
        cfg.eval.per_device_batch_size = args.batch_size
    return validate(cfg)


def _predict_images(model, ckpt: dict, cfg, args) -> None:
    from ..distributed.accelerator import env_world_size
    from ..evaluate.predict import predict_files

    if args.plots:
        raise UserError("--images predicts files and --plots draws a split's figures; run them as two commands")
    if env_world_size() > 1:
        raise UserError("--images runs in one process; use 'python evaluate.py --images ...' without accelerate launch")
    predict_files(model, ckpt, args.images, args.json, tta=cfg.eval.tta, tta_translate=cfg.eval.tta_translate)


def _evaluate_split(model, ckpt: dict, cfg, args) -> None:
    """Collective: evaluate a whole split, print the report, write --json and --plots."""
    from ..config.rules import config_warnings
    from ..data.datasets import load_data
    from ..distributed.accelerator import build_accelerator
    from ..distributed.collectives import raise_if_any
    from ..evaluate.evaluation import EvalSettings, evaluate_split, print_report

    accelerator = build_accelerator(cfg)
    for line in config_warnings(cfg):
        accelerator.print(line, file=sys.stderr)
    data = load_data(cfg, accelerator)
    m = ckpt["model"]
    if (data.num_classes, data.in_channels, data.image_size) != (m["num_classes"], m["in_channels"], m["image_size"]):
        raise UserError(
            f"{args.checkpoint} has {m['num_classes']} classes / {m['in_channels']} channels / "
            f"{m['image_size']} pixels but {cfg.data.name} has {data.num_classes} / {data.in_channels} / "
            f"{data.image_size}"
        )
    if args.split == "val" and not len(data.val_labels):
        raise UserError(
            f"{args.checkpoint} was trained on every training image (data.val_fraction=0), so there is "
            f"no validation split to evaluate; use --split test"
        )
    if cfg.train.channels_last:  # the same memory format as in training, so the same arithmetic
        import torch

        model = model.to(memory_format=torch.channels_last)
    model = accelerator.prepare(model)
    result = evaluate_split(model, data, args.split, accelerator, EvalSettings.from_config(cfg))
    print_report(result, args.split, accelerator)
    error = None
    if args.json and accelerator.is_main_process:
        out = {"split": args.split, **result.to_json()}
        try:
            atomic_write_bytes(Path(args.json), (json.dumps(out, indent=2) + "\n").encode())
        except OSError as e:
            error = f"cannot write {args.json} ({e.strerror}); choose a writable path for --json"
    raise_if_any(accelerator, error)  # every rank stops together, none waits for a rank that gave up
    if args.plots:
        from ..evaluate.plots import write_all

        write_all(
            Path(args.plots),
            data,
            result,
            args.split,
            ckpt,
            Path(args.checkpoint),
            accelerator,
            n_images=args.plots_images,
        )
    accelerator.wait_for_everyone()
