"""What every benchmark shares: a preset run through cifar-dist's own `train(cfg)` in this process, and
the PyTorch tutorial's training loop, the one baseline they compare with.

    from harness import run_preset, TutorialLoop   # a script in benchmarks/ has this folder on sys.path
    result = run_preset("tutorial_fast", ["--data.name=synthetic", "--train.epochs=2"], quiet=True)
    result.summary["accuracy"], result.rows[-1]["images_per_sec"], result.seconds

A run goes into a temporary run folder (removed afterwards, whatever happened: no saved state is left
behind) unless `run_dir` keeps it, with in-epoch progress and tracking off. The package must be
installed (`pip install -e .`); the scripts run as `python benchmarks/NAME.py`.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cifar_dist.artifacts.metrics import read_metrics
from cifar_dist.artifacts.run_dir import RunDir
from cifar_dist.config import Config, resolve
from cifar_dist.models import TutorialCNN

# What a benchmark run leaves off: the progress bar (it would be timed too) and any tracker.
QUIET_RUN = ["--run.progress=false", "--tracking.backend=none"]


@dataclass
class Result:
    cfg: Config
    summary: dict  # train()'s return: the test summary, or {"stopped_at_step", "exit_code"} after a stop request
    rows: list[dict]  # metrics.jsonl, one row per epoch
    seconds: float  # wall time of the whole train(cfg) call: data, epochs, validation, checkpoints, test


def preset_config(preset: str, overrides: list[str], run_dir: Path | str) -> Config:
    """The preset resolved as a benchmark runs it: in `run_dir`, quiet; `overrides` win."""
    return resolve(preset, None, [f"--run.dir={run_dir}", *QUIET_RUN, *overrides])


@contextlib.contextmanager
def run_folder(keep: Path | str | None = None, prefix: str = "benchmark-") -> Iterator[Path]:
    """`keep` if given; else a run folder inside a temporary one, removed on the way out."""
    if keep is not None:
        yield Path(keep)
        return
    temp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield temp / "run"
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def train_config(cfg: Config, quiet: bool = False, after_epoch=None) -> Result:
    """cifar-dist's own `train(cfg)` (train.py's code path, in this process); `after_epoch` as train()
    takes it. quiet: the run's own output is swallowed."""
    from cifar_dist.train import train

    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        summary = train(cfg, after_epoch=after_epoch)
    seconds = time.perf_counter() - t
    metrics = RunDir(cfg.run.dir).metrics
    return Result(cfg, summary, read_metrics(metrics) if metrics.exists() else [], seconds)


def run_preset(
    preset: str, overrides: list[str], run_dir: Path | str | None = None, quiet: bool = False, after_epoch=None
) -> Result:
    """Train `preset` with `overrides` and return its summary and metrics (see the module's docstring)."""
    with run_folder(run_dir) as folder:
        return train_config(preset_config(preset, overrides, folder), quiet, after_epoch)


# -- the baseline: the PyTorch CIFAR-10 tutorial's loop ----------------------------------------------------
class TutorialNet(TutorialCNN):
    """The tutorial's Net: TutorialCNN's layers (built in the same order, so the same initial weights for
    a seed) with the tutorial's forward as written, nn.Conv2d's fused bias and ReLU before the pool.
    (TutorialCNN computes the same function in a cheaper order; the baseline is the tutorial's code.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = self.pool(F.relu(self.conv3(x)))
        x = x.view(-1, self.fc1.in_features)
        x = self.dropout(x)
        x = F.relu(self.fc1(x))
        x = self.dropout(x)
        return self.fc2(x)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class TutorialLoop:
    """The tutorial's training loop as written: batches from a DataLoader of per-sample transformed images
    (batch 16), `.to(device)`, zero_grad, forward, cross-entropy, backward, SGD lr 0.01 step, and
    `train_loss += loss.item() * data.size(0)` every step. The benchmark chooses the data and the model."""

    def __init__(self, loader, model: torch.nn.Module, device: torch.device, lr: float = 0.01):
        self.loader, self.model, self.device = loader, model.to(device), device
        self.criterion = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.batches = iter(())

    def step(self, data: torch.Tensor, target: torch.Tensor) -> float:
        data, target = data.to(self.device), target.to(self.device)  # the tutorial's .cuda()
        self.optimizer.zero_grad()
        loss = self.criterion(self.model(data), target)
        loss.backward()
        self.optimizer.step()
        return loss.item() * data.size(0)

    def epoch(self) -> float:
        """One pass over the loader; returns its training seconds."""
        self.model.train()
        sync(self.device)
        t, train_loss = time.perf_counter(), 0.0
        for data, target in self.loader:
            train_loss += self.step(data, target)
        sync(self.device)
        return time.perf_counter() - t

    def images(self, n: int) -> float:
        """Train on `n` images (whole batches, across epochs: the sampler reshuffles); returns images/s."""
        self.model.train()
        train_loss, seen = 0.0, 0
        sync(self.device)
        t = time.perf_counter()
        while seen < n:
            try:
                data, target = next(self.batches)
            except StopIteration:  # a new epoch
                self.batches = iter(self.loader)
                continue
            train_loss += self.step(data, target)
            seen += data.size(0)
        sync(self.device)
        return seen / (time.perf_counter() - t)
