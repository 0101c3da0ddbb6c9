"""The fast path (issue 9): tensor-held data and its shards, batch augmentation, resnet_fast, the
speed switches, exact evaluation and resume with it. Real subprocesses for the runs.

    OMP_NUM_THREADS=1 python -m pytest tests/system/test_fast_path.py
"""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, SMALL, accelerate_cmd, base_env, eval_cmd, read_metrics, run, train_cmd

from cifar_dist.data import augment
from cifar_dist.train.tensor_loader import CROP_PAD, rank_augment, rank_batches, steps_per_epoch

# 400 training images at batch 32: 12 steps per epoch, 16 images sit out each epoch.
FAST = [*SMALL, "--run.progress=false", "--train.per_device_batch_size=32"]


def rows_of(run_dir):
    return read_metrics(run_dir / "metrics.jsonl")


# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n,batch", [(103, 4), (400, 32), (96, 8)])
def test_tensor_shards_disjoint_and_cover_the_split(world, n, batch):
    for epoch in (0, 1, 5):
        shards = [rank_batches(n, batch, world, r, seed=3, epoch=epoch) for r in range(world)]
        steps = steps_per_epoch(n, batch, world)
        assert all(s.shape == (steps, batch) for s in shards), "every rank takes the same number of steps"
        flat = torch.cat([s.flatten() for s in shards])
        assert len(flat) == len(set(flat.tolist())), "a sample went to two ranks (or twice)"
        assert flat.min() >= 0 and flat.max() < n
        assert n - len(flat) < world * batch  # only what cannot fill a global batch sits out
        if n % (world * batch) == 0:
            assert sorted(flat.tolist()) == list(range(n))
        # global step i of a W-rank run is batch i of a 1-rank run with batch W·B: same samples, same crops
        single = rank_batches(n, world * batch, 1, 0, seed=3, epoch=epoch)
        assert torch.equal(torch.stack(shards, 1).reshape(steps, world * batch), single)
        aug = [rank_augment(n, batch, world, r, 3, epoch) for r in range(world)]
        for p in range(3):
            assert torch.equal(
                torch.stack([a[p] for a in aug], 1).reshape(steps, -1),
                rank_augment(n, world * batch, 1, 0, 3, epoch)[p],
            )
    # a pure function of (seed, epoch): the same again, different next epoch and with another seed
    a = rank_batches(n, batch, world, 0, 3, 1)
    assert torch.equal(a, rank_batches(n, batch, world, 0, 3, 1))
    assert not torch.equal(a, rank_batches(n, batch, world, 0, 3, 2))
    assert not torch.equal(a, rank_batches(n, batch, world, 0, 4, 1))


def test_over_epochs_every_sample_is_trained():
    seen = set()
    for epoch in range(10):
        seen.update(rank_batches(103, 8, 2, 0, 0, epoch).flatten().tolist())
        seen.update(rank_batches(103, 8, 2, 1, 0, epoch).flatten().tolist())
    assert seen == set(range(103))  # the left-out tail changes every epoch


def _reference_crop_flip(images, index, dy, dx, flip, pad):
    """Per image, the obvious way: reflect-pad, slice, mirror."""
    out = []
    for k, i in enumerate(index.tolist()):
        p = F.pad(images[i : i + 1].float(), (pad,) * 4, mode="reflect")[0]
        h, w = images.shape[-2:]
        crop = p[:, dy[k] : dy[k] + h, dx[k] : dx[k] + w]
        out.append(crop.flip(2) if flip[k] else crop)
    return torch.stack(out).to(torch.uint8)


