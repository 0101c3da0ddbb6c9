"""Read a W&B run's `run-*.wandb` record file, offline, with wandb's own protobuf types.

    python -m cifar_dist.wandb_records runs/<run>            # every W&B run under run.dir
    python -m cifar_dist.wandb_records runs/<run>/wandb/offline-run-20250101_120000-ab12cd34 --json

    from cifar_dist.wandb_records import read_run
    run = read_run("runs/<run>")        # the newest run file under the folder
    run.run_id, run.config["optim"]["lr"], run.summary["test/accuracy"], run.epoch_rows()

Why a reader of our own: wandb 0.31 offline writes no wandb-summary.json or config.yaml, and its
Python package no longer ships a reader of the record file. The format (measured, wandb 0.19-0.31):
a 7-byte header (b":W&B", 0xBEE1 little-endian, version 0), then LevelDB-log-style blocks of
32 KiB. Each chunk has a 7-byte header (crc32 4 B, length 2 B, type 1 B: 1 full, 2 first,
3 middle, 4 last); a block tail shorter than a chunk header is zero padding. The crc is zlib's
crc32 of the type byte followed by the data. Chunks join into `wandb_internal_pb2.Record`s.
"""
from __future__ import annotations

import argparse
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class RecordFileError(ValueError):
    pass


