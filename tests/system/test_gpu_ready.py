"""Ready for the first GPU (issue 27), proven on the CPU: no silent CPU fallback when GPUs were asked
for, a suite that hides GPUs from the tests meant for the CPU.

    OMP_NUM_THREADS=1 python -m pytest tests/system/test_gpu_ready.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from helpers import (
    CPU_DDP,
    REPO,
    SMALL,
    accelerate_cmd,
    base_env,
    free_port,
    gpu_env,
    read_metrics,
    requires_gpu,
    run,
    train_cmd,
)

from cifar_dist.config import resolve
from cifar_dist.distributed.devices import gpu_request

CONFIGS = REPO / "accelerate_configs"
NO_DRIVER = not Path("/proc/driver/nvidia/version").exists()


def launcher(*opts: str) -> list[str]:
    """What /proc shows for `accelerate launch OPTS train.py --data.name=synthetic`."""
    return [sys.executable, "/venv/bin/accelerate", "launch", *opts, "train.py", "--data.name=synthetic"]


def cfg(*overrides: str):
    return resolve(None, None, list(overrides))


# --------------------------------------------------------------------------- who asked for GPUs (pure)


def test_gpu_request_reads_the_launcher_and_slurm():
    multi = launcher("--config_file", str(CONFIGS / "multi_gpu.yaml"), "--num_processes", "2")
    assert gpu_request(cfg(), multi, {"LOCAL_WORLD_SIZE": "2"})[1] == 2
    assert "MULTI_GPU" in gpu_request(cfg(), multi, {"LOCAL_WORLD_SIZE": "2"})[0]
    single = launcher("--config_file", str(CONFIGS / "single_gpu.yaml"))
    assert gpu_request(cfg(), single, {"ACCELERATE_USE_CPU": "False", "CUDA_VISIBLE_DEVICES": "0"})[1] == 1
    assert gpu_request(cfg(), launcher("--multi_gpu", "--num_processes=4"), {"LOCAL_WORLD_SIZE": "4"})[1] == 4
    assert gpu_request(cfg(), None, {"SLURM_GPUS_ON_NODE": "2"}) == ("SLURM (SLURM_GPUS_ON_NODE=2)", 2)
    assert gpu_request(cfg(), None, {"CUDA_VISIBLE_DEVICES": "0,1,2"})[1] == 3
    assert gpu_request(cfg("--train.device=cuda"), None, {})[0] == "--train.device=cuda"


def test_gpu_request_leaves_cpu_runs_alone():
    # cpu_ddp.yaml is MULTI_GPU + use_cpu: true on purpose (two gloo processes on the CPU)
    assert gpu_request(cfg(), launcher("--config_file", str(CPU_DDP)), {"LOCAL_WORLD_SIZE": "2"}) is None
    assert gpu_request(cfg(), launcher("--config_file", str(CONFIGS / "cpu.yaml")), {}) is None
    assert gpu_request(cfg(), launcher("--cpu", "--multi_gpu"), {}) is None
    # slurm/launch.sh USE_CPU=1: --multi_gpu, with ACCELERATE_USE_CPU=1 exported
    assert gpu_request(cfg(), launcher("--multi_gpu"), {"ACCELERATE_USE_CPU": "1", "LOCAL_WORLD_SIZE": "2"}) is None
    assert gpu_request(cfg(), None, {"CUDA_VISIBLE_DEVICES": ""}) is None  # hidden, as the tests do
    assert gpu_request(cfg(), None, {}) is None
    assert gpu_request(cfg("--train.device=cpu"), None, {"SLURM_GPUS_ON_NODE": "4"}) is None  # explicit CPU wins


LAUNCHED_SEES = """
import os, sys
sys.path.insert(0, os.environ["REPO"])
from cifar_dist.config import resolve
from cifar_dist.distributed.devices import gpu_request
launcher = ["accelerate", "launch", "--multi_gpu", "--num_processes=2", "x.py"]
print(os.environ.get("RANK"), os.environ.get("ACCELERATE_USE_CPU"), gpu_request(resolve(), launcher), flush=True)
"""


@pytest.mark.slow
def test_multi_gpu_over_a_use_cpu_default_config_asks_for_gpus_as_accelerate_does(tmp_path):
    """After `accelerate config default` on a CPU machine (README command 1), the default config says
    `use_cpu: true`. `accelerate launch --multi_gpu` still asks for GPUs: its multi-GPU launcher does not pass
    use_cpu on (no ACCELERATE_USE_CPU in its processes), so they look for GPUs. gpu_request decides the same,
    so on this machine the run stops with its one line instead of training on the CPU unasked."""
    hf_home = tmp_path / "hf"
    env = base_env(HF_HOME=str(hf_home), REPO=str(REPO))
    run([sys.executable, "-m", "accelerate.commands.accelerate_cli", "config", "default"], env=env, check=True)
    import yaml  # accelerate writes JSON into the .yaml file: YAML reads it

    assert yaml.safe_load((hf_home / "accelerate" / "default_config.yaml").read_text())["use_cpu"] is True
    (tmp_path / "sees.py").write_text(LAUNCHED_SEES)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2"]
    p = run([*cmd, "--main_process_port", str(free_port()), str(tmp_path / "sees.py")], env=env, check=True)
    seen = sorted(line for line in p.stdout.splitlines() if line[:1] in "01")
    asked = ("accelerate launch --multi_gpu", 2)
    assert seen == [f"0 None {asked}", f"1 None {asked}"], p.stdout[-2000:]


# --------------------------------------------------------------------------- real launches, CPU-only machine


def _no_run_folder(tmp_path) -> None:
    assert not (tmp_path / "run").exists(), "the run started: a run folder was made"


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ") and "asked for" in ln]
    assert lines, stderr[-3000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.skipif(not NO_DRIVER, reason="needs a machine without an NVIDIA driver")
@pytest.mark.parametrize("config,extra", [("single_gpu.yaml", []), ("multi_gpu.yaml", ["--num_processes", "2"])])
def test_gpu_launch_on_a_cpu_machine_stops_before_any_work(tmp_path, config, extra):
    """Before issue 27, single_gpu.yaml trained on the CPU in bf16 without a word (FACTS, 2026-12-03)."""
    launch = [*accelerate_cmd(CONFIGS / config), *extra]
    p = run(train_cmd(*SMALL, f"--run.dir={tmp_path / 'run'}", launch=launch), env=gpu_env(), timeout=200)
    assert p.returncode != 0
    line = _one_line(p.stderr)
    assert "sees 0" in line and "CUDA" in line and "--train.device=cpu" in line, line
    _no_run_folder(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not NO_DRIVER, reason="needs a machine without an NVIDIA driver")
@pytest.mark.parametrize("how", [["--train.device=cuda"], ["SLURM_GPUS_ON_NODE=2"]])
def test_gpu_request_without_gpus_exits_2_in_one_line(tmp_path, how):
    env = gpu_env()
    args = [a for a in how if a.startswith("--")]
    env.update(dict(a.split("=", 1) for a in how if not a.startswith("--")))
    p = run(train_cmd(*SMALL, f"--run.dir={tmp_path / 'run'}", *args), env=env, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    _one_line(p.stderr)
    _no_run_folder(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not NO_DRIVER, reason="needs a machine without an NVIDIA driver")
def test_slurm_launch_sh_counts_granted_gpus_and_never_falls_back(tmp_path):
    """slurm/launch.sh took max(torch.cuda.device_count(), 1): one silent CPU process on a GPU node whose
    driver torch cannot use. Now SLURM's grant sets the process count and the training stops in one line;
    with no grant and no GPU, launch.sh itself stops."""
    launch_sh = ["bash", str(REPO / "slurm" / "launch.sh")]
    env = gpu_env(SLURM_GPUS_ON_NODE="2", MAIN_PROCESS_PORT=str(free_port()))
    p = run([*launch_sh, str(REPO / "train.py"), *SMALL, f"--run.dir={tmp_path / 'run'}"], env=env, timeout=200)
    assert p.returncode != 0
    assert "processes=2" in p.stderr and "asked for 2 GPU(s)" in _one_line(p.stderr), p.stderr[-3000:]
    _no_run_folder(tmp_path)
    p = run([*launch_sh, str(REPO / "train.py"), *SMALL, f"--run.dir={tmp_path / 'run'}"], env=gpu_env(), timeout=100)
    assert p.returncode == 2 and "USE_CPU=1" in p.stderr and "accelerate" not in p.stderr.lower(), p.stderr[-2000:]
    _no_run_folder(tmp_path)


# --------------------------------------------------------------------------- a GPU-safe suite


def test_the_suite_hides_gpus_from_cpu_tests():
    """Tests meant for the CPU (bit-exact comparisons, fp16 refused on the CPU) must see no GPU on a GPU
    machine: this process and every subprocess get CUDA_VISIBLE_DEVICES=""."""
    import torch

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and base_env()["CUDA_VISIBLE_DEVICES"] == ""
    assert not torch.cuda.is_available()


@pytest.mark.slow
def test_a_one_epoch_run_on_the_gpu(tmp_path, data_root):
    """Needs a GPU: skipped without one. With one: the CUDA path trains and tests end to end."""
    requires_gpu(1)
    run_dir = tmp_path / "run"
    run(
        train_cmd(
            *SMALL,
            f"--data.root={data_root}",
            "--preset=tutorial_fast",
            "--train.epochs=1",
            "--train.device=cuda",
            f"--run.dir={run_dir}",
        ),
        env=gpu_env(),
        check=True,
    )
    assert (run_dir / "test_metrics.json").exists()


# --------------------------------------------------------------------------- the CUDA path without CUDA


def test_data_path_and_every_model_run_on_the_meta_device():
    """A tensor made on the wrong device fails here: the tensor loader (gather, crop, flip, channels_last,
    normalisation) and each model's forward and backward run on device="meta", as they would on "cuda"."""
    from types import SimpleNamespace

    import torch
    import torch.nn.functional as F

    from cifar_dist.models import MODELS, build_model
    from cifar_dist.train.tensor_loader import TensorTrainLoader

    cfg = resolve("fast", None, ["--data.name=synthetic", "--train.per_device_batch_size=8"])
    assert cfg.data.augment and cfg.data.crop_pad > 0 and cfg.train.channels_last
    n = 40
    data = SimpleNamespace(
        mean=(0.49, 0.48, 0.45),
        std=(0.25, 0.24, 0.26),
        train_images=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8),
        train_labels=torch.randint(0, 10, (n,)),
        image_size=32,
    )
    # the loader reads only these three of the accelerator (Accelerate itself cannot run on meta)
    meta = SimpleNamespace(device=torch.device("meta"), process_index=0, num_processes=1)
    loader = TensorTrainLoader(cfg, data, meta)
    batches = list(loader.iterate())
    assert len(batches) == n // 8
    x, y = batches[0]
    assert x.device.type == "meta" and y.device.type == "meta"
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    for name in MODELS:
        model = build_model(name, 3, 32, 10, width=8).to("meta").to(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        assert loss.device.type == "meta", name
        assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters()), name


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tutorial_fast", "fast", "resnet_fast"])
def test_training_steps_make_no_host_sync_outside_the_log_interval(tmp_path, data_root, preset):
    """Real training steps (trainer.train, 2 epochs of 6 steps) under a TorchFunctionMode that records every
    tensor made from Python data (a host-to-device copy on a GPU) and every device-to-host read (.item(),
    float(), .cpu(), .tolist(), ...), with the step count when it happened. Allowed: at the start and end of
    an epoch and at the logging steps (every 3rd). Before issue 27 normalize_batch built mean and std from
    Python tuples at every step."""
    import json

    log_every = 3
    args = [
        preset,
        *SMALL,
        f"--data.root={data_root}",
        "--data.val_fraction=0.2",  # fast's final fit trains on all 500: 400 for every preset here
        "--train.per_device_batch_size=64",  # 400 training images: 6 steps an epoch
        "--train.epochs=2",
        f"--train.log_every_steps={log_every}",
        "--model.width=8",
        "--run.progress=false",
        "--tracking.backend=none",
        f"--run.dir={tmp_path / 'run'}",
    ]
    p = run([sys.executable, str(REPO / "tests" / "host_sync_probe.py"), *args], timeout=300, check=True)
    found = json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("HOST_SYNCS "))[len("HOST_SYNCS ") :])
    assert any(step == log_every for step, _, _ in found), "the probe saw nothing at a logging step: is it live?"
    per_step = [(step, what, where) for step, what, where in found if step % log_every]
    assert not per_step, "host syncs inside training steps:\n" + "\n".join(map(str, per_step))


