"""End-to-end runs through the real launchers: 2-process CPU DDP, exact evaluation across world
sizes, resume, the offline CIFAR-10 error and the collapsed-launch trap."""

import json
import re
import sys

import pytest
import torch
from helpers import REPO, SMALL, accelerate_cmd, base_env, eval_cmd, read_metrics, run, train_cmd
from torch.utils.data import DataLoader


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_train_shards_are_disjoint_and_cover_the_epoch(world):
    """Accelerate's own sharding (what prepare() does on each rank), simulated for every rank."""
    from accelerate.data_loader import prepare_data_loader

    n, batch = 103, 4
    dataset = list(range(n))
    shards = []
    for rank in range(world):
        dl = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)
        dl = prepare_data_loader(
            dl, num_processes=world, process_index=rank, put_on_device=False, use_seedable_sampler=True, data_seed=0
        )
        dl.set_epoch(3)
        shards.append([int(i) for b in dl for i in b])
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)), "a sample was given to two ranks (or twice)"
    assert len(set(len(s) for s in shards)) == 1, "ranks must take the same number of steps"
    assert n - len(flat) < world * batch  # only the tail that cannot fill a global batch sits out
    # the order is a function of (seed, epoch): the same rank gets the same shard again ...
    dl = prepare_data_loader(
        DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True),
        num_processes=world,
        process_index=0,
        put_on_device=False,
        use_seedable_sampler=True,
        data_seed=0,
    )
    dl.set_epoch(3)
    assert [int(i) for b in dl for i in b] == shards[0]
    dl.set_epoch(4)  # ... and a different one next epoch
    assert [int(i) for b in dl for i in b] != shards[0]