def test_augmentation_is_crop_and_flip():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8, generator=g)
    index = torch.randperm(50, generator=g)[:20]
    dy, dx, flip = augment.draw_crop_flip(20, CROP_PAD, g)
    assert dy.min() >= 0 and dy.max() <= 2 * CROP_PAD and 0 < flip.sum() < 20
    want = _reference_crop_flip(images, index, dy, dx, flip, CROP_PAD)
    fused = augment.gather_crop_flip(augment.mirrored_padded(images, CROP_PAD), index, dy, dx, flip, 32)
    assert fused.dtype == torch.uint8 and torch.equal(fused, want)
    assert torch.equal(augment.random_flip(augment.random_crop(images[index], CROP_PAD, dy, dx), flip), want)
    # offset (pad, pad) is the identity; flipping twice too; the draw is a pure function of the generator
    centre = torch.full((20,), CROP_PAD)
    assert torch.equal(augment.random_crop(images[index], CROP_PAD, centre, centre), images[index])
    assert torch.equal(
        augment.random_flip(augment.random_flip(images, flip[:1].expand(50)), flip[:1].expand(50)), images
    )
    a = augment.draw_crop_flip(20, 4, torch.Generator().manual_seed(7))
    b = augment.draw_crop_flip(20, 4, torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # 1-channel 28×28 (Fashion-MNIST) works the same
    small = images[:10, :1, :28, :28].contiguous()
    i10 = torch.arange(10)
    dy, dx, flip = augment.draw_crop_flip(10, 2, g)
    assert torch.equal(
        augment.gather_crop_flip(augment.mirrored_padded(small, 2), i10, dy, dx, flip, 28),
        _reference_crop_flip(small, i10, dy, dx, flip, 2),
    )


def test_loader_batches_resume_and_normalise(tmp_path):
    """The loader in a real (1-process) Accelerate job; several ranks are covered by the pure
    functions above and by the 2-process run below."""
    from accelerate import Accelerator

    from cifar_dist.config import resolve
    from cifar_dist.data import load_data, normalize_batch
    from cifar_dist.errors import UserError
    from cifar_dist.train.tensor_loader import TensorTrainLoader

    cfg = resolve(
        "tutorial_fast",
        None,
        [*SMALL, f"--data.root={tmp_path}", "--train.per_device_batch_size=32", f"--data.crop_pad={CROP_PAD}"],
    )  # the pad the checks below use
    accelerator = Accelerator(cpu=True)
    data = load_data(cfg, accelerator)
    loader = TensorTrainLoader(cfg, data, accelerator)
    assert len(loader) == 12 and loader.samples_per_epoch == 384
    loader.set_epoch(2)
    full = list(loader.iterate())
    x, y = full[0]
    assert (
        x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    )
    # mid-epoch resume: skipping k batches lands exactly on batch k, crops and all
    tail = list(loader.iterate(skip=9))
    assert len(tail) == 3 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(tail, full[9:]))
    # each batch is the normalised crop/flip of exactly the samples the pure functions name
    for i in (0, 11):
        index = rank_batches(400, 32, 1, 0, cfg.seed, 2)[i]
        dy, dx, flip = (p[i] for p in rank_augment(400, 32, 1, 0, cfg.seed, 2))
        want = augment.random_flip(augment.random_crop(data.train_images[index], CROP_PAD, dy, dx), flip)
        assert torch.equal(full[i][0], normalize_batch(want, data.mean, data.std))
        assert torch.equal(full[i][1], data.train_labels[index])
    # The GPU's way (the split on the device, padded and mirrored, one fused gather) gives the same batches
    # as the host's (gathered from the shared rows, then cropped and flipped), so a CPU run proves it.
    stacked = TensorTrainLoader(cfg, data, accelerator, device_stack=True)
    assert stacked.stack is not None and loader.stack is None
    stacked.set_epoch(2)
    for a, b in zip(stacked.iterate(), full, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    loader.set_epoch(3)
    assert not torch.equal(next(loader.iterate())[1], y)
    cfg.train.per_device_batch_size = 500  # larger than the split: one clear error
    with pytest.raises(UserError, match="exceeds the 400 training samples"):
        TensorTrainLoader(cfg, data, accelerator)


def test_tutorial_cnn_is_the_tutorials_function():
    """TutorialCNN computes relu(pool(conv_without_bias(x)) + bias) (faster); the tutorial writes
    pool(relu(conv(x))). With the bias added after the convolution in both, the outputs are equal bit
    for bit (max and ReLU commute with adding a per-channel constant, and rounding is monotone); against
    nn.Conv2d's fused bias, and for the gradients (summed in another order), equal to float rounding."""
    from cifar_dist.models import TutorialCNN

    torch.manual_seed(0)
    net = TutorialCNN(dropout=0.0)
    x = torch.randn(8, 3, 32, 32)

    def tutorial_forward(m, x, conv):
        x = m.pool(F.relu(conv(m.conv1, x)))
        x = m.pool(F.relu(conv(m.conv2, x)))
        x = m.pool(F.relu(conv(m.conv3, x)))
        x = x.view(-1, 64 * 4 * 4)
        return m.fc2(F.relu(m.fc1(x)))

    def bias_after(c, x):
        return F.conv2d(x, c.weight, None, c.stride, c.padding) + c.bias.view(1, -1, 1, 1)

    ours = net(x)
    ours.square().sum().backward()
    g1 = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    with torch.no_grad():
        assert torch.equal(ours, tutorial_forward(net, x, bias_after))
    ref = tutorial_forward(net, x, lambda c, x: c(x))  # nn.Conv2d as the tutorial calls it
    ref.square().sum().backward()
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
    for a, p in zip(g1, net.parameters(), strict=True):
        assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-5)
    # The bias matters: a model whose bias was dropped would fail the comparison above.
    assert net.conv1.bias.abs().max() > 1e-3