# --------------------------------------------------------------------------- determinism said honestly


def test_deterministic_sets_torch_and_refuses_a_model_without_deterministic_cuda_backward():
    import torch

    from cifar_dist.distributed.devices import check_deterministic_model, nondeterministic_on_cuda, set_determinism
    from cifar_dist.errors import UserError
    from cifar_dist.models import build_model

    resnet, seed = build_model("resnet_fast", 3, 32, 10, width=8), build_model("tutorial_cnn", 3, 32, 10)
    assert [n for n in nondeterministic_on_cuda(resnet) if "AdaptiveMaxPool2d" in n]
    assert nondeterministic_on_cuda(seed) == []
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    on = resolve("fast", None, ["--train.deterministic=true"])
    with pytest.raises(UserError, match="AdaptiveMaxPool2d"):
        check_deterministic_model(on, resnet, cuda)
    check_deterministic_model(on, resnet, torch.device("cpu"))  # CPU kernels are deterministic
    check_deterministic_model(on, seed, cuda)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    try:
        set_determinism(resolve("fast", None, []), cuda)
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
        set_determinism(on, cuda)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]
        torch.backends.cudnn.deterministic = False


# --------------------------------------------------------------------------- NCCL failures are not gloo failures

# Real messages: PyTorch's DistBackendError texts and NCCL's "Last error" lines as users reported them
# (pytorch/pytorch, NVIDIA/nccl and downstream issue trackers), and gloo's, measured here.
NCCL_SETUP = [
    "NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1207, internal error, NCCL version 2.14.3\n"
    "ncclInternalError: Internal check failed.\nLast error:\nBootstrap : no socket interface found",
    "NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1333, unhandled system error (run with "
    "NCCL_DEBUG=INFO for details), NCCL version 2.18.6\nncclSystemError: System call (e.g. socket, malloc) or external "
    "library call failed or device error. \nLast error:\nsocketStartConnect: Connect to 192.168.19.14<52822> failed : "
    "No route to host",
    "ncclInternalError: Internal check failed.\nLast error:\nncclSocketInit: connecting to address  with family 59936 "
    "is neither AF_INET(2) nor AF_INET6(10)",
]
PEER = [
    "[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5, OpType=ALLREDUCE, NumelIn=1, "
    "NumelOut=1, Timeout(ms)=600000) ran for 600013 milliseconds before timing out.",
    "NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1333, remote process exited or there was a "
    "network error, NCCL version 2.18.6",
    "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:12345",
    "[../third_party/gloo/gloo/transport/tcp/pair.cc:598] Connection reset by peer",
    "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1800000ms for recv operation",
    "Application timeout caused pair closure",
]


