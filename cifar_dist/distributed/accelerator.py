"""Launch set-up: the accelerator, its precision and threads, and the checks that the launcher
started the job it was asked for. Collectives are in collectives.py; leaving the process is cli's.

    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml train.py --data.name=synthetic

On a machine without CUDA we always build `Accelerator(cpu=True)`: without it a MULTI_GPU launch
config on the CPU starts processes that each think they are alone (two independent runs writing
the same checkpoint; docs/distributed.md); with it they form one gloo DDP job.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import torch

from ..errors import UserError
from .collectives import raise_if_any


def env_local_rank() -> int:
    """This process's rank on its machine, from the launcher's environment, for code that runs
    before Accelerate exists: a one-line error is printed once per machine, so every machine's
    log says why the job stopped."""
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if key in os.environ:
            try:
                return int(os.environ[key])
            except ValueError:
                pass
    return 0


def env_world_size() -> int:
    """World size from the launcher's environment (1 when not launched as a distributed job)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def configure_threads(cfg, cuda: bool = False) -> int:
    """Intra-op threads per process: more threads than cores spin-wait against each other (several
    times slower; docs/results.md); launchers set OMP_NUM_THREADS, which we respect on the CPU. On CUDA
    the launcher's count is capped at this rank's share of the cores (`--num_cpu_threads_per_process=$(nproc)`
    gives every one of 8 ranks all of them); train.threads_per_process still wins."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = max(1, (os.cpu_count() or 1) // max(local_world, 1))
    if cfg.train.threads_per_process > 0:
        n = cfg.train.threads_per_process
    elif "OMP_NUM_THREADS" in os.environ:
        n = int(os.environ["OMP_NUM_THREADS"])
        n = min(n, share) if cuda else n
    else:
        n = share
    torch.set_num_threads(n)
    return n


def _launcher_requested_processes() -> int | None:
    """`accelerate launch --num_processes N` without a multi-process mode silently runs ONE process
    and exports nothing that says N; the only trace is the launcher's own command line."""
    from .devices import launcher_args

    args = launcher_args()
    if args is None:
        return None
    for i, a in enumerate(args):
        if a in ("--num_processes", "--num-processes") and i + 1 < len(args):
            return int(args[i + 1]) if args[i + 1].isdigit() else None
        if a.startswith("--num_processes=") and a.split("=", 1)[1].isdigit():
            return int(a.split("=", 1)[1])
        if a == "train.py" or a.endswith(".py"):
            break
    return None


BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")  # /proc/cpuinfo flags of the CPU's bf16 units


def cpu_bf16_flags(cpuinfo: str | None = None) -> set[str]:
    """The bf16 units this CPU reports: which of BF16_FLAGS /proc/cpuinfo's `flags` lines name (or those of
    `cpuinfo`, its text). An empty set where there is no /proc/cpuinfo (macOS, Windows)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags |= set(line.partition(":")[2].split())
    return flags & set(BF16_FLAGS)


def cpu_has_bf16_matrix_units(flags: set[str] | None = None) -> bool:
    """Whether this CPU multiplies bf16 in hardware: AVX512-BF16 (`avx512_bf16`: AMD Zen 4 and newer, Intel
    Cooper Lake), with or without AMX tiles (Sapphire Rapids and newer have both; oneDNN uses AMX there).
    Measured (docs/performance.md): bf16 autocast trained 1.5-2.6x faster than fp32 on an AMX Xeon and about
    2x faster for the airbench network on a Zen 4 without AMX; on CPUs without avx512_bf16 (AVX2-only, or
    AVX-512 without BF16) it trained about 15x slower. Read from /proc/cpuinfo's flags (`flags`: given)."""
    return "avx512_bf16" in (cpu_bf16_flags() if flags is None else flags)