@pytest.mark.slow
def test_ddp_two_processes_one_best_checkpoint(tmp_path, data_root):
    run_dir = tmp_path / "ddp"
    p = run(
        train_cmd(
            *SMALL,
            f"--data.root={data_root}",
            "--train.epochs=2",
            f"--run.dir={run_dir}",
            "--run.progress=false",
            launch=accelerate_cmd(),
        ),
        check=True,
    )
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["world_size"] == 2 for r in rows)
    # 400 training images, batch 16 per rank, 2 ranks: 12 full global batches of 32 = 384 per epoch
    assert all(r["train_samples"] == 384 for r in rows)
    assert rows[0]["step"] == 12  # steps per rank: half the single-process count
    assert sorted(x.name for x in run_dir.iterdir() if x.suffix == ".pt") == ["best.pt"]
    assert sorted(x.name for x in (run_dir / "last").glob("random_states_*.pkl")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    assert p.stdout.count("Validation loss decreased") >= 1
    assert p.stdout.count("model tutorial_cnn: 541,094 parameters") == 1  # printed by the main process only
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    assert ckpt["config"]["data"]["name"] == "synthetic" and ckpt["world_size"] == 2
    assert ckpt["classes"][2] == "bird" and ckpt["epoch"] in (1, 2)
    assert ckpt["val_metrics"]["val_loss"] == min(r["val_loss"] for r in rows)
    test = json.loads((run_dir / "test_metrics.json").read_text())
    assert test["num_samples"] == 101


RELEASE_PROBE = """
import gc, sys
import torch
from cifar_dist.cli.main import _train, run_cli
code = run_cli(_train, sys.argv[1:])
gc.collect()  # the run's reference cycles; what is left after this would live until interpreter exit
from accelerate import Accelerator
alive = [type(o).__name__ for o in gc.get_objects()
         if isinstance(o, (Accelerator, torch.nn.Module, torch.optim.Optimizer, torch.utils.data.DataLoader))]
group = "up" if torch.distributed.is_initialized() else "down"
print(f"after run_cli: exit {code}, process group {group}, still alive: {sorted(set(alive))}", flush=True)
"""


@pytest.mark.slow
def test_ddp_run_frees_its_process_group_before_interpreter_exit(tmp_path, data_root):
    """What train.py's process holds when run_cli returns, on each of 2 ranks: no process group and
    no accelerator, model, optimizer or loader left for interpreter shutdown to destroy (the stop
    signal handler used to keep the accelerator, and everything it prepared, alive until then)."""
    probe = tmp_path / "probe.py"
    probe.write_text(RELEASE_PROBE)
    p = run(
        [
            *accelerate_cmd(),
            str(probe),
            *SMALL,
            f"--data.root={data_root}",
            "--train.epochs=1",
            f"--run.dir={tmp_path / 'run'}",
            "--run.progress=false",
        ],
        check=True,
    )
    assert p.stdout.count("after run_cli: exit 0, process group down, still alive: []") == 2, p.stdout[-2000:]


EXIT_PROBE = """
import atexit, sys
from cifar_dist.cli.main import exit_process
atexit.register(lambda: print("atexit handler ran", flush=True))
print("unflushed line", end="")
exit_process(None if sys.argv[1] == "none" else int(sys.argv[1]) if sys.argv[1].isdigit() else sys.argv[1])
print("not reached")
"""


@pytest.mark.slow
@pytest.mark.parametrize("world", ["1", "2"])
@pytest.mark.parametrize("code, status", [("none", 0), ("0", 0), ("143", 143), ("a message", 1)])
def test_exit_process_keeps_exit_codes_output_and_atexit(tmp_path, world, code, status):
    """A rank of a multi-process job leaves through os._exit (no interpreter finalization, see
    exit_process); it must still exit like sys.exit: the same status, atexit handlers run (wandb's
    teardown is one), buffered output written, sys.exit's message printed."""
    probe = tmp_path / "probe.py"
    probe.write_text(EXIT_PROBE)
    p = run([sys.executable, str(probe), code], env=base_env(WORLD_SIZE=world))
    assert p.returncode == status, p.stderr
    assert p.stdout.startswith("unflushed line") and "atexit handler ran" in p.stdout and "not reached" not in p.stdout
    assert ("a message" in p.stderr) == (code == "a message")


@pytest.mark.slow
def test_evaluate_one_and_two_processes_identical(tmp_path, trained_run):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    # 101 test images, batch 16: 7 batches, 4 on rank 0 and 3 on rank 1, the last one of 5 images
    p1 = run(eval_cmd("--checkpoint", str(trained_run), "--json", str(a), "--batch-size", "16"), check=True)
    run(
        eval_cmd("--checkpoint", str(trained_run), "--json", str(b), "--batch-size", "16", launch=accelerate_cmd()),
        check=True,
    )
    assert a.read_bytes() == b.read_bytes()
    result = json.loads(a.read_text())
    assert result["num_samples"] == 101
    assert sum(v["total"] for v in result["per_class"].values()) == 101
    assert sum(map(sum, result["confusion"])) == 101
    assert result["accuracy"] == sum(v["correct"] for v in result["per_class"].values()) / 101
    # one report, the tutorial's lines, whose counts are the JSON's (and test_metrics.json's)
    report = re.findall(r"^Test Accuracy of\s+(\w+):\s+(\d+)% \(\s*(\d+)/\s*(\d+)\)$", p1.stdout, re.M)
    assert [(c, int(n), int(t)) for c, _, n, t in report] == [
        (c, v["correct"], v["total"]) for c, v in result["per_class"].items() if v["total"]
    ], p1.stdout
    assert all(int(pct) == 100 * int(n) // int(t) for _, pct, n, t in report)  # the tutorial's rounding: down
    correct = sum(v["correct"] for v in result["per_class"].values())
    assert f"Test Accuracy (Overall): {100 * correct // 101}% ({correct}/101)" in p1.stdout
    assert p1.stdout.count("%") == len(report) + 1, p1.stdout  # no second table
    # the training run's own test evaluation (batch 500) gives the same numbers
    assert json.loads((trained_run / "test_metrics.json").read_text())["accuracy"] == result["accuracy"]
    v = tmp_path / "v.json"
    run(eval_cmd("--checkpoint", str(trained_run / "best.pt"), "--split", "val", "--json", str(v)), check=True)
    assert json.loads(v.read_text())["num_samples"] == 100


@pytest.mark.slow
def test_final_fit_without_validation_keeps_the_newest_weights(tmp_path, data_root):
    """data.val_fraction=0 (a final fit on every training image): no validation
    pass, best.pt holds the last epoch's weights (an empty split's loss of 0 must not freeze it at
    epoch 1), and evaluate.py refuses --split val in one line instead of scoring 0 images."""
    run_dir = tmp_path / "all"
    p = run(
        train_cmd(
            *SMALL,
            f"--data.root={data_root}",
            "--data.val_fraction=0",
            "--train.epochs=2",
            f"--run.dir={run_dir}",
            "--run.progress=false",
        ),
        check=True,
    )
    assert "500 train / 0 val / 101 test" in p.stdout
    assert p.stdout.count("No validation split (data.val_fraction=0): saving the epoch") == 2
    assert "Validation Loss" not in p.stdout and "Validation loss decreased" not in p.stdout
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2] and not any("val_loss" in r for r in rows)
    assert rows[0]["train_samples"] == 496  # 500 images, batch 16: 31 full batches (the loader drops the tail)
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["val_metrics"] == {}
    from safetensors.torch import load_file

    last = load_file(run_dir / "last" / "model.safetensors")
    assert all(torch.equal(ckpt["model_state"][k], last[k]) for k in last)
    test = json.loads((run_dir / "test_metrics.json").read_text())  # strict JSON: no Infinity for the loss
    assert test["best_epoch"] == 2 and test["best_val_loss"] is None and test["num_samples"] == 101
    out = tmp_path / "t.json"
    run(eval_cmd("--checkpoint", str(run_dir), "--json", str(out)), check=True)
    assert json.loads(out.read_text())["accuracy"] == test["accuracy"]
    p = run(eval_cmd("--checkpoint", str(run_dir), "--split", "val"))
    assert p.returncode == 2 and "no validation split to evaluate; use --split test" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_flip_tta_on_a_model_trained_without_flips_warns_once(tmp_path, data_root, trained_run):
    """eval.tta averages each image with its mirror; on a model that never saw a mirrored image that
    lowers accuracy, so training, evaluate.py and --print-config each say so in one warning line (once,
    also from 2 processes), and a preset that trains with flips says nothing."""
    warning = "warning: eval.tta=true averages each image's logits with its mirror image's, but data.augment=false"
    p = run(train_cmd("--preset", "tutorial_fast", "--data.augment=false", "--print-config"), check=True)
    assert p.stderr.count(warning) == 1
    assert "warning" not in run(train_cmd("--preset", "fast", "--print-config"), check=True).stderr
    p = run(
        train_cmd(
            *SMALL,
            f"--data.root={data_root}",
            "--eval.tta=true",
            "--train.epochs=1",
            "--train.max_steps=2",
            f"--run.dir={tmp_path / 't'}",
            "--run.progress=false",
        ),
        check=True,
    )
    assert p.stderr.count(warning) == 1
    p = run(eval_cmd("--checkpoint", str(trained_run), "--eval.tta=true", launch=accelerate_cmd()), check=True)
    assert p.stderr.count(warning) == 1
    assert "warning" not in run(eval_cmd("--checkpoint", str(trained_run)), check=True).stderr


@pytest.mark.slow
def test_resume_continues_at_next_epoch(tmp_path, data_root):
    run_dir = tmp_path / "r"
    common = [*SMALL, f"--data.root={data_root}", f"--run.dir={run_dir}", "--run.progress=false"]
    run(train_cmd(*common, "--train.epochs=1"), check=True)
    # a second start without --resume must refuse and leave the run alone
    before = (run_dir / "best.pt").read_bytes()
    p = run(train_cmd(*common, "--train.epochs=2"))
    assert p.returncode == 2 and "already holds a run; pass --resume" in p.stderr
    assert (run_dir / "best.pt").read_bytes() == before
    p = run(train_cmd(*common, "--train.epochs=2", "--resume"), check=True)
    assert "resumed" in p.stdout and "at epoch 2, step 25" in p.stdout
    assert "Epoch: 1 " not in p.stdout and "Epoch: 2 " in p.stdout
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["step"] == 50
    # resuming with a different model/data config is refused
    p = run(train_cmd(*common, "--train.epochs=3", "--resume", "--seed=9"))
    assert p.returncode == 2 and "seed differ" in p.stderr


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path, data_root):
    """Epoch-boundary resume is exact: 1 epoch + resume to 2 gives the same weights as 2 straight."""
    common = [*SMALL, f"--data.root={data_root}", "--run.progress=false", "--optim.momentum=0.9"]
    run(train_cmd(*common, "--train.epochs=2", f"--run.dir={tmp_path / 'straight'}"), check=True)
    run(train_cmd(*common, "--train.epochs=1", f"--run.dir={tmp_path / 'split'}"), check=True)
    run(train_cmd(*common, "--train.epochs=2", f"--run.dir={tmp_path / 'split'}", "--resume"), check=True)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    b = load_file(tmp_path / "split" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_missing_cifar10_offline_is_one_line(tmp_path):
    empty = tmp_path / "nodata"
    empty.mkdir()
    p = run(train_cmd("--data.name=cifar10", f"--data.root={empty}", f"--run.dir={tmp_path / 'r'}"), timeout=180)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert str(empty) in lines[0] and "offline" in lines[0] and "cifar-10-python.tar.gz" in lines[0]
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_collapsed_launch_is_detected(tmp_path, data_root):
    """`accelerate launch --num_processes 2` without a multi-process mode runs ONE process on CPU."""
    p = run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(REPO / "train.py"),
            *SMALL,
            f"--data.root={data_root}",
            f"--run.dir={tmp_path / 'r'}",
        ],
        timeout=180,
    )
    assert p.returncode != 0
    assert "asked for 2 processes but started one" in p.stderr
    assert not (tmp_path / "r" / "best.pt").exists()