def test_tutorial_cnn_bn_layers():
    from cifar_dist.models import build_model, count_parameters

    m = build_model("tutorial_cnn_bn", 3, 32, 10, dropout=0.0)
    assert count_parameters(m) == 541_094 - 112 + 224  # conv biases out, batch norm weights and shifts in
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 16, (3, 3), (1, 1)),
        (16, 32, (3, 3), (1, 1)),
        (32, 64, (3, 3), (1, 1)),
    ]
    assert all(c.bias is None for c in convs)
    assert [mod.out_features for mod in m.modules() if isinstance(mod, torch.nn.Linear)] == [500, 10]
    for c, s in ((3, 32), (1, 28)):
        net = build_model("tutorial_cnn_bn", c, s, 10).to(memory_format=torch.channels_last)
        assert net(torch.randn(4, c, s, s).contiguous(memory_format=torch.channels_last)).shape == (4, 10)


def test_resnet_fast_shapes_and_channels():
    from cifar_dist.models import build_model, count_parameters

    assert count_parameters(build_model("resnet_fast", 3, 32, 10, width=64)) == 6_573_120  # ResNet-9's widths
    for c, s in ((3, 32), (1, 28)):
        m = build_model("resnet_fast", c, s, 10, width=8).to(memory_format=torch.channels_last)
        out = m(torch.randn(4, c, s, s).contiguous(memory_format=torch.channels_last))
        assert out.shape == (4, 10)
        assert not any(isinstance(mod, torch.nn.Conv2d) and mod.bias is not None for mod in m.modules())


# --------------------------------------------------------------------------- real runs


@pytest.mark.slow
@pytest.mark.parametrize(
    "switch",
    [
        ["--train.channels_last=true"],
        ["--train.channels_last=false", "--model.name=resnet_fast", "--model.width=4"],
        ["--train.compile=true"],
        ["--train.mixed_precision=bf16", "--train.channels_last=false"],
    ],
    ids=["channels_last", "resnet_fast", "compile", "bf16"],
)
def test_speed_switch_trains(tmp_path, data_root, switch):
    """Each switch on the tensor path trains on the CPU: 3 short epochs, the training loss falls."""
    run_dir = tmp_path / "r"
    p = run(
        train_cmd(
            "--preset",
            "tutorial_fast",
            *FAST,
            f"--data.root={data_root}",
            "--train.epochs=3",
            "--eval.per_device_batch_size=128",
            f"--run.dir={run_dir}",
            *switch,
        ),
        timeout=400,
        check=True,
    )
    losses = [r["train_loss"] for r in rows_of(run_dir)]
    assert losses[-1] < losses[0], (switch, losses)
    assert all(r["train_samples"] == 384 for r in rows_of(run_dir))
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["data"]["loader"] == "tensor" and cfg["data"]["augment"] is True
    for s in switch:
        section, rest = s[2:].split(".", 1)
        key, value = rest.split("=")
        assert str(cfg[section][key]).lower() == value.lower()
    assert "Test Accuracy (Overall)" in p.stdout


@pytest.mark.slow
def test_fp16_on_cpu_is_refused(tmp_path, data_root):
    p = run(
        train_cmd(
            "--preset",
            "tutorial_fast",
            *FAST,
            f"--data.root={data_root}",
            f"--run.dir={tmp_path / 'r'}",
            "--train.mixed_precision=fp16",
        ),
        timeout=120,
    )
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0
    assert "fp16 needs a CUDA GPU" in p.stderr and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_resnet_fast_preset_ddp_and_exact_evaluation(tmp_path, data_root):
    """The resnet_fast preset (BN, tensor loader, TTA) trained by 2 real DDP processes; its
    checkpoint evaluated by 1 and by 2 processes gives byte-identical results (101 test images,
    batch 16: uneven shards)."""
    run_dir = tmp_path / "ddp"
    run(
        train_cmd(
            "--preset",
            "resnet_fast",
            *FAST,
            f"--data.root={data_root}",
            "--model.width=4",
            "--train.epochs=2",
            f"--run.dir={run_dir}",
            launch=accelerate_cmd(),
        ),
        timeout=400,
        check=True,
    )
    rows = rows_of(run_dir)
    assert [r["world_size"] for r in rows] == [2, 2] and rows[0]["step"] == 6  # 400 // (2 × 32)
    assert all(r["train_samples"] == 384 for r in rows)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    run(eval_cmd("--checkpoint", str(run_dir), "--json", str(a), "--batch-size", "16"), check=True)
    run(
        eval_cmd("--checkpoint", str(run_dir), "--json", str(b), "--batch-size", "16", launch=accelerate_cmd()),
        check=True,
    )
    assert a.read_bytes() == b.read_bytes()
    result = json.loads(a.read_text())
    assert result["num_samples"] == 101 and sum(map(sum, result["confusion"])) == 101
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    assert ckpt["config"]["eval"]["tta"] is True and ckpt["config"]["model"]["name"] == "resnet_fast"


