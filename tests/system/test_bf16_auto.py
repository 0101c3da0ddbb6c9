"""`train.mixed_precision=auto` on the CPU: bf16 where /proc/cpuinfo names avx512_bf16 (with or without AMX),
fp32 elsewhere; the start line names the units found. Measurements behind the rule: docs/performance.md.

    python -m pytest tests/test_bf16_auto.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SMALL, run, train_cmd

from cifar_dist.distributed import accelerator as distributed
from cifar_dist.distributed.accelerator import cpu_bf16_flags, cpu_has_bf16_matrix_units, resolve_mixed_precision

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
AVX512_NO_BF16 = "flags\t\t: avx2 avx512f avx512bw avx512_vnni\n"  # Skylake-SP, Ice Lake
AVX2_ONLY = "flags\t\t: sse2 avx avx2 fma\nbugs\t\t: avx512_bf16_is_not_a_flag_here\n"


@pytest.mark.parametrize(
    "cpuinfo, units, bf16",
    [
        (ZEN4, {"avx512_bf16"}, True),
        (SAPPHIRE_RAPIDS, {"avx512_bf16", "amx_bf16", "amx_tile"}, True),
        (AVX512_NO_BF16, set(), False),
        (AVX2_ONLY, set(), False),
        ("", set(), False),
    ],
)
def test_units_are_read_from_the_flags_lines(cpuinfo, units, bf16):
    assert cpu_bf16_flags(cpuinfo) == units
    assert cpu_has_bf16_matrix_units(cpu_bf16_flags(cpuinfo)) is bf16


@pytest.mark.parametrize("cpuinfo, expected", [(ZEN4, "bf16"), (SAPPHIRE_RAPIDS, "bf16"), (AVX2_ONLY, "no")])
def test_auto_follows_the_flags(monkeypatch, cpuinfo, expected):
    monkeypatch.setattr(distributed, "cpu_bf16_flags", lambda cpuinfo_text=None: cpu_bf16_flags(cpuinfo))
    assert resolve_mixed_precision("auto", use_cpu=True) == expected
    assert resolve_mixed_precision("no", use_cpu=True) == "no"  # an explicit value is never changed
    chosen, why = distributed.choose_mixed_precision("auto", use_cpu=True)
    assert chosen == expected
    assert ("CPU bf16 units: none" in why) == (expected == "no")


def test_this_machines_flags_and_start_line(tmp_path, data_root):
    """On this machine, against its own /proc/cpuinfo: the start line says which units were found and the
    precision `auto` chose."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo")
    units = cpu_bf16_flags(cpuinfo.read_text())
    p = run(
        train_cmd(
            *SMALL,
            f"--data.root={data_root}",
            "--train.epochs=1",
            "--train.mixed_precision=auto",
            "--tracking.backend=none",
            f"--run.dir={tmp_path / 'run'}",
        ),
        timeout=300,
        check=True,
    )
    expected = "bf16" if "avx512_bf16" in units else "no"
    assert f"mixed precision {expected} (train.mixed_precision=auto" in p.stdout, p.stdout[-2000:]
    assert f"CPU bf16 units: {', '.join(sorted(units)) or 'none'})" in p.stdout, p.stdout[-2000:]
