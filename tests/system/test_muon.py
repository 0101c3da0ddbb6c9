"""optim.name=muon (cifar_dist/optim/muon.py): the grouping as pure functions, FilterMuon against torch.optim.Muon on
the same matrices, the composite's schedule, the one-line error, and exact resume after SIGUSR1 mid-epoch
with 1 process and with 2 (accelerate launch --config_file accelerate_configs/cpu_ddp.yaml).

    python -m pytest tests/test_muon.py
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import MEDIUM, REPO, accelerate_cmd, base_env, read_metrics, run, train_cmd, without_timing
from torch import nn

from cifar_dist.config import Config
from cifar_dist.errors import UserError
from cifar_dist.models import build_model
from cifar_dist.optim import build_optimizer
from cifar_dist.optim.muon import FilterMuon, MuonWithCompanion, muon_params, split_params


def airbench(width=8, whiten=True):
    m = build_model("airbench", 3, 32, 10, width=width, bn_learn_scale=False, dirac_init=True)
    if whiten:
        m.whiten.weight.requires_grad_(False)
    return m


def optim_cfg(**kw):
    cfg = Config().optim
    for k, v in {"name": "muon", "momentum": 0.85, "nesterov": True, "bias_lr_scale": 64.0, **kw}.items():
        setattr(cfg, k, v)
    return cfg


# -- grouping (pure functions) -----------------------------------------------------------------------------


def test_conv_filters_go_to_muon_and_everything_else_to_the_companion():
    m = airbench()
    filters, rest = split_params(m)
    convs = [mod.weight for mod in m.groups.modules() if isinstance(mod, nn.Conv2d)]
    assert [id(p) for p in filters] == [id(p) for p in convs] and len(filters) == 6
    assert all(p.ndim == 4 for p in filters)
    names = {id(p): n for n, p in m.named_parameters()}
    assert {names[id(p)] for p in rest} == {"whiten.bias", "head.weight"} | {
        n for n, _ in m.named_parameters() if n.startswith("groups.") and n.endswith(".bias")
    }
    # every trainable parameter in exactly one of the two; the frozen whitening filters in neither
    trainable = [id(p) for p in m.parameters() if p.requires_grad]
    assert sorted(map(id, filters + rest)) == sorted(trainable)
    assert id(m.whiten.weight) not in map(id, filters + rest)


def test_a_trainable_stem_is_a_filter_too_and_linear_layers_are_not():
    m = airbench(whiten=False)
    assert m.whiten.weight is muon_params(m)[0]
    tut = build_model("tutorial_cnn", 3, 32, 10)
    names = {id(p): n for n, p in tut.named_parameters()}
    assert [names[id(p)] for p in muon_params(tut)] == ["conv1.weight", "conv2.weight", "conv3.weight"]


def test_companion_groups_keep_the_bias_scale_and_leave_out_the_filters():
    m = airbench()
    opt = build_optimizer(m, optim_cfg(weight_decay=1e-3, muon_lr=0.24), lr=2.0, fused=False)
    assert isinstance(opt, MuonWithCompanion)
    muon, sgd = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(sgd, torch.optim.SGD)
    in_sgd = {id(p) for g in sgd.param_groups for p in g["params"]}
    assert not in_sgd & {id(p) for p in muon_params(m)}
    shifts = [g for g in sgd.param_groups if g["lr_scale"] == 64.0]
    assert len(shifts) == 1 and len(shifts[0]["params"]) == 6  # the six BatchNorm shifts
    assert shifts[0]["weight_decay"] == pytest.approx(1e-3 / 64)
    assert sgd.param_groups[0]["momentum"] == 0.85 and sgd.param_groups[0]["nesterov"]
    # Muon's lr follows the schedule: the loop sets lr × lr_scale on every group, Muon's included
    for g in opt.param_groups:
        g["lr"] = 0.5 * 2.0 * g["lr_scale"]  # half-way through a linear decay from base lr 2.0
    assert muon.param_groups[0]["lr"] == pytest.approx(0.12) and shifts[0]["lr"] == pytest.approx(64.0)
    adam = build_optimizer(m, optim_cfg(muon_companion="adamw", momentum=0.0, nesterov=False), 1e-3, False)
    assert isinstance(adam.optimizers[1], torch.optim.AdamW)


def test_a_model_without_conv_filters_is_a_one_line_error():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 64), nn.ReLU(), nn.Linear(64, 10))
    with pytest.raises(UserError) as e:
        build_optimizer(mlp, optim_cfg(), 0.1, False)
    assert "\n" not in str(e.value) and "optim.name=muon" in str(e.value) and "Sequential" in str(e.value)


# -- FilterMuon is torch.optim.Muon on the (out, in·k·k) matrix --------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
def test_filter_muon_steps_as_torch_muon_on_the_flattened_filter(channels_last):
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    if channels_last:
        w = w.contiguous(memory_format=torch.channels_last)
    as_matrix = (lambda t: t.permute(0, 2, 3, 1).reshape(16, -1)) if channels_last else (lambda t: t.reshape(16, -1))
    p4 = nn.Parameter(w.clone())
    p2 = nn.Parameter(as_matrix(w).clone())
    hyper = {"lr": 0.1, "momentum": 0.6, "nesterov": True, "weight_decay": 0.01, "ns_steps": 3}
    ours, theirs = FilterMuon([p4], **hyper), torch.optim.Muon([p2], **hyper)
    for _ in range(4):
        g = torch.randn(16, 8, 3, 3)
        p4.grad = g.contiguous(memory_format=torch.channels_last) if channels_last else g.clone()
        p2.grad = as_matrix(g).clone()
        ours.step()
        theirs.step()
    assert torch.equal(as_matrix(p4.detach()), p2.detach())
    assert p4.is_contiguous(memory_format=torch.channels_last) == channels_last  # updated in place
    buf4 = ours.state[p4]["momentum_buffer"]
    assert buf4.shape == p4.shape and torch.equal(as_matrix(buf4), theirs.state[p2]["momentum_buffer"])
    # the update is not the gradient's direction: it was orthogonalised
    assert not torch.allclose(as_matrix(p4.detach()) - as_matrix(w), -0.1 * as_matrix(g), atol=1e-3)


def test_normalize_weights_pins_each_filter_norm_before_the_step():
    torch.manual_seed(1)
    p = nn.Parameter(torch.randn(16, 8, 3, 3) * 5)
    opt = FilterMuon([p], lr=0.0, momentum=0.6, weight_decay=0.0, normalize_weights=True)
    p.grad = torch.randn_like(p)
    opt.step()  # lr 0: only the normalisation acts
    assert p.norm().item() == pytest.approx(math.sqrt(16), rel=1e-5)
    off = nn.Parameter(torch.randn(16, 8, 3, 3) * 5)
    before = off.detach().clone()
    FilterMuon([off], lr=0.0, momentum=0.6, weight_decay=0.0)
    assert torch.equal(off.detach(), before)


def test_torchs_argument_checks_still_apply():
    with pytest.raises(ValueError, match="momentum"):
        FilterMuon([nn.Parameter(torch.zeros(4, 4, 3, 3))], momentum=-1.0)
    with pytest.raises(ValueError, match="matrices and filters"):
        FilterMuon([nn.Parameter(torch.zeros(4))])


def test_composite_state_dict_round_trips():
    m = airbench()
    opt = build_optimizer(m, optim_cfg(muon_lr=0.1), 0.5, False)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
    state = opt.state_dict()
    other = build_optimizer(m, optim_cfg(muon_lr=0.1), 0.5, False)
    other.load_state_dict(state)
    a, b = opt.optimizers[0].state_dict()["state"], other.optimizers[0].state_dict()["state"]
    assert a.keys() == b.keys() and len(a) == 6
    assert all(torch.equal(a[k]["momentum_buffer"], b[k]["momentum_buffer"]) for k in a)


# -- through the loop: exact resume after SIGUSR1 mid-epoch, 1 and 2 processes ---------------------------------

GUARD_S = 300  # a hang guard: each run takes 10-60 s


def muon_args(data_root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "--preset=airbench",
        *MEDIUM,
        f"--data.root={data_root}",
        "--model.width=8",
        "--optim.name=muon",
        "--optim.muon_lr=0.2",
        "--optim.muon_momentum=0.6",
        "--optim.muon_ns_steps=3",
        "--optim.muon_normalize_weights=true",
        "--optim.lookahead=false",
        "--train.epochs=2",
        "--train.global_batch_size=32",
        "--train.checkpoint_every_steps=10",
        "--train.mixed_precision=no",
        "--seed=5",
        "--run.progress=false",
        "--tracking.backend=none",
        f"--run.dir={run_dir}",
        *extra,
    ]


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def stop_mid_epoch(cmd: list[str], run_dir: Path, log: Path) -> int:
    """Start `cmd`, SIGUSR1 it and every process under it once the step-10 state exists (as SLURM signals
    every process of a step), return the exit status (all within GUARD_S). Like slurm/launch.sh, the
    launcher ignores USR1 (its default action would kill it); the training processes install their handler."""

    def ignore_usr1():
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    with open(log, "w+") as out:
        p = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=base_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=ignore_usr1,
        )
        try:
            t0 = time.monotonic()
            while not (run_dir / "last" / "optimizer_1.bin").exists() and p.poll() is None:
                assert time.monotonic() - t0 < GUARD_S, "no state saved in time"
                time.sleep(0.02)
            assert p.poll() is None, log.read_text()[-3000:]
            for pid in process_tree(p.pid):
                os.kill(pid, signal.SIGUSR1)
            return p.wait(timeout=GUARD_S)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def assert_same_run(full: Path, cut: Path) -> None:
    from safetensors.torch import load_file

    a, b = load_file(full / "last" / "model.safetensors"), load_file(cut / "last" / "model.safetensors")
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    for name in ("optimizer.bin", "optimizer_1.bin"):  # Muon's momentum; the companion SGD's
        oa, ob = (torch.load(d / "last" / name, weights_only=False) for d in (full, cut))
        assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
        assert oa["state"], name
        assert all(torch.equal(oa["state"][k][s], ob["state"][k][s]) for k in oa["state"] for s in oa["state"][k])
    muon_state = torch.load(full / "last" / "optimizer.bin", weights_only=False)
    assert {tuple(s["momentum_buffer"].shape)[2:] for s in muon_state["state"].values()} == {(3, 3)}

    def rows(d):
        return without_timing(read_metrics(d / "metrics.jsonl"))

    assert rows(full) == rows(cut) and len(rows(full)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_muon_run_stopped_by_sigusr1_mid_epoch_resumes_bit_exact(tmp_path, data_root_medium, processes):
    launch = accelerate_cmd() if processes == 2 else [sys.executable]
    full, cut = tmp_path / "full", tmp_path / "cut"

    def cmd(run_dir, *extra):
        return train_cmd(*muon_args(data_root_medium, run_dir, *extra), launch=launch)

    p = run(cmd(full), timeout=GUARD_S, check=True)
    assert f"world size {processes} on cpu" in p.stdout, p.stdout[-2000:]
    code = stop_mid_epoch(cmd(cut, "--train.resume=auto"), cut, tmp_path / "leg1.log")
    log = (tmp_path / "leg1.log").read_text()
    assert code == 0, log[-3000:]
    assert "stop requested: full state saved" in log, log[-3000:]
    state = torch.load(cut / "last" / "custom_checkpoint_0.pkl", weights_only=False)
    assert state["epoch"] == 0 and 0 < state["step_in_epoch"] < 62, state  # 2,000 images / 32: 62 steps
    p = run(cmd(cut, "--train.resume=auto"), timeout=GUARD_S, check=True)
    assert f"at epoch 1, step {state['step']}" in p.stdout
    assert_same_run(full, cut)


def test_airbench_muon_preset_is_airbench94_muons_recipe_within_the_records_compute():
    from cifar_dist.config import resolve
    from cifar_dist.models.flops import pflops, train_flops_per_image

    cfg = resolve("airbench_muon", None, ["--data.name=imagefolder"])
    o, t = cfg.optim, cfg.train
    assert (o.name, o.muon_companion, o.muon_lr, o.muon_momentum, o.muon_ns_steps) == ("muon", "sgd", 0.24, 0.6, 3)
    assert o.muon_normalize_weights and not o.lookahead and o.nesterov and o.momentum == 0.85
    assert o.bias_lr_scale == 64.0 and o.schedule == "linear" and o.warmup_epochs == 0
    assert (t.global_batch_size, t.epochs, cfg.data.val_fraction, cfg.model.width) == (2000, 8, 0.0, 64)
    net = build_model("airbench", 3, 32, 10, width=64)
    net.whiten.weight.requires_grad_(False)
    compute = pflops(train_flops_per_image(net, 3, 32), t.epochs * (50_000 // 2000) * 2000)
    assert 0.27 < compute <= 0.29  # airbench94_muon's 0.29 PFLOP
    assert resolve("airbench").optim.name == "sgd"  # the SGD preset is unchanged


def test_train_py_refuses_muon_for_a_model_without_conv_filters_in_one_line(tmp_path, data_root):
    from helpers import SMALL

    (tmp_path / "mlp_models.py").write_text(
        "import torch\n"
        "def mlp(num_classes):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, num_classes))\n"
    )
    env = base_env(PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}")
    run_dir = tmp_path / "run"
    p = run(
        train_cmd(*SMALL, f"--data.root={data_root}", "--model.name=mlp_models:mlp", "--optim.name=muon",
                  "--tracking.backend=none", f"--run.dir={run_dir}", "--train.epochs=1"),
        env=env,
        timeout=GUARD_S,
    )  # fmt: skip
    assert p.returncode != 0
    errors = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert len(errors) == 1 and "optim.name=muon trains convolution filters" in errors[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr
