"""Precision from the launcher: train.mixed_precision=launcher (the default) takes what `accelerate
launch` was given (its --config_file's mixed_precision, --mixed_precision, `accelerate config`);
an explicit config value wins; the W&B job info and the start line say which precision ran and why.
fp16 on the CPU is refused in one line however it was asked for."""

import sys

import pytest
from helpers import SMALL, read_metrics, run, train_cmd
from test_wandb import wandb_env

from cifar_dist.wandb_records import read_run

pytestmark = pytest.mark.slow  # every test here starts training processes

FAST = [
    *SMALL,
    "--preset",
    "tutorial_fast",
    "--run.progress=false",
    "--train.per_device_batch_size=32",
    "--eval.per_device_batch_size=128",
]


def launcher(tmp_path, precision: str) -> list[str]:
    """`accelerate launch --config_file X.yaml`: one CPU process, mixed_precision as given."""
    yaml = tmp_path / f"{precision}.yaml"
    yaml.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nuse_cpu: true\nnum_machines: 1\n"
        f"num_processes: 1\nmixed_precision: '{precision}'\ndynamo_config: {{}}\n"
    )
    return [sys.executable, "-m", "accelerate.commands.launch", "-q", "--config_file", str(yaml)]


def test_the_launchers_bf16_is_used_and_recorded(tmp_path, data_root):
    """tutorial_fast says auto; --train.mixed_precision=launcher hands the choice to the YAML."""
    run_dir = tmp_path / "r"
    p = run(
        train_cmd(
            *FAST,
            f"--data.root={data_root}",
            "--train.mixed_precision=launcher",
            "--train.epochs=3",
            f"--run.dir={run_dir}",
            "--tracking.backend=wandb",
            launch=launcher(tmp_path, "bf16"),
        ),
        env=wandb_env(tmp_path / "home", WANDB_MODE="offline"),
        timeout=400,
        check=True,
    )
    assert "mixed precision bf16 (the launcher (ACCELERATE_MIXED_PRECISION=bf16))" in p.stdout, p.stdout[-2000:]
    job = read_run(run_dir).config["job"]
    assert job["mixed_precision"] == "bf16"
    assert job["mixed_precision_source"] == "the launcher (ACCELERATE_MIXED_PRECISION=bf16)"
    losses = [r["train_loss"] for r in read_metrics(run_dir / "metrics.jsonl")]
    assert losses[-1] < losses[0], losses


def test_an_explicit_config_value_beats_the_launcher(tmp_path, data_root):
    run_dir = tmp_path / "r"
    p = run(
        train_cmd(
            *FAST,
            f"--data.root={data_root}",
            "--train.mixed_precision=no",
            "--train.epochs=1",
            "--train.max_steps=2",
            f"--run.dir={run_dir}",
            "--tracking.backend=wandb",
            launch=launcher(tmp_path, "bf16"),
        ),
        env=wandb_env(tmp_path / "home", WANDB_MODE="offline"),
        check=True,
    )
    why = "train.mixed_precision=no; the launcher's bf16 is overridden"
    assert f"mixed precision no ({why})" in p.stdout
    job = read_run(run_dir).config["job"]
    assert (job["mixed_precision"], job["mixed_precision_source"]) == ("no", why)


def test_without_a_launcher_the_default_is_fp32(tmp_path, data_root):
    p = run(
        train_cmd(
            *SMALL,
            f"--data.root={data_root}",
            "--train.epochs=1",
            "--train.max_steps=1",
            f"--run.dir={tmp_path / 'r'}",
            "--run.progress=false",
            "--tracking.backend=none",
        ),
        check=True,
    )
    assert "mixed precision no (no launcher setting, so no)" in p.stdout


def test_fp16_on_the_cpu_is_refused_however_asked(tmp_path, data_root):
    asked = {
        "config": train_cmd(
            *FAST, f"--data.root={data_root}", "--train.mixed_precision=fp16", f"--run.dir={tmp_path / 'config'}"
        ),
        "launcher YAML": train_cmd(
            *FAST,
            f"--data.root={data_root}",
            "--train.mixed_precision=launcher",
            f"--run.dir={tmp_path / 'yaml'}",
            launch=launcher(tmp_path, "fp16"),
        ),
        "launcher flag": train_cmd(
            *SMALL,
            f"--data.root={data_root}",
            f"--run.dir={tmp_path / 'flag'}",
            launch=[*launcher(tmp_path, "no"), "--mixed_precision", "fp16"],
        ),
    }
    for how, cmd in asked.items():
        p = run(cmd, timeout=120)
        assert p.returncode != 0, how
        errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "fp16 needs a CUDA GPU" in errors[0], (how, p.stderr[-2000:])
        assert "Traceback" not in p.stderr, (how, p.stderr[-2000:])
    assert not any((tmp_path / d).exists() for d in ("config", "yaml", "flag"))
