"""Read a W&B run's `run-*.wandb` record file, offline, with wandb's own reader.

    python -m cifar_dist.wandb_records runs/<run>            # every W&B run under run.dir
    python -m cifar_dist.wandb_records runs/<run>/wandb/offline-run-20250101_120000-ab12cd34 --json

    from cifar_dist.wandb_records import read_run
    run = read_run("runs/<run>")        # the newest run file under the folder
    run.run_id, run.config["optim"]["lr"], run.summary["test/accuracy"], run.epoch_rows()

wandb 0.31 offline writes no wandb-summary.json or config.yaml; everything is in the record file.
wandb >= 0.31 reads it itself: `wandb leet inspect --summary --json FILE` prints the run's identity,
config, summary and exit code (config and summary merged as W&B merges them), `wandb leet inspect
--json FILE` one JSON object per record (history rows, artifacts, metric definitions, ...). This
module runs those two commands and puts the answers into one object: it parses no binary format.
What the official reader does not give directly, and this module adds: history rows come with
nested keys joined by dots (`test/predictions.path`), so tables are found through the summary,
which keeps them nested; the crc check is a warning on stderr there ("skipped corrupt data"), an
error (RecordFileError) here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


class RecordFileError(ValueError):
    pass


def inspect(path: str | Path, *flags: str) -> str:
    """stdout of `wandb leet inspect FLAGS PATH` (wandb's own reader of the record file)."""
    p = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", *flags, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    problems = [line for line in p.stderr.splitlines() if "corrupt" in line or line.startswith("Error")]
    if p.returncode != 0 or problems:
        why = (problems or p.stderr.strip().splitlines() or [f"exit code {p.returncode}"])[0]
        raise RecordFileError(f"{path}: wandb cannot read this record file ({why.strip()[:200]})")
    return p.stdout


@dataclass
class RunRecords:
    path: Path  # the .wandb file
    run_id: str = ""
    project: str = ""
    entity: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # W&B's own `_wandb` key removed
    history: list[dict] = field(default_factory=list)  # one dict per committed step
    summary: dict = field(default_factory=dict)
    artifacts: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)  # define_metric records
    files: list[str] = field(default_factory=list)
    preempting: bool = False
    exit_code: int | None = None  # None: the run never finished (killed, or still running)
    counts: dict = field(default_factory=dict)  # record type -> how many

    @property
    def folder(self) -> Path:
        """The run folder (`offline-run-...`): what `wandb sync` takes."""
        return self.path.parent

    def epoch_rows(self) -> list[dict]:
        """Rows holding per-epoch metrics, keyed as in metrics.jsonl (the `epoch/` prefix dropped)."""
        return [
            {k.removeprefix("epoch/"): v for k, v in row.items() if k.startswith("epoch/")}
            for row in self.history
            if "epoch/epoch" in row
        ]

    def table(self, key: str) -> dict:
        """The latest table logged under `key` (wandb.plot charts are stored as `<key>_table`), read
        from the run's files/: {"columns": [...], "data": [[...], ...]}."""
        for k in (key, f"{key}_table"):
            value = self.summary.get(k)
            if isinstance(value, dict) and value.get("_type") == "table-file":
                return json.loads((self.folder / "files" / value["path"]).read_text())
        raise KeyError(f"no table {key!r} in the summary of {self.path}")

    def artifact(self, type: str) -> dict:
        found = [a for a in self.artifacts if a["type"] == type]
        if not found:
            raise KeyError(f"no artifact of type {type!r} in {self.path}")
        return found[-1]


def read_run(path: str | Path) -> RunRecords:
    """Read one run: a `.wandb` file, a run folder, or a folder holding runs (the newest is taken)."""
    path = Path(path)
    if path.is_dir():
        files = find_run_files(path)
        if not files:
            raise FileNotFoundError(f"no run-*.wandb file under {path}")
        path = files[-1]
    state = json.loads(inspect(path, "--summary", "--json"))
    out = RunRecords(
        path=path,
        run_id=state.get("run_id", ""),
        project=state.get("project", ""),
        entity=state.get("entity", ""),
        name=state.get("name", ""),
        tags=list(state.get("tags") or []),
        config={k: v for k, v in (state.get("config") or {}).items() if not k.startswith("_wandb")},
        summary=state.get("summary") or {},
        exit_code=state.get("exit_code"),
    )
    for line in inspect(path, "--json").splitlines():
        record = json.loads(line)
        kind = record.get("type", "")
        out.counts[kind] = out.counts.get(kind, 0) + 1
        body = record.get(kind) or {}
        if kind == "history":
            out.history.append(body.get("item", {}))
        elif kind == "artifact":
            out.artifacts.append(
                {
                    "name": body.get("name", ""),
                    "type": body.get("type", ""),
                    "digest": body.get("digest", ""),
                    "aliases": body.get("aliases", []),
                    "description": body.get("description", ""),
                    "metadata": json.loads(body["metadata"]) if body.get("metadata") else {},
                    "files": {
                        e["path"]: {
                            "digest": e.get("digest", ""),
                            "size": int(e.get("size", 0)),
                            "local_path": e.get("local_path", ""),
                        }
                        for e in body.get("manifest", {}).get("contents", [])
                    },
                }
            )
        elif kind == "metric":
            out.metrics.append(
                {
                    "name": body.get("name", ""),
                    "glob_name": body.get("glob_name", ""),
                    "step_metric": body.get("step_metric", ""),
                }
            )
        elif kind == "files":
            out.files.extend(f["path"] for f in body.get("files", []))
        elif kind == "preempting":
            out.preempting = True
    return out


def find_run_files(root: str | Path) -> list[Path]:
    """Every `run-*.wandb` under `root`, oldest run folder first (folders are named by start time)."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(root.rglob("run-*.wandb"), key=lambda p: p.parent.name.split("-", 1)[-1])


def describe(run: RunRecords) -> str:
    rows = run.epoch_rows()
    lines = [
        f"{run.folder}",
        f"  run {run.run_id}  project {run.project}  name {run.name!r}  tags {run.tags}",
        f"  config: {len(run.config)} sections; job: {json.dumps(run.config.get('job', {}).get('versions', {}))}",
        f"  history: {len(run.history)} steps, {len(rows)} with epoch metrics",
    ]
    for r in rows:  # only what the epoch measured: validation may run every few epochs
        shown = [f"{k} {_fmt(r[k])}" for k in ("train_loss", "val_loss", "val_accuracy") if r.get(k) is not None]
        lines.append(f"    epoch {r.get('epoch')}: " + " ".join(shown))
    for k in ("test/loss", "test/accuracy", "best/epoch"):
        if k in run.summary:
            lines.append(f"  summary {k}: {_fmt(run.summary[k])}")
    for a in run.artifacts:
        if a["type"] != "run_table":
            lines.append(f"  artifact {a['name']} ({a['type']}) aliases {a['aliases']} files {sorted(a['files'])}")
    lines.append(f"  exit code: {run.exit_code}" + ("  (marked preempting)" if run.preempting else ""))
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
