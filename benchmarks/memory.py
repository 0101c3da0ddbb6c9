"""Resident memory of a multi-process training run: every 0.2 s, each training process's RSS and PSS
(from /proc/PID/smaps_rollup) and the kernel's peak RSS (VmHWM); prints each rank's peaks and the peak of
the ranks' PSS added up.

    python benchmarks/memory.py -- accelerate launch --config_file accelerate_configs/cpu_ddp.yaml \\
        train.py --preset tutorial_fast --data.name=imagefolder \\
        --data.root=../shared/data/cifar10-jpeg.tar.xz --train.epochs=1 --tracking.backend=none

RSS counts every page a process has in memory, its share of the page cache's file pages included, so two
ranks mapping one file both count it in full. PSS divides each shared page among the processes mapping
it: the ranks' PSS added up is what the run costs the machine. Anonymous memory (RssAnon) is what a
process holds privately (its heap: tensors it copied). Last line: `peak_pss_sum_mb=... peak_rss_max_mb=...`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Anonymous")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children of children too), from /proc's children lists."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def rollup(pid: int) -> dict[str, int] | None:
    """{field: kB} from /proc/PID/smaps_rollup; None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        if name in FIELDS:
            values[name] = int(rest.split()[0])
    return values


def high_water_kb(pid: int) -> int | None:
    """VmHWM, the kernel's own peak RSS of the process (no sample misses it); None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def is_training(pid: int, script: str) -> bool:
    """A training process: its command line runs `script` (the launcher's children; not the launcher)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(a.decode(errors="replace").endswith(script) for a in argv) and b"launch" not in b" ".join(argv)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--script", default="train.py", help="the ranks are the processes running this file")
    parser.add_argument("--every", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to measure")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    proc = subprocess.Popen(command)
    peak: dict[int, dict[str, int]] = {}
    peak_pss_sum = 0
    while proc.poll() is None:
        ranks = [p for p in ([proc.pid] + descendants(proc.pid)) if is_training(p, args.script)]
        pss_sum = 0
        for pid in ranks:
            r = rollup(pid)
            if r is None:
                continue
            pss_sum += r.get("Pss", 0)
            top = peak.setdefault(pid, dict.fromkeys((*FIELDS, "VmHWM"), 0))
            for k in FIELDS:
                top[k] = max(top[k], r.get(k, 0))
            top["VmHWM"] = max(top["VmHWM"], high_water_kb(pid) or 0)
        peak_pss_sum = max(peak_pss_sum, pss_sum)
        time.sleep(args.every)
    mb = 1 / 1024
    for i, (pid, top) in enumerate(sorted(peak.items())):
        print(
            f"process {i} (pid {pid}): peak RSS {top['VmHWM'] * mb:.0f} MB (VmHWM; sampled {top['Rss'] * mb:.0f}, "
            f"anonymous {top['Anonymous'] * mb:.0f}); "
            f"peak PSS {top['Pss'] * mb:.0f} MB (anonymous {top['Pss_Anon'] * mb:.0f}, file {top['Pss_File'] * mb:.0f})"
        )
    rss_max = max((t["VmHWM"] for t in peak.values()), default=0)
    print(f"exit code {proc.returncode}; {len(peak)} training processes")
    print(f"peak_pss_sum_mb={peak_pss_sum * mb:.0f} peak_rss_max_mb={rss_max * mb:.0f}")
    return {"returncode": proc.returncode, "peaks": peak, "peak_pss_sum_kb": peak_pss_sum}


if __name__ == "__main__":
    sys.exit(0 if main()["returncode"] == 0 else 1)
