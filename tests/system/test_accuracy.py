"""Real images (issue 8): a short tutorial_fast run on Fashion-MNIST (Debian's dataset-fashion-mnist)
through benchmarks/accuracy.py must land well above chance on the real test split.

    OMP_NUM_THREADS=1 python -m pytest tests/system/test_accuracy.py
"""

import json
import sys
from pathlib import Path

import pytest
from helpers import REPO, LineReader, read_metrics, require, run

DEBIAN = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.slow
@pytest.mark.system
def test_short_fashion_mnist_run_is_far_above_chance(tmp_path):
    require(DEBIAN.exists(), "dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "acc.json"
    # 100 steps of batch 128 = 12,800 of the 48,000 training images (no warm-up: the run is cut short
    # long before the epoch the warm-up spans), then the full 10,000-image test split
    p = run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "accuracy.py"),
            "--preset",
            "tutorial_fast",
            "--data.name",
            "fashion_mnist",
            f"--data.root={tmp_path / 'data'}",
            "--train.epochs=1",
            "--train.max_steps=100",
            "--optim.warmup_epochs=0",
            "--quiet",
            "--json",
            str(out),
        ],
        timeout=400,
        check=True,
    )
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("test_accuracy=") and " train_seconds=" in last and " pflops=" in last
    result = json.loads(out.read_text())
    assert result["data"] == "fashion_mnist" and result["model"] == "tutorial_cnn"
    assert sum(c["total"] for c in result["per_class"].values()) == 10_000
    assert result["test_accuracy"] > 0.6, result["test_accuracy"]  # chance is 0.1
    assert float(last.split()[0].split("=")[1]) == pytest.approx(result["test_accuracy"], abs=1e-4)


def test_reference_batch_size_scales_lr_and_keeps_decay_per_epoch():
    """optim.reference_batch_size: lr (and with it PyTorch's per-step decay lr·wd) grows with the
    global batch, so the decay per epoch, steps × lr × wd, does not change."""
    from cifar_dist.config import resolve
    from cifar_dist.optim.schedules import scaled_lr

    cfg = resolve("fast", None, ["--optim.reference_batch_size=256", "--train.per_device_batch_size=256"])
    assert scaled_lr(cfg, 256) == pytest.approx(cfg.optim.lr)
    assert scaled_lr(cfg, 4 * 256) == pytest.approx(4 * cfg.optim.lr)
    n = 256 * 4 * 47  # divisible by every global batch here, so steps per epoch are exact
    decay_per_epoch = [(n // (256 * w)) * scaled_lr(cfg, 256 * w) * cfg.optim.weight_decay for w in (1, 2, 4)]
    assert decay_per_epoch == pytest.approx([decay_per_epoch[0]] * 3, rel=1e-12)
    cfg.optim.reference_batch_size = 0  # off: lr as given, whatever the batch
    assert scaled_lr(cfg, 4 * 256) == cfg.optim.lr
    from cifar_dist.errors import UserError

    with pytest.raises(UserError, match="optim.reference_batch_size"):
        resolve("fast", None, ["--optim.reference_batch_size=-1"])
    with pytest.raises(UserError, match="data.crop_pad"):
        resolve("fast", None, ["--data.crop_pad=9"])


@pytest.mark.slow
def test_reference_batch_size_reaches_the_optimizer(tmp_path):
    """The trainer trains with the scaled lr: a 1-process run at batch 64 with lr 0.02 given for
    batch 32 logs the peak lr 0.04."""
    from helpers import SMALL, train_cmd

    run_dir = tmp_path / "run"
    run(
        train_cmd(
            "--preset=tutorial_fast",
            *SMALL,
            f"--data.root={tmp_path / 'data'}",
            "--train.epochs=1",
            "--train.per_device_batch_size=64",
            "--optim.lr=0.02",
            "--optim.reference_batch_size=32",
            "--optim.schedule=constant",
            f"--run.dir={run_dir}",
            "--tracking.backend=none",
        ),
        check=True,
    )
    row = read_metrics(run_dir / "metrics.jsonl")[0]
    assert row["lr"] == pytest.approx(0.04)


def test_crop_pad_zero_is_flip_only(tmp_path):
    """data.crop_pad=0: every training image is the stored image or its mirror, never shifted."""
    from accelerate import Accelerator
    from helpers import SMALL

    from cifar_dist.config import resolve
    from cifar_dist.data import load_data, normalize_batch
    from cifar_dist.train.tensor_loader import TensorTrainLoader, rank_batches

    cfg = resolve(
        "tutorial_fast",
        None,
        [
            *SMALL,
            f"--data.root={tmp_path}",
            "--data.crop_pad=0",
            "--train.per_device_batch_size=100",
            "--train.channels_last=false",
        ],
    )
    accelerator = Accelerator(cpu=True)
    data = load_data(cfg, accelerator)
    loader = TensorTrainLoader(cfg, data, accelerator)
    x, _ = next(loader.iterate())
    src = data.train_images[rank_batches(400, 100, 1, 0, cfg.seed, 0)[0]]
    plain, mirror = normalize_batch(src, data.mean, data.std), normalize_batch(src.flip(3), data.mean, data.std)
    same = (x == plain).flatten(1).all(1)
    flipped = (x == mirror).flatten(1).all(1)
    assert bool((same | flipped).all()) and int(flipped.sum()) > 0 and int((flipped & ~same).sum()) > 10


@pytest.mark.slow
def test_several_seeds_give_mean_spread_and_medians(tmp_path):
    """--seeds runs one training per seed; the JSON holds every run and the summary statistics, and
    the last line the medians (what the README table quotes)."""
    import statistics

    from helpers import SMALL

    out = tmp_path / "seeds.json"
    p = run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "accuracy.py"),
            "--preset",
            "tutorial_fast",
            *SMALL,
            f"--data.root={tmp_path / 'data'}",
            "--train.epochs=1",
            "--seeds",
            "0",
            "1",
            "2",
            "--quiet",
            "--json",
            str(out),
        ],
        timeout=300,
        check=True,
    )
    summary = json.loads(out.read_text())
    acc = [r["test_accuracy"] for r in summary["runs"]]
    assert [r["seed"] for r in summary["runs"]] == [0, 1, 2]
    assert summary["test_accuracy_mean"] == pytest.approx(statistics.mean(acc))
    assert summary["test_accuracy_std"] == pytest.approx(statistics.stdev(acc))
    assert p.stdout.strip().splitlines()[-1] == (
        f"test_accuracy={statistics.median(acc):.4f} train_seconds={summary['train_seconds_median']:.1f} "
        f"pflops={statistics.median(r['train_pflops'] for r in summary['runs']):.4g}"
    )
    # 400 training images at batch 128: 3 steps, 384 images, at the tutorial layers' 19,027,248 FLOPs each
    assert all(r["train_pflops"] == pytest.approx(19_027_248 * 384 / 1e15) for r in summary["runs"])


