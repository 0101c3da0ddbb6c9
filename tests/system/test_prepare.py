"""Jobs sharing a data folder (issue 16): several real processes, started together on a fresh folder,
prepare each dataset kind once (one builds, the others wait and read the same files), and a job
SIGKILLed halfway leaves nothing a later job takes for finished data.

    OMP_NUM_THREADS=1 python -m pytest tests/system/test_prepare.py
"""

import hashlib
import json
import multiprocessing as mp
import os
import signal
import tarfile
import time
from pathlib import Path

import pytest
from helpers import require
from imagetree import write_tar, write_tree

DEBIAN = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
KINDS = ["imagefolder", "tar", "synthetic", "fashion_mnist", "cifar10"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10_archive(folder: Path) -> dict:
    """cifar-10-python.tar.gz in CIFAR-10's exact layout (cifar-10-batches-py/ with the python batches),
    small and written by the toolkit, and the md5 sums a torchvision CIFAR10 subclass needs to use it."""
    from cifar_dist.data.synthetic import write_synthetic_cifar10

    batches = write_synthetic_cifar10(folder / "scratch", 60, 20)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name in names:
            tf.add(batches / name, arcname=f"cifar-10-batches-py/{name}")
    return {"archive": str(archive), "tgz": _md5(archive), **{n: _md5(batches / n) for n in names}}


def local_cifar10(md5: dict):
    """torchvision's CIFAR10, all its code, with this archive's md5 sums and a URL that cannot answer:
    download_url finds the archive in root/ with the right md5 and never touches the network."""
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        url = "http://127.0.0.1:9/cifar-10-python.tar.gz"
        tgz_md5 = md5["tgz"]
        train_list = [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)]  # noqa: RUF012
        test_list = [["test_batch", md5["test_batch"]]]  # noqa: RUF012
        meta = {"filename": "batches.meta", "key": "label_names", "md5": md5["batches.meta"]}  # noqa: RUF012

    return LocalCIFAR10


def prepare(kind: str, root: str, extra: dict) -> tuple[Path, str]:
    """Prepare `kind` under `root` as a job would -> (the prepared folder, a digest of what was read)."""
    import numpy as np

    from cifar_dist import data
    from cifar_dist.config import resolve

    root = Path(root)
    if kind in ("imagefolder", "tar"):
        from cifar_dist.data.imagefolder import load_imagefolder

        source = root / ("src.tar.xz" if kind == "tar" else "src")
        cfg = resolve(
            "tutorial", None, ["--data.name=imagefolder", f"--data.root={source}", f"--data.cache_dir={root / 'cache'}"]
        )
        arrays = load_imagefolder(cfg)
        [folder] = [p for p in (root / "cache" / "imagefolder").iterdir() if not p.name.startswith(".")]
        return folder, hashlib.md5(b"".join(np.ascontiguousarray(a.numpy()).tobytes() for a in arrays[:4])).hexdigest()
    if kind == "synthetic":
        from cifar_dist.data.synthetic import write_synthetic_cifar10

        folder = write_synthetic_cifar10(root, 3000, 500)
    elif kind == "fashion_mnist":
        data._prepare_fashion_mnist(root)
        folder = root / "FashionMNIST" / "raw"
    else:
        cls = local_cifar10(extra)
        data._prepare_cifar(cls, root, True, "CIFAR-10")
        folder = root / "cifar-10-batches-py"
        cls(str(root), train=True, download=False)  # torchvision's md5 check of every file passes
    return folder, hashlib.md5(b"".join(_md5(p).encode() for p in sorted(folder.iterdir()))).hexdigest()


def _job(kind: str, root: str, extra: dict, barrier, out: str) -> None:
    barrier.wait()  # every job reaches the preparation at the same moment
    folder, digest = prepare(kind, root, extra)
    marker = folder / ".complete"
    Path(out).write_text(json.dumps({"digest": digest, "marker": [marker.stat().st_ino, marker.stat().st_mtime_ns]}))


