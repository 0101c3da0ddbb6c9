"""A loop sized for GPU steps (issue 34): no per-step host reads with the progress bar on, per-epoch costs that
can be seen and chosen, GPU defaults for threads and precision, compile before prepare, multi-tensor
Lookahead, the deterministic refusal for functional ops, SLURM's GPU count under CUDA_VISIBLE_DEVICES, and
train.sync_batchnorm. Each test here fails on the main branch before that issue."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest
import torch
from helpers import REPO, SMALL, accelerate_cmd, base_env, on_a_terminal, read_metrics, run, train_cmd

from cifar_dist.config import resolve

# --------------------------------------------------------------------------- small kernels


def test_lookahead_sync_is_two_multi_tensor_ops_whatever_the_tensor_count():
    """A Lookahead sync of airbench's ~40 tensors dispatches 2 aten ops (one _foreach_lerp_, one _foreach_copy_),
    not 2 per tensor; the result is the per-tensor formula's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from cifar_dist.models import build_model
    from cifar_dist.optim.lookahead import Lookahead

    class Ops(TorchDispatchMode):
        names: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = build_model("airbench", 3, 32, 10, width=8)
    la = Lookahead(model, total_steps=100, every=5)
    assert len(la.tensors) > 20
    with torch.no_grad():
        for t in la.tensors:
            t.add_(torch.randn_like(t))
    slow = [s.clone() for s in la.slow]
    fast = [t.detach().clone() for t in la.tensors]
    mode = Ops()
    mode.names = []
    with mode:
        la.after_step(50)
    assert sorted(mode.names) == ["_foreach_copy_", "_foreach_lerp_"], mode.names
    decay = 0.95**5 * 0.5**3
    for s0, f0, s1, t in zip(slow, fast, la.slow, la.tensors, strict=True):
        want = s0.lerp(f0, 1 - decay)
        assert torch.equal(s1, want) and torch.equal(t.detach(), want)