def _prepare(root: str, barrier) -> None:
    from cifar_dist.data import _prepare_fashion_mnist

    barrier.wait()  # all start decompressing at once
    _prepare_fashion_mnist(Path(root))


def test_independent_runs_can_prepare_one_fashion_mnist_root_at_once(tmp_path):
    """Two jobs sharing data.root both decompress Debian's files on first use (main_process_first only
    orders the ranks inside one job). With one shared temporary name the first rename moved the file
    away under the others, which died with FileNotFoundError."""
    import gzip
    import multiprocessing as mp

    require(DEBIAN.exists(), "dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_prepare, args=(str(tmp_path), barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    from cifar_dist.data import FASHION_FILES

    raw = tmp_path / "FashionMNIST" / "raw"
    for f in FASHION_FILES:
        assert (raw / f).read_bytes() == gzip.decompress((DEBIAN.parent / f"{f}.gz").read_bytes())
    # no temporary file left behind; the marker prepare.build_once writes last
    assert sorted(p.name for p in raw.iterdir()) == sorted([*FASHION_FILES, ".complete"])


@pytest.mark.slow
def test_a_stopped_run_ends_in_one_line_and_leaves_no_temporary_folder(tmp_path, data_root):
    """SIGUSR1 (a scheduler's warning) stops the training run inside accuracy.py: there is no test result
    to print, so it exits non-zero with one line saying so, and its temporary run folder is removed.
    Before, it died in a KeyError traceback and left the folder (and the saved state) in /tmp."""
    import signal
    import subprocess

    from helpers import SMALL, base_env

    temp = tmp_path / "tmp"
    temp.mkdir()
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "accuracy.py"),
        "--preset=tutorial_fast",
        *SMALL,
        f"--data.root={data_root}",
        "--train.epochs=200",
        "--train.log_every_steps=1",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=base_env(TMPDIR=str(temp), PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        errors = LineReader(proc, proc.stderr)
        LineReader(proc).wait_for(lambda line: line.startswith("step "), timeout=300)  # training has started
        proc.send_signal(signal.SIGUSR1)
        proc.wait(timeout=300)
        err = errors.text(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "Traceback" not in err, err[-3000:]
    assert "the run stopped at step" in err.strip().splitlines()[-1] and "run it again" in err
    assert not list(temp.glob("accuracy-*")), "the temporary run folder was left behind"