def test_nccl_setup_errors_are_not_a_dead_peer():
    from cifar_dist.distributed.faults import classify_collective_failure

    for text in NCCL_SETUP:
        assert classify_collective_failure(text, dist_error=True) == "setup", text
    for text in PEER:
        assert classify_collective_failure(text, dist_error=True) == "peer", text
        assert classify_collective_failure(text, dist_error=False) == "peer", text
    # words that used to be enough: "socket", "timeout", "nccl" alone say nothing about a peer
    assert classify_collective_failure("socket option SO_REUSEPORT not supported") is None
    assert classify_collective_failure("timeout must be a positive number") is None
    assert classify_collective_failure("NCCL is not available in this build") is None
    assert classify_collective_failure("NCCL error in: x.cpp:1, some new failure", dist_error=True) == "backend"


def test_nccl_watchdog_is_asked_to_raise_in_python():
    """TORCH_NCCL_ASYNC_ERROR_HANDLING=2 (CleanUpOnly) is set before the process group exists, unless the user
    set it: the hung-peer error then reaches cli's one-line handler (effect on NCCL unverified without a GPU)."""
    probe = (
        "import os, sys; from cifar_dist.config import resolve; from cifar_dist.distributed import build_accelerator;"
        "build_accelerator(resolve(None, None, ['--tracking.backend=none'])); "
        "print('TORCH_NCCL_ASYNC_ERROR_HANDLING=' + os.environ.get('TORCH_NCCL_ASYNC_ERROR_HANDLING', ''))"
    )
    p = run([sys.executable, "-c", probe], check=True)
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING=2" in p.stdout
    p = run([sys.executable, "-c", probe], env=base_env(TORCH_NCCL_ASYNC_ERROR_HANDLING="1"), check=True)
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in p.stdout