@pytest.mark.slow
def test_mid_epoch_resume_restores_the_data_order(tmp_path, data_root):
    """Stopped by SIGUSR1 inside epoch 2 and resumed, the run ends with the same weights, bit for
    bit, as a run never stopped: same batches, same crops and flips, same dropout."""
    from safetensors.torch import load_file

    common = [
        "--preset",
        "tutorial_fast",
        *FAST,
        f"--data.root={data_root}",
        "--train.epochs=3",
        "--model.dropout=0.3",
    ]  # tutorial_fast trains without dropout; this test checks dropout's RNG too
    run(train_cmd(*common, f"--run.dir={tmp_path / 'straight'}"), timeout=300, check=True)
    split = tmp_path / "split"
    proc = subprocess.Popen(
        train_cmd(*common, f"--run.dir={split}"),
        cwd=REPO,
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while not (split / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGUSR1)  # lands during epoch 1's checkpoint or early in epoch 2
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "stop requested" in out, err[-3000:]
    p = run(train_cmd(*common, f"--run.dir={split}", "--resume"), timeout=300, check=True)
    resumed_step = int(p.stdout.split("resumed ")[1].split("step ")[1].split(" ")[0])
    assert 12 < resumed_step < 24, f"stopped at step {resumed_step}, not inside epoch 2"
    a = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    b = load_file(split / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in rows_of(split)] == [r["train_loss"] for r in rows_of(tmp_path / "straight")]


def test_mixed_precision_no_survives_yaml_parsing(tmp_path):
    """YAML 1.1 reads `no` as false; `--train.mixed_precision=no` (and `mixed_precision: no` in a
    file) must still mean no mixed precision, not the invalid string 'false'."""
    from cifar_dist.config import resolve

    assert resolve("fast", None, ["--train.mixed_precision=no"]).train.mixed_precision == "no"
    f = tmp_path / "c.yaml"
    f.write_text("train: {mixed_precision: no}\n")
    assert resolve("fast", str(f), []).train.mixed_precision == "no"
    assert resolve("fast", None, ["--train.mixed_precision=bf16"]).train.mixed_precision == "bf16"


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_gpu_check_smoke_runs_every_configuration_in_its_own_process(tmp_path):
    """benchmarks/gpu_check.sh --smoke runs the GPU check's smoke pass (4 models × fp32/bf16 × eager/compile, the
    `airbench` and `fast` presets trained on a JPEG archive, the overhead benchmark), one step each, on the CPU
    and this stack: every row has its number. (tests/test_gpu_stack.py runs it on the GPU machine's stack.) On
    main before issue 27 all configurations shared one process, and every one after the first precision failed
    with "AcceleratorState has already been initialized"."""
    from imagetree import write_tar, write_tree

    archive = write_tar(write_tree(tmp_path / "tree", n_train=12, n_test=4, size=32), tmp_path / "tiny.tar.xz")
    out = tmp_path / "out"
    p = run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--smoke"],
        timeout=2300,
        env=base_env(CIFAR10_JPEG_ARCHIVE=archive, PYTHON=sys.executable),
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    parts = json.loads((out / "gpu_check.json").read_text())["parts"]
    rows = [(r["model"], r["width"], r["mixed_precision"], r["compile"]) for r in parts if r["part"] == "throughput"]
    models = [("airbench", 64), ("airbench", 32), ("resnet_fast", 16), ("tutorial_cnn", None)]
    expected = [(*m, prec, comp) for comp in (False, True) for prec in ("no", "bf16") for m in models]
    assert sorted(rows, key=str) == sorted(expected, key=str)
    for r in parts:
        assert "error" not in r, r
        if r["part"] == "throughput":
            assert all(r[k] is not None and r[k] >= 0 for k in ("images_per_sec", "tflops_per_sec", "peak_mem_gib")), r
    trained = [r for r in parts if r["part"] == "train"]
    assert [(r["preset"], r["width"]) for r in trained] == [("airbench", 64), ("fast", 32)]
    assert all(r["train_pflop"] > 0 and r["train_seconds"] > 0 and r["curve"] for r in trained)
    table = (out / "gpu_check.md").read_text()
    assert table.count("| airbench |") == 9 and table.count("| airbench | 64 |") == 5  # 8 and 4 throughput + trained
    throughput_lines = [ln for ln in table.splitlines() if "| True |" in ln or "| False |" in ln]
    assert len(throughput_lines) == 16
    assert all("| - |" not in ln.replace("| tutorial_cnn | - |", "| tutorial_cnn |") for ln in throughput_lines), table
    published, ours = p.stdout.strip().splitlines()[-2:]
    assert "94.01%" in published and "3.83 s" in published and "0.36 PFLOP" in published
    assert ours.startswith("ours: airbench preset") and "JPEG q75" in ours
