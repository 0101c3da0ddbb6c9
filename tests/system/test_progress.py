"""Progress that reads well anywhere (cifar_dist/progress.py): plain in-epoch lines when stdout is
a file (a SLURM log), rich bars for training, evaluation (with TTA) and figures on a terminal."""

import re
import subprocess

import pytest
from helpers import REPO, SMALL, base_env, eval_cmd, on_a_terminal, run, train_cmd

pytestmark = pytest.mark.slow  # every test here starts training processes

LINE = re.compile(r"^epoch (\d+)/2 step (\d+)/25 \((\d+)%\) loss (\d+\.\d{4}) (\d+|nan) img/s ETA \d+:\d\d:\d\d$")


def test_training_into_a_file_prints_plain_lines_through_each_epoch(tmp_path, data_root):
    """400 training images at batch 16: 25 steps per epoch, a line every round(2.5) = 2 steps and at the end."""
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        p = subprocess.run(
            train_cmd(
                *SMALL,
                f"--data.root={data_root}",
                "--train.epochs=2",
                f"--run.dir={tmp_path / 'r'}",
                "--tracking.backend=none",
            ),
            cwd=REPO,
            env=base_env(),
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            check=False,
        )
    assert p.returncode == 0, p.stderr[-3000:]
    text = log.read_text()
    found = [LINE.match(line) for line in text.splitlines() if line.startswith("epoch ")]
    assert all(found), text[-3000:]
    steps = [(int(m[1]), int(m[2])) for m in found]
    assert steps == [(e, s) for e in (1, 2) for s in [*range(2, 25, 2), 25]], steps
    assert all(int(m[3]) == 100 * int(m[2]) // 25 for m in found)
    # The line at 100% shows the epoch's mean loss, as the tutorial's per-epoch line does (rank 0 = all data).
    epoch_losses = [float(x) for x in re.findall(r"Training Loss: (\d+\.\d+)", text)]
    assert [float(m[4]) for m in found if m[2] == "25"] == [round(x, 4) for x in epoch_losses]
    assert "\x1b[" not in text  # no terminal control codes in a log file


def _on_a_terminal(cmd, timeout=300) -> str:
    return on_a_terminal(cmd, columns=120, timeout=timeout)


def test_on_a_terminal_training_evaluation_and_figures_show_bars(tmp_path, data_root):
    run_dir = tmp_path / "r"
    shown = _on_a_terminal(
        train_cmd(
            *SMALL,
            f"--data.root={data_root}",
            "--train.epochs=1",
            "--eval.tta=true",
            f"--run.dir={run_dir}",
            "--tracking.backend=none",
        )
    )
    assert "epoch 1/1 loss" in shown and "25/25" in shown  # the training bar
    assert "evaluating with flip TTA" in shown  # validation and test passes
    assert not re.search(r"step \d+/25 \(", shown)  # no plain lines on a terminal
    shown = _on_a_terminal(eval_cmd("--checkpoint", str(run_dir), "--plots", str(tmp_path / "figs")))
    assert "evaluating with flip TTA" in shown and "drawing figures" in shown and "6/6" in shown
    assert (tmp_path / "figs" / "curves.png").exists()
    # The same evaluation into a pipe shows no bar (its report is all there is).
    p = run(eval_cmd("--checkpoint", str(run_dir)), check=True)
    assert "evaluating" not in p.stdout + p.stderr
