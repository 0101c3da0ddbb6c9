"""benchmarks/time_to_accuracy.py as a smoke test on a tiny synthetic set: its last line's format and
that its numbers agree with its per-epoch lines (not its speed, which only the benchmark measures)."""

import re
import sys

import pytest
from helpers import REPO, SMALL, LineReader, run

LINE = re.compile(
    r"^target=(?P<target>[0-9.]+) tutorial_seconds=(?P<t>>?[0-9.]+) ours_seconds=(?P<o>>?[0-9.]+) "
    r"speedup=(?P<x>[<>]?[0-9.]+|nan)$"
)
EPOCH = re.compile(r"^(tutorial|ours) epoch (\d+): test accuracy ([0-9.]+), training ([0-9.]+) s so far$")


def _bench(data_root, *args):
    p = run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "time_to_accuracy.py"),
            *SMALL,
            f"--data.root={data_root}",
            "--train.epochs=2",
            "--tutorial-max-epochs=2",
            *args,
        ],
        timeout=300,
        check=True,
    )
    lines = p.stdout.strip().splitlines()
    epochs = {"tutorial": [], "ours": []}
    for line in lines:
        m = EPOCH.match(line)
        if m:
            epochs[m.group(1)].append((int(m.group(2)), float(m.group(3)), float(m.group(4))))
    m = LINE.match(lines[-1])
    assert m, lines[-1]
    return m, epochs


@pytest.mark.slow
def test_each_side_stops_at_the_first_epoch_that_reaches_the_target(data_root):
    m, epochs = _bench(data_root, "--target=0")
    # Target 0: both reach it after one epoch and stop there, although both were given 2 (ours through the
    # trainer's after_epoch hook).
    assert [e[0] for e in epochs["tutorial"]] == [1] and [e[0] for e in epochs["ours"]] == [1]
    t, o = float(m["t"]), float(m["o"])
    assert t == pytest.approx(epochs["tutorial"][0][2], abs=0.051) and o == pytest.approx(
        epochs["ours"][0][2], abs=0.051
    )
    assert t > 0 and o > 0
    # The ratio is of the unrounded seconds; the printed ones are rounded to 0.1 s.
    assert (t - 0.05) / (o + 0.05) - 0.005 <= float(m["x"]) <= (t + 0.05) / max(o - 0.05, 1e-9) + 0.005
    assert float(m["target"]) == 0


@pytest.mark.slow
def test_a_target_never_reached_prints_lower_bounds(data_root):
    m, epochs = _bench(data_root, "--target=1.01")
    assert [e[0] for e in epochs["tutorial"]] == [1, 2] and [e[0] for e in epochs["ours"]] == [1, 2]
    assert m["t"].startswith(">") and m["o"].startswith(">") and m["x"] == "nan"
    # Each side's seconds are its whole schedule's training time: the last cumulative figure.
    assert float(m["t"][1:]) == pytest.approx(epochs["tutorial"][-1][2], abs=0.051)
    assert float(m["o"][1:]) == pytest.approx(epochs["ours"][-1][2], abs=0.051)
    assert all(0 <= acc <= 1 for side in epochs.values() for _, acc, _ in side)


def test_bounds_when_only_one_side_reaches_the_target():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from time_to_accuracy import format_line

    reached = {"reached": True, "seconds": 10.0}
    missed = {"reached": False, "seconds": 100.0}
    assert format_line(0.74, missed, reached) == "target=0.74 tutorial_seconds=>100.0 ours_seconds=10.0 speedup=>10.00"
    assert format_line(0.74, reached, missed) == "target=0.74 tutorial_seconds=10.0 ours_seconds=>100.0 speedup=<0.10"
    assert (
        format_line(0.74, {"reached": True, "seconds": 560.0}, {"reached": True, "seconds": 20.0})
        == "target=0.74 tutorial_seconds=560.0 ours_seconds=20.0 speedup=28.00"
    )


def test_the_baseline_is_the_tutorials_net_and_the_same_function_as_tutorial_cnn():
    """The baseline runs the tutorial's forward as written (ReLU then pool, nn.Conv2d's bias); TutorialCNN
    computes the same function in a cheaper order, from the same initial weights for a seed."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from time_to_accuracy import TutorialNet

    from cifar_dist.models import TutorialCNN

    for c, s in ((3, 32), (1, 28)):
        torch.manual_seed(0)
        tutorial = TutorialNet(c, s, 10, dropout=0.3).eval()
        torch.manual_seed(0)
        ours = TutorialCNN(c, s, 10, dropout=0.3).eval()
        assert all(torch.equal(a, b) for a, b in zip(tutorial.state_dict().values(), ours.state_dict().values()))
        x = torch.randn(4, c, s, s)
        assert torch.allclose(tutorial(x), ours(x), rtol=1e-5, atol=1e-6)
        assert type(tutorial).forward is not TutorialCNN.forward


@pytest.mark.slow
def test_sigterm_stops_the_benchmark_after_our_run(data_root):
    """train() puts the previous signal handlers back when it returns: the tutorial phase that follows
    in the same process dies on SIGTERM (before, the trainer's stop handler swallowed it for good)."""
    import signal
    import subprocess

    from helpers import base_env

    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "time_to_accuracy.py"),
        *SMALL,
        f"--data.root={data_root}",
        "--train.epochs=1",
        "--target=1.01",  # never reached: the tutorial would run all its epochs
        "--tutorial-max-epochs=500",
    ]
    p = subprocess.Popen(cmd, cwd=REPO, env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        LineReader(p).wait_for(lambda line: line.startswith("tutorial epoch 1:"), timeout=300)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == -signal.SIGTERM
    finally:
        p.kill()
        p.wait()
