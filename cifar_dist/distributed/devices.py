"""Which device a run was asked for, and a one-line stop when GPUs were asked for and torch has none.

    check_gpu_request(cfg)   # before the Accelerator, the run folder or any data: raises UserError

A GPU job must never train on the CPU without a word: with a CUDA build of torch and an older driver,
`torch.cuda.is_available()` is False and `train.device=auto` would fall back to the CPU, 10-100x slower,
and report success. GPUs count as asked for when any of these says so:

- `--train.device=cuda`;
- the launcher: `accelerate launch --multi_gpu` or `--gpu_ids`, or its config file (`--config_file`, else
  Accelerate's default one) with `distributed_type: MULTI_GPU` or `gpu_ids` other than `all`, unless it also
  says `use_cpu: true` (accelerate_configs/cpu_ddp.yaml is MULTI_GPU + use_cpu on purpose) or `--cpu`;
- SLURM granted GPUs (`SLURM_GPUS_ON_NODE`), or `CUDA_VISIBLE_DEVICES` names devices.

`--train.device=cpu` and `ACCELERATE_USE_CPU` (cpu.yaml, slurm/launch.sh's USE_CPU=1) ask for the CPU and
win over the environment. The run needs as many GPUs as the largest of: the processes on this machine
under MULTI_GPU, SLURM's grant, the devices CUDA_VISIBLE_DEVICES lists; fewer visible is an error too.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ..errors import UserError

TRUE = ("1", "true", "yes")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUE


def launcher_args() -> list[str] | None:
    """The command line of `accelerate launch` when it started this process (directly, or through the
    torchrun agent it runs in-process); None otherwise. Accelerate exports nothing that says which config
    file or flags it was given to the workers of a MULTI_GPU launch: its command line is the only trace."""
    try:
        ppid = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[1])
        argv = Path(f"/proc/{ppid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    args = [a.decode(errors="replace") for a in argv if a]
    via_module = "accelerate.commands.launch" in args[:3]
    via_script = any(a.endswith("accelerate") for a in args[:2]) and "launch" in args[:3]
    return args if via_module or via_script else None


def _launcher_options(args: list[str]) -> dict[str, str | bool]:
    """accelerate launch's own options (those before the script), as {name: value or True}."""
    opts: dict[str, str | bool] = {}
    start = next((i + 1 for i, a in enumerate(args) if a == "launch" or a == "accelerate.commands.launch"), 1)
    i = start
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):  # the script: its arguments are not the launcher's
            break
        name, eq, value = a[2:].replace("-", "_").partition("=")
        if eq:
            opts[name] = value
        elif i + 1 < len(args) and not args[i + 1].startswith("--") and not args[i + 1].endswith(".py"):
            opts[name] = args[i + 1]
            i += 1
        else:
            opts[name] = True
        i += 1
    return opts


def _launcher_config(opts: dict) -> tuple[dict, str]:
    """The launcher's config file, parsed (empty when there is none), and its path."""
    path = opts.get("config_file")
    if not isinstance(path, str):
        try:
            from accelerate.commands.config.config_args import default_config_file
        except ImportError:  # pragma: no cover - accelerate is a dependency
            return {}, ""
        path = default_config_file
    try:
        import yaml

        data = yaml.safe_load(Path(path).read_text()) if str(path).endswith((".yaml", ".yml")) else None
        if data is None and Path(path).is_file() and str(path).endswith(".json"):
            import json

            data = json.loads(Path(path).read_text())
    except (OSError, ValueError, ImportError, Exception):  # noqa: BLE001 - an unreadable file asks for nothing
        return {}, str(path)
    return (data if isinstance(data, dict) else {}), str(path)


def _count_ids(value) -> int:
    ids = [v for v in str(value).replace(" ", "").split(",") if v]
    return len(ids)


def gpu_request(cfg, launcher: list[str] | None = None, env=None) -> tuple[str, int] | None:
    """(who asked for GPUs, how many this machine needs) or None when nothing did (or the CPU was asked for)."""
    env = os.environ if env is None else env
    if cfg.train.device == "cpu":
        return None
    asked: list[str] = []
    needed = 1
    local_processes = int(env.get("LOCAL_WORLD_SIZE", "1") or 1)
    if cfg.train.device == "cuda":
        asked.append("--train.device=cuda")
        needed = max(needed, local_processes)
    elif _truthy(env.get("ACCELERATE_USE_CPU")):
        return None  # the launcher was told --cpu / use_cpu (cpu.yaml, USE_CPU=1 under slurm/launch.sh)
    if launcher is not None:
        opts = _launcher_options(launcher)
        config, path = _launcher_config(opts)
        # The default config's use_cpu (`accelerate config default` writes true on a machine without a
        # GPU) does not make `--multi_gpu` a CPU launch: Accelerate's multi-GPU launcher does not pass it
        # on (no ACCELERATE_USE_CPU), so its processes look for GPUs. A --config_file is the user's choice.
        named = isinstance(opts.get("config_file"), str)
        config_cpu = _truthy(str(config.get("use_cpu", ""))) and (named or opts.get("multi_gpu") is not True)
        if not (opts.get("cpu") is True or config_cpu):
            if opts.get("multi_gpu") is True:
                asked.append("accelerate launch --multi_gpu")
                needed = max(needed, local_processes)
            elif config.get("distributed_type") == "MULTI_GPU" and "multi_cpu" not in opts:
                asked.append(f"the launcher's config {path} (distributed_type: MULTI_GPU)")
                needed = max(needed, local_processes)
            gpu_ids = opts.get("gpu_ids", config.get("gpu_ids"))
            if gpu_ids not in (None, True, "all", ""):
                asked.append(f"the launcher's gpu_ids {gpu_ids}")
                needed = max(needed, _count_ids(gpu_ids))
    slurm_gpus = env.get("SLURM_GPUS_ON_NODE", "").strip()
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if slurm_gpus.isdigit() and int(slurm_gpus) > 0:
        asked.append(f"SLURM (SLURM_GPUS_ON_NODE={slurm_gpus})")
        granted = int(slurm_gpus)
        if visible is not None and visible.strip() not in ("", "-1"):  # a task bound to some of them (--gpu-bind)
            granted = min(granted, _count_ids(visible))
        needed = max(needed, granted)
    if visible is not None and visible.strip() not in ("", "-1") and not any("gpu_ids" in a for a in asked):
        asked.append(f"CUDA_VISIBLE_DEVICES={visible}")
        needed = max(needed, _count_ids(visible))
    return ("; ".join(dict.fromkeys(asked)), needed) if asked else None