def iter_records(path: str | Path) -> Iterator[Any]:
    """Yield every `wandb_internal_pb2.Record` in a `.wandb` file, in order, checking every crc.
    A file cut off mid-record (a killed writer) ends the iteration at the last whole record."""
    from wandb.proto import wandb_internal_pb2

    raw = Path(path).read_bytes()
    if raw[: len(HEADER)] != HEADER:
        raise RecordFileError(f"{path}: not a W&B record file (header {raw[:7]!r}, expected {HEADER!r})")
    pos, parts = len(HEADER), []
    while pos + CHUNK_HEADER <= len(raw):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # zero padding at the end of a block
            pos += left_in_block
            continue
        crc, length, kind = struct.unpack_from("<IHB", raw, pos)
        data = raw[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        if kind == 0 and length == 0:  # preallocated zeros: the writer stopped here
            break
        if len(data) < length:
            break  # truncated tail
        if zlib.crc32(data, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise RecordFileError(f"{path}: crc mismatch in the chunk at byte {pos}")
        pos += CHUNK_HEADER + length
        if kind == FULL:
            parts = [data]
        elif kind == FIRST:
            parts = [data]
            continue
        elif kind == MIDDLE:
            parts.append(data)
            continue
        elif kind == LAST:
            parts.append(data)
        else:
            raise RecordFileError(f"{path}: unknown chunk type {kind} at byte {pos}")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(b"".join(parts))
        parts = []
        yield record


def _path_of(item) -> list[str]:
    """A config/summary/history item names its key either as `key` or as `nested_key` (a path)."""
    return [item.key] if item.key else list(item.nested_key)


def _set(tree: dict, path: list[str], value) -> None:
    for p in path[:-1]:
        node = tree.get(p)
        if not isinstance(node, dict):
            node = tree[p] = {}
        tree = node
    tree[path[-1]] = value


def _remove(tree: dict, path: list[str]) -> None:
    for p in path[:-1]:
        tree = tree.get(p)
        if not isinstance(tree, dict):
            return
    tree.pop(path[-1], None)


def _apply(tree: dict, updates=(), removes=()) -> None:
    """A config or summary record: its `update` items, then its `remove` items."""
    for item in updates:
        _set(tree, _path_of(item), json.loads(item.value_json))
    for item in removes:
        _remove(tree, _path_of(item))


@dataclass
class RunRecords:
    path: Path  # the .wandb file
    run_id: str = ""
    project: str = ""
    entity: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    resumed: bool = False
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
        return [{k.removeprefix("epoch/"): v for k, v in row.items() if k.startswith("epoch/")}
                for row in self.history if "epoch/epoch" in row]

    def table(self, key: str) -> dict:
        """The table logged under `key` (wandb.plot charts are stored as `<key>_table`), read from
        the run's files/: {"columns": [...], "data": [[...], ...]}."""
        for row in reversed(self.history):
            for k in (key, f"{key}_table"):
                value = row.get(k)
                if isinstance(value, dict) and value.get("_type") == "table-file":
                    return json.loads((self.folder / "files" / value["path"]).read_text())
        raise KeyError(f"no table {key!r} in the history of {self.path}")

    def artifact(self, type: str) -> dict:
        found = [a for a in self.artifacts if a["type"] == type]
        if not found:
            raise KeyError(f"no artifact of type {type!r} in {self.path}")
        return found[-1]


def read_run(path: str | Path) -> RunRecords:
    """Parse one run: a `.wandb` file, a run folder, or a folder holding runs (the newest is taken)."""
    path = Path(path)
    if path.is_dir():
        files = find_run_files(path)
        if not files:
            raise FileNotFoundError(f"no run-*.wandb file under {path}")
        path = files[-1]
    out = RunRecords(path=path)
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        out.counts[kind] = out.counts.get(kind, 0) + 1
        if kind == "run":
            r = record.run
            out.run_id, out.project, out.entity, out.name = r.run_id, r.project, r.entity, r.display_name
            out.tags, out.resumed = list(r.tags), r.resumed
            _apply(out.config, r.config.update)
        elif kind == "config":
            _apply(out.config, record.config.update, record.config.remove)
        elif kind == "history":
            row: dict = {}
            _apply(row, record.history.item)
            out.history.append(row)
        elif kind == "summary":
            _apply(out.summary, record.summary.update, record.summary.remove)
        elif kind == "artifact":
            a = record.artifact
            out.artifacts.append({
                "name": a.name, "type": a.type, "digest": a.digest, "aliases": list(a.aliases),
                "description": a.description, "metadata": json.loads(a.metadata) if a.metadata else {},
                "files": {e.path: {"digest": e.digest, "size": e.size, "local_path": e.local_path}
                          for e in a.manifest.contents}})
        elif kind == "metric":
            m = record.metric
            out.metrics.append({"name": m.name, "glob_name": m.glob_name, "step_metric": m.step_metric})
        elif kind == "files":
            out.files.extend(f.path for f in record.files.files)
        elif kind == "preempting":
            out.preempting = True
        elif kind == "exit":
            out.exit_code = record.exit.exit_code
    out.config.pop("_wandb", None)
    return out


def find_run_files(root: str | Path) -> list[Path]:
    """Every `run-*.wandb` under `root`, oldest run folder first (folders are named by start time)."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(root.rglob("run-*.wandb"), key=lambda p: p.parent.name.split("-", 1)[-1])


def describe(run: RunRecords) -> str:
    rows = run.epoch_rows()
    lines = [f"{run.folder}", f"  run {run.run_id}  project {run.project}  name {run.name!r}  tags {run.tags}",
             f"  config: {len(run.config)} sections; job: {json.dumps(run.config.get('job', {}).get('versions', {}))}",
             f"  history: {len(run.history)} steps, {len(rows)} with epoch metrics"]
    for r in rows:
        lines.append("    epoch {epoch}: train_loss {tl} val_loss {vl} val_accuracy {va}".format(
            epoch=r.get("epoch"), tl=_fmt(r.get("train_loss")), vl=_fmt(r.get("val_loss")), va=_fmt(r.get("val_accuracy"))))
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cifar_dist.wandb_records", description=__doc__.splitlines()[0])
    p.add_argument("path", help="a run.dir, a wandb run folder, or a run-*.wandb file")
    p.add_argument("--json", action="store_true", help="print config, summary, epoch rows and artifacts as JSON")
    args = p.parse_args(argv)
    files = find_run_files(args.path)
    if not files:
        print(f"error: no run-*.wandb file under {args.path}")
        return 2
    runs = [read_run(f) for f in files]
    if args.json:
        print(json.dumps([{"file": str(r.path), "run_id": r.run_id, "config": r.config, "summary": r.summary,
                           "epochs": r.epoch_rows(), "artifacts": r.artifacts, "exit_code": r.exit_code}
                          for r in runs], indent=2, default=str))
    else:
        print("\n".join(describe(r) for r in runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