def fresh_source(kind: str, root: Path) -> dict:
    """What the kind prepares from, in a fresh folder (nothing prepared yet)."""
    if kind in ("imagefolder", "tar"):
        src = write_tree(root / "src", n_train=150, n_test=30, size=16)
        if kind == "tar":
            write_tar(src, root / "src.tar.xz")
            import shutil

            shutil.rmtree(src)
    if kind == "fashion_mnist":
        require(DEBIAN.exists(), "dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    return write_cifar10_archive(root) if kind == "cifar10" else {}


def leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob(".*.tmp-*")]


@pytest.mark.slow  # starts several preparing processes at once (tens of seconds under load)
@pytest.mark.parametrize("kind", KINDS)
def test_jobs_started_together_prepare_once_and_read_the_same_files(tmp_path, kind):
    extra = fresh_source(kind, tmp_path)
    ctx = mp.get_context("spawn")
    n = 3
    barrier = ctx.Barrier(n)
    outs = [tmp_path / f"job{i}.json" for i in range(n)]
    procs = [ctx.Process(target=_job, args=(kind, str(tmp_path), extra, barrier, str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0] * n
    results = [json.loads(o.read_text()) for o in outs]
    assert len({r["digest"] for r in results}) == 1  # every job read the same data
    assert len({tuple(r["marker"]) for r in results}) == 1  # one folder, written once: the same marker file
    assert leftovers(tmp_path) == []


def _build_and_wait(kind: str, root: str, extra: dict) -> None:
    prepare(kind, root, extra)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["imagefolder", "synthetic"])
def test_a_job_killed_halfway_leaves_nothing_taken_for_finished_data(tmp_path, kind):
    """SIGKILL a job while its temporary folder exists (mid-build): no finished folder appears, the
    lock dies with the job, and the next job removes the leftovers, builds and reads the data."""
    extra = fresh_source(kind, tmp_path)
    if kind == "imagefolder":  # enough files that decoding takes a while
        write_tree(tmp_path / "src", n_train=1500, n_test=30, size=16, seed=1)
    ctx = mp.get_context("spawn")
    job = ctx.Process(target=_build_and_wait, args=(kind, str(tmp_path), extra))
    job.start()
    deadline = time.monotonic() + 120
    while not leftovers(tmp_path) and job.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert leftovers(tmp_path), "the job finished before it could be killed mid-build"
    os.kill(job.pid, signal.SIGKILL)
    job.join()
    assert job.exitcode == -signal.SIGKILL
    assert not list(tmp_path.rglob(".complete"))  # nothing claims to be finished
    folder, _ = prepare(kind, str(tmp_path), extra)  # a later job: rebuilds and succeeds
    assert (folder / ".complete").is_file() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_a_folder_without_its_marker_is_rebuilt_and_a_waiting_job_waits(tmp_path):
    """A target without .complete (a copy cut short, a crash of older code) is rebuilt; while another
    job holds the lock, a job waits for it instead of building alongside."""
    from filelock import FileLock

    from cifar_dist.data.prepare import build_once

    target = tmp_path / "t"
    target.mkdir()
    (target / "half").write_text("half-written")
    assert build_once(target, lambda tmp: (tmp / "whole").write_text("whole"), "t", "fix") == target
    assert sorted(p.name for p in target.iterdir()) == [".complete", "whole"]
    ctx = mp.get_context("spawn")
    root = tmp_path / "u_root"
    root.mkdir()
    job = ctx.Process(target=_build_and_wait, args=("synthetic", str(root), {}))
    with FileLock(root / ".cifar-10-batches-py.lock"):  # the lock build_once takes for the synthetic folder
        job.start()
        time.sleep(3)
        assert job.is_alive() and not (root / "cifar-10-batches-py").exists()
    job.join(120)
    assert job.exitcode == 0 and (root / "cifar-10-batches-py" / ".complete").is_file()
