"""Everything that knows about processes, ranks and devices lives here; the rest of the package
takes the `accelerator` as an argument.

    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml train.py --data.name=synthetic

On a machine without CUDA we always build `Accelerator(cpu=True)`: measured here, a MULTI_GPU
launch config on CPU without it starts 2 processes that each think they are alone (two
independent runs writing the same checkpoint), and with it they form one gloo DDP job.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch

from .errors import UserError


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


def configure_threads(cfg) -> int:
    """Intra-op threads per process. Measured on 2 vCPUs: 2 processes × 2 threads ran ~5× slower
    than 1 thread each (spin-waiting); launchers set OMP_NUM_THREADS, which we respect."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if cfg.train.threads_per_process > 0:
        n = cfg.train.threads_per_process
    elif "OMP_NUM_THREADS" in os.environ:
        n = int(os.environ["OMP_NUM_THREADS"])
    else:
        n = max(1, (os.cpu_count() or 1) // max(local_world, 1))
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


def resolve_mixed_precision(requested: str, use_cpu: bool) -> str:
    """`auto`: bf16 autocast on a CUDA GPU with bf16 (Ampere and newer), otherwise fp32. Never bf16
    on a CPU: measured on CPUs without avx512_bf16, bf16 autocast trained ~15× slower (270 vs 4,080
    images/s for the seed CNN)."""
    if requested != "auto":
        return requested
    return "bf16" if not use_cpu and torch.cuda.is_bf16_supported() else "no"


LAUNCHER_PRECISIONS = ("no", "bf16", "fp16")


def choose_mixed_precision(requested: str, use_cpu: bool) -> tuple[str | None, str]:
    """-> (what to pass as Accelerator(mixed_precision=...), where the choice came from).

    `launcher` (the default) passes None: Accelerate then takes ACCELERATE_MIXED_PRECISION, which
    `accelerate launch` sets from --mixed_precision, its --config_file or `accelerate config`'s default
    file ("no" without a launcher). Any other value is explicit and wins: measured, an argument in
    code overrides the launcher's setting."""
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
            # Measured (accelerate 1.15): Accelerator(cpu=True, mixed_precision="fp16") autocasts nothing.
            raise UserError(
                "the launcher's mixed_precision fp16 needs a CUDA GPU (ACCELERATE_MIXED_PRECISION=fp16; on the "
                "CPU Accelerate would silently train in fp32); launch with --mixed_precision bf16 or no, "
                "or pass --train.mixed_precision=bf16|auto|no"
            )
        return None, f"the launcher (ACCELERATE_MIXED_PRECISION={env})"
    chosen = resolve_mixed_precision(requested, use_cpu)
    why = f"train.mixed_precision={requested}"
    if requested == "auto":
        why += " (bf16 on a CUDA GPU that has it, else no)"
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
    configure_threads(cfg)
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
    a job of their sum: measured on two hosts, `--num_processes 2` on one and 4 on the other trained
    with 3 processes, then hung at exit; `--num_machines 3` on one of two trained with 2. Each
    launcher's own view is LOCAL_WORLD_SIZE × GROUP_WORLD_SIZE (per machine × machines)."""
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


def exit_process(code) -> None:
    """Leave the process with `code` (what sys.exit takes). Every exit of train.py and evaluate.py
    comes here (cli.main): success, a one-line error, a stop request, a failed peer, a traceback.
    A process that was one rank of several skips interpreter finalization, after running what a
    normal exit runs (atexit: wandb's teardown, logging's flush) and flushing its output.

    Why (issues 7, 19): once DDP has used a gloo process group, torch never frees it, not even after
    destroy_process_group and gc (its worker threads stay alive; pytorch#107298). If one of those
    threads drops its last finished collective (a gather of Python tensors) just as the main thread
    starts finalizing, the decref must take the GIL, which ends the thread inside a C++ frame:
    std::terminate, SIGABRT, "terminate called without an active exception". gdb on a core:
    ~AsyncAllgatherWork -> THPVariable_clear -> take_gil -> PyThread_exit_thread -> abort. Measured
    on this 2-core machine before the change: 2 of 40 single-host 2-process runs under load, 1 of 8
    two-host runs, and 2 of 4 CI runs lost a worker after the run had written everything; the
    other machine's torchrun agent then waited 300 s at its exit barrier. Until issue 19 a rank
    whose peer failed mid-collective (and any traceback) still finalized: under load it aborted the
    same way, and the launcher named it as the root cause instead of the peer that failed."""
    if env_world_size() <= 1:
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message") prints it and exits 1
        print(code, file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# torchrun polls its workers every 0.1 s (accelerate launch's --monitor_interval); waiting up to this
# long for its SIGTERM is only paid in full when no other local worker exits (a hung peer, a peer on
# another machine), where the job has already waited train.dist_timeout_s or lost a machine.
LAUNCHER_GRACE_S = 10.0


def wait_for_launcher_stop(grace_s: float = LAUNCHER_GRACE_S) -> None:
    """Under torchrun, stay until its SIGTERM (at most grace_s), which it sends to every other worker
    once it has seen one exit with a failure. Two callers (cli.run_cli), both about who leaves first:
    - after a peer died mid-collective: the launcher names the failure it saw first as the root cause
      (timestamps to the second; within one poll, the lowest local rank), so a survivor that left at
      once could be blamed instead of the peer;
    - a rank that is not its machine's first, after a one-line error every rank hits: the first one
      prints it, and a rank that left sooner had the launcher stop the first before it printed
      (measured: `--optim.lr=-1` under cpu_ddp.yaml printed nothing; rank 0 ended by SIGTERM).
    Without torchrun (srun tasks, mpirun) there is no such report and nothing to wait for."""
    import signal
    import time

    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    got: list[int] = []
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    except ValueError:  # not the main thread
        return
    # preemption's handler recorded a SIGTERM that came before ours was installed
    if getattr(previous, "signum", None) == signal.SIGTERM:
        return
    # A sleep, not sigwait: the signal may land on any of gloo's threads; Python runs the handler on
    # the main thread between two sleeps.
    deadline = time.monotonic() + grace_s
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)


def broadcast_object(accelerator, obj):
    """The main process's value of `obj` on every rank."""
    if accelerator.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def raise_if_any(accelerator, message: str | None) -> None:
    """Collective: if any rank has an error message, every rank raises the first one (so no rank
    is left waiting in a collective for a rank that gave up)."""
    if accelerator.num_processes == 1:
        if message:
            raise UserError(message)
        return
    from accelerate.utils import gather_object

    messages = [m for m in gather_object([message]) if m]
    if messages:
        raise UserError(messages[0])


def broadcast_module(accelerator, module) -> None:
    """Copy the main process's parameters and buffers into every rank's module, in place."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import broadcast

    for t in module.state_dict().values():
        t.copy_(broadcast(t.detach().clone().to(accelerator.device), from_process=0).to(t.device))


def seed_each_rank(accelerator, seed: int) -> None:
    """After the (identical) initial weights are drawn, give each rank its own random stream, so
    ranks do not draw the same dropout masks. Rank r of W > 1 gets seed·65537 + 1 + r; a single
    process keeps the stream it has."""
    if accelerator.num_processes > 1:
        torch.manual_seed(seed * 65537 + 1 + accelerator.process_index)


def gather_per_rank(accelerator, obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (collective)."""
    if accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def any_rank(accelerator, flag: bool) -> bool:
    """Collective OR of a per-rank flag."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


def reduce_sum(accelerator, values: list[float | torch.Tensor]) -> list[float]:
    """Sum scalars across ranks in float64, then the caller divides: never average averages."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64).detach().cpu() for v in values]).to(accelerator.device)
    if accelerator.num_processes > 1:
        t = accelerator.reduce(t, reduction="sum")
    return t.cpu().tolist()


def eval_batches(n: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """Evaluation sharding: the single-process batches [0,B), [B,2B), ... dealt round-robin to ranks,
    no padding. Every sample is seen exactly once and each batch has the same members as in a
    single-process run, so per-sample outputs, and the metrics built from them, are identical."""
    starts = range(0, n, batch_size)
    return [list(range(s, min(s + batch_size, n))) for i, s in enumerate(starts) if i % world == rank]


def gather_varlen(accelerator, t: torch.Tensor) -> torch.Tensor:
    """Concatenate a per-rank tensor of varying length along dim 0 (pad, gather, drop the padding)."""
    if accelerator.num_processes == 1:
        return t
    n = torch.tensor([t.shape[0]], device=accelerator.device)
    sizes = accelerator.gather(n).tolist()
    padded = accelerator.pad_across_processes(t.to(accelerator.device), dim=0)
    everything = accelerator.gather(padded)
    width = max(sizes)
    parts = [everything[i * width : i * width + s] for i, s in enumerate(sizes)]
    return torch.cat(parts).cpu()