@pytest.mark.slow
def test_toolkit_dispatches_only_its_metric_ops_beyond_a_bare_loop(tmp_path):
    """benchmarks/overhead.py --tiny: the aten ops per optimizer step outside forward, backward and the optimizer
    step, train() against the bare loop. The toolkit's extras are its running loss and accuracy sums (detach,
    add_ ×2, argmax, eq, sum, detach): 7 at most. Before issue 34 there were 10 (a float64 copy and a multiply
    for the loss, Accelerate's division of the loss by 1 accumulation step)."""
    out = tmp_path / "o.json"
    p = run(
        [sys.executable, str(REPO / "benchmarks" / "overhead.py"), "--tiny", "--json", str(out)],
        env=base_env(),
        timeout=600,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    row = json.loads(out.read_text())
    extra = row["toolkit_ops_per_step"] - row["bare_ops_per_step"]
    assert row["bare_ops_per_step"] > 10  # the count is live: the bare loop's own batch ops
    assert extra <= 7, (row["toolkit_ops"], row["bare_ops"])
    assert "mul" not in row["toolkit_ops"] and "div" not in row["toolkit_ops"], row["toolkit_ops"]
    assert re.search(r"^ratio=\d+\.\d+ toolkit_ops=\S+ bare_ops=\S+$", p.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- progress without host reads


def test_progress_bar_reads_the_loss_only_at_the_epoch_end_and_shows_the_logged_one(monkeypatch):
    """On a terminal the bar advances every step without reading the device's loss sum: its label takes the loss
    the loop logged (show_loss) and reads the sum once, at the epoch's last step. Before issue 34 it read
    float(loss_sum) every max(1, round(1% of the epoch)) steps: every step of a short epoch."""
    import rich

    from cifar_dist import progress as prog

    reads = []

    class DeviceSum:  # stands for the loop's loss-sum tensor: counts the reads
        def __float__(self):
            reads.append(1)
            return 12.5

    rich.reconfigure(force_terminal=True, file=open(os.devnull, "w"))  # noqa: SIM115 - closed with the console
    try:
        with prog.TrainProgress(True, steps_per_epoch=25, epochs=1) as p:
            assert p.terminal
            p.start_epoch(1)
            for step in range(1, 25):
                p.step(DeviceSum(), seen=16 * step)
                if step == 10:
                    p.show_loss(0.75)
                    assert "loss 0.7500" in p.progress.tasks[0].description
            assert reads == []
            p.step(DeviceSum(), seen=400)
            assert reads == [1] and "loss 0.0312" in p.progress.tasks[0].description
    finally:
        rich.reconfigure()


def _on_a_terminal(cmd, timeout=600) -> str:
    return on_a_terminal(cmd, columns=4000, timeout=timeout)


@pytest.mark.slow
def test_ddp_training_with_the_progress_bar_on_makes_no_host_sync_outside_the_log_interval(tmp_path, data_root):
    """tests/host_sync_probe.py (every device-to-host read and every tensor made from Python data inside
    train_epoch, with its step) under 2-process DDP, on a terminal with the progress bar on, as a user has it:
    nothing between the logging steps (every 3rd) on either rank. Before issue 34 the bar read the loss at
    every step, and the stop check synced every 10 steps whatever the logging interval."""
    log_every = 3
    shown = _on_a_terminal(
        [
            *accelerate_cmd(),
            str(REPO / "tests" / "host_sync_probe.py"),
            "fast",
            *SMALL,
            f"--data.root={data_root}",
            "--data.val_fraction=0.2",
            "--train.global_batch_size=64",  # 400 training images: 6 steps an epoch, 2 ranks of 32
            "--train.epochs=2",
            f"--train.log_every_steps={log_every}",
            "--model.width=8",
            "--tracking.backend=none",
            f"--run.dir={tmp_path / 'run'}",
        ]
    )
    found = [json.loads(m) for m in re.findall(r"HOST_SYNCS (\[.*?\])\s*$", shown, re.M)]
    assert len(found) == 2, shown[-3000:]  # one list per rank
    assert "epoch 2/2 loss" in shown  # the bar was drawn
    for ranks_found in found:
        assert any(step == log_every for step, _, _ in ranks_found), "the probe saw nothing at a logging step"
        per_step = [(step, what, where) for step, what, where in ranks_found if step % log_every]
        assert not per_step, "host syncs inside training steps:\n" + "\n".join(map(str, per_step))


# --------------------------------------------------------------------------- per-epoch costs


def test_save_cadence_every_n_epochs_and_auto_by_the_saves_share():
    from cifar_dist.train.save_cadence import SaveCadence

    assert [SaveCadence(2).due(e) for e in (1, 2, 3, 4)] == [False, True, False, True]
    now = [0.0]
    auto = SaveCadence(0, factor=20, clock=lambda: now[0])
    assert auto.due(1)  # nothing measured yet
    now[0] = 10.0
    auto.saved(0.5)  # a save of 0.5 s ended at t=10: the next is due 20 × 0.5 = 10 s later
    now[0] = 19.9
    assert not auto.due(2)
    now[0] = 20.0
    assert auto.due(3)


@pytest.mark.slow
def test_epoch_rows_record_validate_save_and_log_seconds_and_the_end_always_saves(tmp_path, data_root):
    """train.checkpoint_every_epochs=2 over 3 epochs: the state is saved at epochs 2 and 3 (the end, whatever the
    cadence), not 1; every metrics.jsonl row has its validate/save/log seconds."""
    run_dir = tmp_path / "r"
    run(
        train_cmd(
            *SMALL,
            f"--data.root={data_root}",
            "--train.epochs=3",
            "--train.checkpoint_every_epochs=2",
            f"--run.dir={run_dir}",
            "--run.progress=false",
            "--tracking.backend=none",
        ),
        check=True,
    )
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert all(r[k] >= 0 for k in ("validate_seconds", "save_seconds", "log_seconds")), r
        assert r["validate_seconds"] > 0, r  # every epoch validates here (eval_every_epochs=1)
    saves = [r["save_seconds"] for r in rows]
    assert saves[0] < 0.2 * min(saves[1:]), saves  # epoch 1 only asked the cadence; 2 and 3 wrote last/
    state = json.loads((run_dir / "config.json").read_text())
    assert state["train"]["checkpoint_every_epochs"] == 2
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("last")) == ["last"]


# --------------------------------------------------------------------------- GPU defaults


def test_wait_policy_sleeps_on_a_gpu_machine_unless_the_run_is_on_the_cpu(monkeypatch, tmp_path):
    from cifar_dist.distributed import wait_policy as wp

    driver = tmp_path / "version"
    driver.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15\n")
    assert wp.gpu_machine({}, driver=str(driver))
    assert not wp.gpu_machine({}, driver=str(tmp_path / "none"))
    assert wp.gpu_machine({"CUDA_VISIBLE_DEVICES": "0,1"}, driver=str(tmp_path / "none"))
    assert not wp.gpu_machine({"CUDA_VISIBLE_DEVICES": ""}, driver=str(driver))  # GPUs hidden on purpose
    assert wp.gpu_machine({"SLURM_GPUS_ON_NODE": "4"}, driver=str(tmp_path / "none"))
    for argv, want in (([], wp.GPU_DEFAULT), (["--train.device=cpu"], wp.DEFAULT)):
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
        wp.choose_wait_policy(argv)
        assert os.environ.get("OMP_WAIT_POLICY") == want, argv
    assert wp.GPU_DEFAULT in ("PASSIVE", None)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's own choice wins everywhere
    wp.choose_wait_policy([])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_threads_are_capped_at_the_local_ranks_share_on_cuda(monkeypatch):
    """`accelerate launch --num_cpu_threads_per_process=$(nproc)` sets OMP_NUM_THREADS=nproc in every rank: on
    CUDA each rank takes its share of the cores instead; on the CPU the launcher's number stands."""
    from cifar_dist.distributed import configure_threads

    cfg = resolve("fast", None, [])
    before = torch.get_num_threads()
    cores = os.cpu_count() or 1
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", str(4 * cores))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert configure_threads(cfg, cuda=True) == max(1, cores // 2)
        assert configure_threads(cfg, cuda=False) == 4 * cores
        own = resolve("fast", None, ["--train.threads_per_process=3"])
        assert configure_threads(own, cuda=True) == 3
    finally:
        torch.set_num_threads(before)


def test_auto_picks_bf16_only_where_the_gpu_runs_it_natively(monkeypatch):
    """A V100 or T4 emulates bf16: torch.cuda.is_bf16_supported() says True by default, False with
    including_emulation=False. (No GPU here: the function is replaced by what torch answers on each card.)"""
    from cifar_dist.distributed import resolve_mixed_precision

    def v100(including_emulation=True):
        return including_emulation

    def h100(including_emulation=True):
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", v100)
    assert resolve_mixed_precision("auto", use_cpu=False) == "no"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", h100)
    assert resolve_mixed_precision("auto", use_cpu=False) == "bf16"
    assert resolve_mixed_precision("bf16", use_cpu=False) == "bf16"  # asked for: as asked


def test_slurm_gpus_on_the_node_above_the_visible_ones_are_accepted_when_cuda_visible_devices_narrows():
    """srun with --gpu-bind gives each task one of the node's 4 GPUs: SLURM_GPUS_ON_NODE=4, CUDA_VISIBLE_DEVICES=2.
    The task needs 1 GPU, not 4."""
    from cifar_dist.distributed.devices import gpu_request

    cfg = resolve("fast", None, [])
    assert gpu_request(cfg, [], {"SLURM_GPUS_ON_NODE": "4", "CUDA_VISIBLE_DEVICES": "2"})[1] == 1
    assert gpu_request(cfg, [], {"SLURM_GPUS_ON_NODE": "4", "CUDA_VISIBLE_DEVICES": "0,1"})[1] == 2
    assert gpu_request(cfg, [], {"SLURM_GPUS_ON_NODE": "4"})[1] == 4


def test_deterministic_refuses_airbench_whose_forward_calls_adaptive_max_pool2d():
    """airbench's head calls F.adaptive_max_pool2d, which no module scan sees; its CUDA backward has no
    deterministic kernel. The refusal names it, before training; tutorial_cnn passes."""
    from cifar_dist.distributed.devices import check_deterministic_model
    from cifar_dist.errors import UserError
    from cifar_dist.models import build_model

    on = resolve("airbench", None, ["--train.deterministic=true"])
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    airbench = build_model("airbench", 3, 32, 10, width=8)
    with pytest.raises(UserError, match=r"adaptive_max_pool2d.*deterministic"):
        check_deterministic_model(on, airbench, cuda, (3, 32))
    check_deterministic_model(on, build_model("tutorial_cnn", 3, 32, 10), cuda, (3, 32))
    check_deterministic_model(on, airbench, torch.device("cpu"), (3, 32))  # CPU kernels are deterministic


@pytest.mark.slow
def test_compile_wraps_the_bare_module_inside_ddp_and_evaluation_uses_the_uncompiled_one(tmp_path, data_root):
    """train.compile under 2-process DDP: DDP is the outer wrapper (its no_sync and hooks intact), the compiled
    module inside; evaluation, best.pt and the EMA use the uncompiled network, with the EMA on (the raw weights'
    validation: job.uncompiled) and off (eval_model is then the trained network). Before issue 34 the DDP module
    was compiled after prepare and evaluation ran the compiled graph."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import os, sys, torch\n"
        "from cifar_dist.config import resolve\n"
        "from cifar_dist.data import load_data\n"
        "from cifar_dist.distributed import build_accelerator\n"
        "from cifar_dist.train.job import build\n"
        "cfg = resolve('tutorial_fast', None, sys.argv[1:])\n"
        "acc = build_accelerator(cfg)\n"
        "data = load_data(cfg, acc)\n"
        "for ema in ('0.9', '0'):\n"
        "    job = build(resolve('tutorial_fast', None, [*sys.argv[1:], f'--train.ema_decay={ema}']), acc, data)\n"
        "    names = [type(job.model), type(getattr(job.model, 'module', None)), type(job.eval_model),\n"
        "             type(job.uncompiled), type(job.ema.module) if job.ema else None]\n"
        "    line = ' '.join(['TYPES', ema, *(n.__name__ if n else '-' for n in names)])\n"
        "    os.write(1, (line + '\\n').encode())  # one write: the two ranks' lines do not interleave\n"
    )
    p = run(
        [
            *accelerate_cmd(),
            str(script),
            *SMALL,
            f"--data.root={data_root}",
            "--train.compile=true",
            "--tracking.backend=none",
            f"--run.dir={tmp_path / 'r'}",
        ],
        timeout=600,
        check=True,
    )
    # 2 ranks × 2 builds; each line is one write, but rank 0's prints may surround it
    types = sorted(m.split() for m in re.findall(r"TYPES ([^\n]*)\n", p.stdout))
    # ema_decay, the model's wrappers (DDP outermost), eval_model, uncompiled, the EMA's module
    outer = ["DistributedDataParallel", "OptimizedModule"]
    want = [["0", *outer, "TutorialCNN", "TutorialCNN", "-"]] * 2
    want += [["0.9", *outer, "TutorialCNN", "TutorialCNN", "TutorialCNN"]] * 2
    assert types == want, p.stdout


# --------------------------------------------------------------------------- the same recipe with BatchNorm


@pytest.mark.slow
def test_batchnorm_model_at_two_processes_matches_one_only_with_sync_batchnorm(tmp_path, data_root):
    """tutorial_cnn_bn at global batch 64: 1 process against 2 processes of 32. Per-rank BatchNorm (the default)
    normalises each half with its own statistics, so the losses differ; with train.sync_batchnorm=true the
    statistics are the global batch's and the losses match the one-process run's."""
    common = [
        *SMALL,
        f"--data.root={data_root}",
        "--data.loader=tensor",
        "--model.name=tutorial_cnn_bn",
        "--model.dropout=0",
        "--optim.lr=0.05",
        "--optim.momentum=0.9",
        "--train.global_batch_size=64",
        "--train.epochs=2",
        "--run.progress=false",
        "--tracking.backend=none",
    ]
    runs = {
        "one": ([], None),
        "two": ([], accelerate_cmd()),
        "two_sync": (["--train.sync_batchnorm=true"], accelerate_cmd()),
    }
    losses = {}
    for name, (extra, launch) in runs.items():
        run(train_cmd(*common, *extra, f"--run.dir={tmp_path / name}", launch=launch), timeout=600, check=True)
        losses[name] = [(r["train_loss"], r["val_loss"]) for r in read_metrics(tmp_path / name / "metrics.jsonl")]
    for (a_train, a_val), (b_train, b_val) in zip(losses["one"], losses["two_sync"], strict=True):
        assert a_train == pytest.approx(b_train, rel=1e-4) and a_val == pytest.approx(b_val, rel=1e-4), losses
    gap = max(abs(a - b) / abs(a) for pa, pb in zip(losses["one"], losses["two"]) for a, b in zip(pa, pb))
    assert gap > 1e-3, losses  # per-rank statistics: not the same training


def test_ema_update_is_a_few_multi_tensor_ops_whatever_the_layer_count():
    """One EMA update of a BatchNorm network (one process): a lerp over the parameters, a copy of the integer
    buffers (num_batches_tracked), a lerp over the float buffers: three multi-tensor ops, not one per layer."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from cifar_dist.models import build_model
    from cifar_dist.optim.ema import EMA

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    class One:
        num_processes = 1

    model = build_model("airbench", 3, 32, 10, width=8)
    ema = EMA(model, 0.9, One())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    mode = Ops()
    with mode:
        ema.update(model)
    counted = [n for n in mode.names if n not in ("detach",)]  # views, no kernel
    assert sorted(counted) == ["_foreach_copy_", "_foreach_lerp_", "_foreach_lerp_"], mode.names
    p0, e0 = next(model.parameters()), next(ema.module.parameters())
    assert torch.allclose(e0, p0 - 0.9, atol=1e-6)  # 0.9·(p − 1) + 0.1·p