# --------------------------------------------------------------------------- the same recipe at any world size


def test_batch_plan_and_the_layering_of_the_two_batch_keys():
    from cifar_dist.errors import UserError
    from cifar_dist.optim.schedules import scaled_lr
    from cifar_dist.train.batching import plan_batches

    fast = resolve("resnet_fast", None, [])
    assert (fast.train.global_batch_size, fast.train.per_device_batch_size) == (256, 0)
    for world in (1, 2, 4, 8):  # finding 5: the lr no longer grows with the process count
        plan = plan_batches(fast, world)
        assert plan.global_batch == 256 and plan.per_device == 256 // world and plan.accumulation == 1
        assert scaled_lr(fast, plan.global_batch) == fast.optim.lr
    capped = resolve("resnet_fast", None, ["--train.max_per_device_batch_size=100"])
    assert (
        plan_batches(capped, 1).describe() == "processes 1, per-device batch 64, accumulation steps 4, global batch 256"
    )
    assert plan_batches(capped, 2).accumulation == 2 and plan_batches(capped, 4).accumulation == 1
    with pytest.raises(UserError, match="does not split evenly over 3 processes"):
        plan_batches(fast, 3)
    own = resolve("resnet_fast", None, ["--train.per_device_batch_size=64"])  # the older way: per process
    assert (own.train.global_batch_size, plan_batches(own, 4).global_batch) == (0, 256)
    with pytest.raises(UserError, match="set exactly one"):
        resolve(None, None, ["--train.per_device_batch_size=16", "--train.global_batch_size=64"])


