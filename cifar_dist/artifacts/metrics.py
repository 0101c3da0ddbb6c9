"""`run.dir/metrics.jsonl`: one JSON line per epoch. The one writer (MetricsLog, in the loop) and
the one reader (read_metrics: plots, benchmarks, tests).

    from cifar_dist.metrics import read_metrics
    rows = read_metrics("runs/x/metrics.jsonl")      # [{"epoch": 1, "train_loss": ..., ...}, ...]
"""

from __future__ import annotations

import json
from pathlib import Path

from ..distributed.collectives import raise_if_any
from ..distributed.faults import write_failure
from ..errors import UserError
from ..files import atomic_write_bytes


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl, in order; a damaged line ends in one line (UserError)."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{path} line {n} is not JSON; the file is damaged") from None
    return rows


class MetricsLog:
    """The run's metrics.jsonl, rewritten atomically after every epoch."""

    def __init__(self, path: Path, accelerator):
        self.path = Path(path)
        self.accelerator = accelerator
        self.rows: list[dict] = []

    def load(self, epochs_completed: int) -> None:
        """On resume: keep the rows of epochs the restored state has completed (a crash after the
        row was written but before the state was saved repeats that epoch). Rows count epochs from 1."""
        if self.path.exists():
            self.rows = [r for r in read_metrics(self.path) if r.get("epoch", 0) <= epochs_completed]

    def append(self, row: dict) -> None:
        """Collective: every rank keeps the rows, the main process writes, all stop if that fails."""
        self.rows.append(row)
        self.flush()

    def flush(self) -> None:
        """Collective: write the rows as they are now (the loop adds an epoch's save and log seconds to its
        row after the row was first written)."""
        error = None
        if self.accelerator.is_main_process:
            try:
                atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in self.rows).encode())
            except OSError as e:
                error = write_failure("the metrics", self.path, e, kept="the previous metrics.jsonl")
        raise_if_any(self.accelerator, error)