def nvidia_driver() -> str:
    """The NVIDIA kernel driver's version, from /proc (no nvidia-smi needed); 'none loaded' without one."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return "no NVIDIA driver loaded (/proc/driver/nvidia/version missing)"
    for word in text.split():
        if word.count(".") >= 1 and word.replace(".", "").isdigit():
            return f"driver {word}"
    return "driver " + text.splitlines()[0][:60]


def visible_gpus() -> tuple[int, str]:
    """(CUDA devices torch can use, torch's own warning if it gave one: an old driver says so there)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    said = next((str(w.message).strip().splitlines()[0][:160] for w in caught), "")
    return count, said


def check_gpu_request(cfg, launcher: list[str] | None = None, env=None) -> None:
    """Stop in one line when GPUs were asked for and torch sees fewer (see the module's docstring)."""
    request = gpu_request(cfg, launcher_args() if launcher is None else launcher, env)
    if request is None:
        return
    who, needed = request
    count, said = visible_gpus()
    if count >= needed:
        return
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    raise UserError(
        f"{who} asked for {needed} GPU(s), but torch {torch.__version__} ({build}) sees {count}; "
        f"{nvidia_driver()}{f'; torch says: {said}' if said else ''}; check nvidia-smi and that the driver supports "
        f"CUDA {torch.version.cuda or '(any)'}, or train on the CPU on purpose with --train.device=cpu "
        f"(accelerate_configs/cpu.yaml or cpu_ddp.yaml, USE_CPU=1 under SLURM)"
    )


# Modules whose backward has no deterministic CUDA kernel: with torch.use_deterministic_algorithms(True) PyTorch
# raises at the first backward on a GPU (list: the docs of torch.use_deterministic_algorithms, torch 2.x). Their CPU
# kernels are deterministic.
NONDETERMINISTIC_CUDA_BACKWARD = (
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
    "MaxPool3d",
    "FractionalMaxPool2d",
    "FractionalMaxPool3d",
    "Upsample",
    "ReflectionPad1d",
    "ReflectionPad2d",
    "ReflectionPad3d",
    "ReplicationPad1d",
    "ReplicationPad2d",
    "ReplicationPad3d",
    "EmbeddingBag",
    "CTCLoss",
)


def nondeterministic_on_cuda(model: torch.nn.Module) -> list[str]:
    """Names of `model`'s modules whose backward has no deterministic CUDA kernel."""
    return [
        f"{name} ({type(m).__name__})"
        for name, m in model.named_modules()
        if type(m).__name__ in NONDETERMINISTIC_CUDA_BACKWARD
    ]


def set_determinism(cfg, device: torch.device) -> None:
    """train.deterministic=true: PyTorch's deterministic algorithms (and cuBLAS's fixed workspace, which they
    need); false: cudnn.benchmark on a GPU (each convolution shape timed once, the fastest kernel kept; the
    choice may differ between runs, so results differ in the last bits)."""
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
        torch.backends.cudnn.deterministic = cfg.train.deterministic


def check_deterministic_model(cfg, model: torch.nn.Module, device: torch.device, sample=None) -> None:
    """Refuse, before training, a model that cannot train deterministically on this GPU. `sample`: (channels,
    size) of an input, to find functional calls too (F.adaptive_max_pool2d in `airbench`): determinism.py."""
    if not (cfg.train.deterministic and device.type == "cuda"):
        return
    bad = nondeterministic_on_cuda(model)
    if sample is not None and not bad:  # functional calls no module scan sees
        from .determinism import nondeterministic_ops

        bad = [f"F.{op} (called in forward)" for op in nondeterministic_ops(model, *sample)]
    if bad:
        raise UserError(
            f"train.deterministic=true, but model {cfg.model.name} has {', '.join(bad)}, whose backward has no "
            f"deterministic CUDA kernel; drop --train.deterministic=true or choose another model.name"
        )