@pytest.mark.slow
def test_one_process_accumulation_and_two_processes_give_the_same_losses(tmp_path, data_root):
    """The tutorial CNN (no BatchNorm; dropout 0, since each rank draws its own masks) at global batch 64:
    one process, one process with 2 accumulation steps of 32, two processes of 32: the same per-epoch
    training and validation losses to 1e-5 relative."""

    common = [
        *SMALL,
        f"--data.root={data_root}",
        "--data.loader=tensor",
        "--model.dropout=0",
        "--optim.lr=0.05",
        "--optim.momentum=0.9",
        "--train.global_batch_size=64",
        "--train.epochs=3",
        "--run.progress=false",
        "--tracking.backend=none",
    ]
    runs = {
        "one": ([], None),
        "accumulate": (["--train.max_per_device_batch_size=32"], None),
        "two": ([], accelerate_cmd()),
    }
    losses = {}
    for name, (extra, launch) in runs.items():
        p = run(train_cmd(*common, *extra, f"--run.dir={tmp_path / name}", launch=launch), timeout=400, check=True)
        rows = read_metrics(tmp_path / name / "metrics.jsonl")
        losses[name] = [(r["train_loss"], r["val_loss"]) for r in rows]
        want = {
            "one": "processes 1, per-device batch 64, accumulation steps 1",
            "two": "processes 2, per-device batch 32, accumulation steps 1",
            "accumulate": "processes 1, per-device batch 32, accumulation steps 2",
        }
        assert want[name] + ", global batch 64, lr 0.05" in p.stdout, p.stdout[-2000:]
    assert len(losses["one"]) == 3 and losses["one"][-1][0] < losses["one"][0][0]
    for name in ("accumulate", "two"):
        for (a_train, a_val), (b_train, b_val) in zip(losses["one"], losses[name]):
            assert a_train == pytest.approx(b_train, rel=1e-5) and a_val == pytest.approx(b_val, rel=1e-5), (
                name,
                losses,
            )


def test_bf16_matrix_units_are_read_from_the_cpu():
    """cpu_has_bf16_matrix_units says what /proc/cpuinfo's flags say (AVX512-BF16, with or without AMX), and
    `auto` follows it: bf16 on a CPU with avx512_bf16, fp32 on one without (test_bf16_auto.py: by flags)."""
    from cifar_dist.distributed import cpu_has_bf16_matrix_units, resolve_mixed_precision

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo")
    flags = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    assert cpu_has_bf16_matrix_units() == ("avx512_bf16" in flags)
    assert resolve_mixed_precision("auto", use_cpu=True) == ("bf16" if "avx512_bf16" in flags else "no")