# The README's first commands, as a new user types them.
README_SMOKE = ["--data.name=synthetic", "--train.epochs=2", "--optim.momentum=0.9"]


@pytest.mark.slow
def test_readme_command_1_prints_no_launcher_defaults_warning(tmp_path):
    """README command 1 (`accelerate launch train.py`) after the set-up's `accelerate config default`
    prints no warning about defaults the user never chose. Without that config Accelerate warns that
    --num_processes was set to 0 (and three more) and advises `accelerate config`: the first half
    shows that this check can fail."""
    env = base_env(HF_HOME=str(tmp_path / "hf"))  # the user's own Accelerate config stays untouched
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    # Accelerate's wording changes between releases (1.16 says `1` where 1.15 said `0`): hold only
    # that the bare launch names the defaulted flag, and the configured one no flag at all.
    bare = run(train_cmd("--print-config", launch=launch), env=env, check=True)
    assert "--num_processes" in bare.stderr, bare.stderr
    run([sys.executable, "-m", "accelerate.commands.accelerate_cli", "config", "default"], env=env, check=True)
    p = run(train_cmd("--print-config", launch=launch), env=env, check=True)
    assert "--num_processes" not in p.stderr and "accelerate config" not in p.stderr, p.stderr


@pytest.mark.slow
def test_readme_smoke_run_learns(tmp_path):
    """The README's 2-process smoke run: synthetic data, 2 epochs, the tutorial's lr 0.01 and batch 16
    plus momentum 0.9. Measured on 2 loaded cores: 99.8 / 97.1 / 99.2 % test accuracy (seeds 0, 1, 2;
    one process, seed 0: 99.9 %). The tutorial's plain SGD ended at 11.8 %, one class for almost every
    image: 250 steps at lr 0.01 without momentum barely leave the initial plateau."""
    run(train_cmd(*README_SMOKE, launch=accelerate_cmd()), cwd=tmp_path, check=True, timeout=600)
    [metrics] = (tmp_path / "runs").glob("*/test_metrics.json")
    result = json.loads(metrics.read_text())
    assert result["world_size"] == 2 and result["num_samples"] == 1000
    assert result["accuracy"] >= 0.9, result["accuracy"]
