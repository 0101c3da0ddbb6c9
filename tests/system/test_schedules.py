"""Learning-rate schedules: the formulas of cifar_dist/optim/schedules.py's docstring, and the deprecated
`onecycle` name (it runs as linear_to_1pct and says so in one warning line)."""

import math

import pytest
from helpers import SMALL, run, train_cmd

from cifar_dist.config import resolve
from cifar_dist.errors import UserError
from cifar_dist.optim.schedules import lr_at

T, W, LR = 110, 10, 0.4  # total steps, warm-up steps, base lr


@pytest.mark.parametrize("schedule", ["linear", "linear_to_1pct"])
def test_warm_up_is_linear_from_lr_over_w_to_lr(schedule):
    assert [lr_at(s, T, LR, schedule, W) for s in (0, 4, 9)] == pytest.approx([LR / W, LR * 5 / W, LR])


def test_decay_formulas():
    # p = (s - W) / (T - W): 0 at the first step after warm-up, 1 at step T.
    for s, p in [(10, 0.0), (35, 0.25), (60, 0.5), (110, 1.0), (500, 1.0)]:
        assert lr_at(s, T, LR, "linear", W) == pytest.approx(LR * (1 - p))
        assert lr_at(s, T, LR, "linear_to_1pct", W) == pytest.approx(LR * (1 - 0.99 * p))
    assert lr_at(T, T, LR, "linear_to_1pct", W) == pytest.approx(LR / 100)
    assert {lr_at(s, T, LR, "constant", W) for s in range(T)} == {LR}  # no warm-up either


def test_cosine_warms_up_then_follows_half_a_cosine_to_zero():
    assert [lr_at(s, T, LR, "cosine", W) for s in (0, 4, 9)] == pytest.approx([LR / W, LR * 5 / W, LR])
    for s, p in [(10, 0.0), (35, 0.25), (60, 0.5), (85, 0.75), (110, 1.0), (500, 1.0)]:
        assert lr_at(s, T, LR, "cosine", W) == pytest.approx(LR * (1 + math.cos(math.pi * p)) / 2)
    assert lr_at(60, T, LR, "cosine", W) == pytest.approx(LR / 2)
    assert lr_at(T, T, LR, "cosine", W) == pytest.approx(0.0, abs=1e-12)
    assert resolve(overrides=["--optim.schedule=cosine"]).optim.schedule == "cosine"


def test_onecycle_is_a_deprecated_alias_of_linear_to_1pct():
    assert [lr_at(s, T, LR, "onecycle", W) for s in range(T + 1)] == [
        lr_at(s, T, LR, "linear_to_1pct", W) for s in range(T + 1)
    ]
    assert resolve("tutorial_fast").optim.schedule == "linear_to_1pct"
    assert resolve(overrides=["--optim.schedule=onecycle"]).optim.schedule == "onecycle"  # accepted as given
    with pytest.raises(UserError, match="choose one of: constant, linear, linear_to_1pct, cosine$"):
        resolve(overrides=["--optim.schedule=cosin"])


@pytest.mark.slow
def test_onecycle_warns_once_per_job(tmp_path, data_root):
    """A real 2-step run asked for `onecycle`: it trains, and stderr holds the one warning line once."""
    p = run(
        train_cmd(
            *SMALL,
            f"--data.root={data_root}",
            "--optim.schedule=onecycle",
            "--train.epochs=1",
            "--train.max_steps=2",
            f"--run.dir={tmp_path / 'r'}",
            "--run.progress=false",
            "--tracking.backend=none",
        ),
        check=True,
    )
    warned = [line for line in p.stderr.splitlines() if "onecycle" in line]
    assert warned == [
        (
            "warning: optim.schedule=onecycle is deprecated (it is a linear warm-up and a linear decay "
            "to lr/100, not PyTorch's OneCycleLR); it runs as linear_to_1pct: use "
            "--optim.schedule=linear_to_1pct"
        )
    ], p.stderr
    assert (tmp_path / "r" / "best.pt").exists()