def bare_module(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The network itself: without DDP's wrapper and without torch.compile's, outside DDP or inside it (compiled
    before prepare, DDP wraps the compiled module, which accelerate's unwrap_model leaves in place)."""
    net = accelerator.unwrap_model(model, keep_torch_compile=False)
    return getattr(net, "_orig_mod", net)


def resolve_mixed_precision(requested: str, use_cpu: bool) -> str:
    """`auto`: bf16 autocast where the hardware multiplies bf16: a CUDA GPU with bf16 (Ampere and newer) or
    a CPU with AVX512-BF16, with or without AMX (cpu_has_bf16_matrix_units: 1.5-2.6x faster than fp32 there,
    accuracy within a seed's noise; docs/performance.md). fp32 on CPUs without avx512_bf16, where bf16
    autocast trained about 15x slower (docs/results.md). Any other value is returned as asked."""
    if requested != "auto":
        return requested
    if use_cpu:
        return "bf16" if cpu_has_bf16_matrix_units() else "no"
    return "bf16" if cuda_runs_bf16_natively() else "no"


def cuda_runs_bf16_natively() -> bool:
    """Whether the GPU multiplies bf16 in hardware (compute capability 8.0 and newer: A100, H100). V100 and T4
    only emulate bf16 (torch.cuda.is_bf16_supported() says True there by default), many times slower than fp16
    or fp32, so `auto` trains them in fp32."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch without the argument (before 2.3)
        return torch.cuda.get_device_capability()[0] >= 8


LAUNCHER_PRECISIONS = ("no", "bf16", "fp16")


def choose_mixed_precision(requested: str, use_cpu: bool) -> tuple[str | None, str]:
    """-> (what to pass as Accelerator(mixed_precision=...), where the choice came from).

    `launcher` (the default) passes None: Accelerate then takes ACCELERATE_MIXED_PRECISION, which
    `accelerate launch` sets from --mixed_precision, its --config_file or `accelerate config`'s default
    file ("no" without a launcher). Any other value is explicit and wins: an argument in
    code overrides the launcher's setting (docs/results.md)."""
    env = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    if requested == "launcher":
        if not env:
            return None, "no launcher setting, so no"
        if env not in LAUNCHER_PRECISIONS:
            raise UserError(
                f"the launcher asked for mixed_precision {env} (ACCELERATE_MIXED_PRECISION); cifar-dist "
                f"supports {', '.join(LAUNCHER_PRECISIONS)}: launch with --mixed_precision bf16 or no"
            )
        if env == "fp16" and use_cpu:
            # Accelerator(cpu=True, mixed_precision="fp16") autocasts nothing (docs/results.md).
            raise UserError(
                "the launcher's mixed_precision fp16 needs a CUDA GPU (ACCELERATE_MIXED_PRECISION=fp16; on the "
                "CPU Accelerate would silently train in fp32); launch with --mixed_precision bf16 or no, "
                "or pass --train.mixed_precision=bf16|auto|no"
            )
        return None, f"the launcher (ACCELERATE_MIXED_PRECISION={env})"
    chosen = resolve_mixed_precision(requested, use_cpu)
    why = f"train.mixed_precision={requested}"
    if requested == "auto":
        why += " (bf16 where the GPU or CPU multiplies bf16, else no"
        if use_cpu:
            why += f"; CPU bf16 units: {', '.join(sorted(cpu_bf16_flags())) or 'none'}"
        why += ")"
    if env and env != chosen:
        why += f"; the launcher's {env} is overridden"
    return chosen, why


def mixed_precision_source(cfg, accelerator) -> str:
    """Where the run's precision came from, for the start line and the tracker's job info."""
    return choose_mixed_precision(cfg.train.mixed_precision, accelerator.device.type != "cuda")[1]


def build_accelerator(cfg, log_with=None, project_dir: str | None = None):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

    from .devices import check_gpu_request, set_determinism

    check_gpu_request(cfg)  # GPUs asked for (launcher, SLURM, --train.device=cuda) but none seen: stop here
    # A failed or hung NCCL collective: by default the watchdog ends the process from its own thread after
    # train.dist_timeout_s, with no Python exception, so cli's one line never prints. 2 (CleanUpOnly) aborts
    # the communicators and raises in the waiting Python call instead. Unverified on a GPU (issue 27).
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
    if cfg.train.deterministic:  # before anything initialises cuBLAS
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    use_cpu = cfg.train.device == "cpu" or not torch.cuda.is_available()
    configure_threads(cfg, cuda=not use_cpu)
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=choose_mixed_precision(cfg.train.mixed_precision, use_cpu)[0],
        # seedable sampler + set_epoch(epoch): the shuffle order is a pure function of (seed, epoch),
        # the same on every rank, and restorable on resume.
        # non_blocking: with pin_memory (CUDA), the batch's copy to the GPU overlaps the previous step
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed, non_blocking=True),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.dist_timeout_s))],
        log_with=log_with,
        project_dir=project_dir,
    )
    check_launch(accelerator)
    set_determinism(cfg, accelerator.device)
    return accelerator


def check_launch(accelerator) -> None:
    """Stop when the launcher asked for more processes than actually joined this job."""
    world_env = os.environ.get("WORLD_SIZE")
    if world_env is not None and int(world_env) != accelerator.num_processes:
        raise UserError(
            f"the launcher started {world_env} processes but they did not form one job (this process sees "
            f"num_processes={accelerator.num_processes}); "
            "on CPU launch with --config_file accelerate_configs/cpu_ddp.yaml"
        )
    requested = _launcher_requested_processes()
    if requested is not None and requested > 1 and accelerator.num_processes == 1:
        raise UserError(
            f"accelerate launch was asked for {requested} processes but started one (no multi-process mode was set); "
            f"use --config_file accelerate_configs/cpu_ddp.yaml on CPU or --multi_gpu on GPUs"
        )
    # Collective, so a rank on a machine whose launcher was right does not wait for one that quit.
    raise_if_any(accelerator, _machines_disagree())


def _machines_disagree() -> str | None:
    """torchrun (under `accelerate launch`) lets machines bring different process counts and forms
    a job of their sum, which trains with the wrong world size and hangs at exit (docs/results.md).
    Each launcher's own view is LOCAL_WORLD_SIZE × GROUP_WORLD_SIZE (per machine × machines)."""
    try:
        world, local, machines = (int(os.environ[k]) for k in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE"))
    except (KeyError, ValueError):
        return None
    if local * machines == world:
        return None
    rank = os.environ.get("GROUP_RANK", "?")
    return (
        f"the machines disagree on the world size: machine {rank} was launched for {local} process(es) x "
        f"{machines} machine(s) = {local * machines}, but {world} processes joined the job; launch every machine "
        f"with the same --num_machines and --num_processes (the TOTAL over all machines)"
    )
