"""airbench's methods (issue 25) as pure functions, and the `airbench` network: whitening from data,
identity init, alternating flips, Lookahead, the optimizer's groups and the config's checks.

    python -m pytest tests/system/test_airbench.py
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cifar_dist.artifacts.metrics import read_metrics
from cifar_dist.data.augment import alternating_flip
from cifar_dist.models.whitening import dirac_init_, image_patches, patch_whitening_filters
from cifar_dist.optim.lookahead import Lookahead, lookahead_decay, lookahead_step


def correlated_images(n: int = 400, seed: int = 0) -> torch.Tensor:
    """Images whose neighbouring pixels and channels are strongly correlated, as in photos."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, 17, 17, generator=g)
    smooth = F.interpolate(base, size=16, mode="bilinear", align_corners=False)  # neighbours correlate
    mix = torch.tensor([[1.0], [0.8], [0.6]])  # channels correlate
    return mix.view(1, 3, 1, 1) * smooth + 0.1 * torch.randn(n, 3, 16, 16, generator=g)


def test_whitening_filters_decorrelate_the_patches_they_came_from():
    x = correlated_images()
    w = patch_whitening_filters(x, size=2, eps=1e-6)
    assert w.shape == (24, 3, 2, 2)
    assert torch.equal(w[12:], -w[:12])  # the negatives follow, for the GELU after the layer
    p = image_patches(x, 2)
    raw = p.T @ p / len(p)
    off = raw - torch.diag(raw.diagonal())
    assert off.abs().max() > 0.5 * raw.diagonal().min()  # really correlated before
    out = F.conv2d(x.double(), w[:12].double())  # the layer's first half on the same images
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = flat.T @ flat / len(flat)
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.float64), atol=2e-3, rtol=0)


def test_whitening_puts_the_largest_eigenvalue_first():
    x = correlated_images()
    w = patch_whitening_filters(x, size=2, eps=0.0).double()[:12]
    # the first filter has the smallest norm: v / sqrt(λ) with the largest λ
    norms = w.flatten(1).norm(dim=1)
    assert torch.all(norms[1:] >= norms[:-1] * (1 - 1e-9))


def test_dirac_init_passes_the_input_channels_through():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    before = conv.weight[4:].clone()
    dirac_init_(conv.weight)
    x = torch.randn(2, 4, 8, 8)
    y = conv(x)
    torch.testing.assert_close(y[:, :4], x)
    assert torch.equal(conv.weight[4:], before)  # the extra filters keep their random init
    narrow = torch.nn.Conv2d(4, 2, 3, padding=1, bias=False)
    dirac_init_(narrow.weight)  # fewer outputs than inputs: the first ones pass through
    torch.testing.assert_close(narrow(x), x[:, :2])


def test_airbench_dirac_init_makes_every_3x3_conv_an_identity_on_its_inputs():
    from cifar_dist.models import build_model

    torch.manual_seed(0)
    plain = build_model("airbench", 3, 32, 10, width=8)
    net = build_model("airbench", 3, 32, 10, width=8, dirac_init=True)
    convs = [m for m in net.groups.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6
    x = torch.randn(2, 32, 6, 6)
    for conv in convs:
        c = min(conv.weight.shape[:2])
        torch.testing.assert_close(F.conv2d(x[:, : conv.weight.shape[1]], conv.weight, padding=1)[:, :c], x[:, :c])
    first = next(m for m in plain.groups.modules() if isinstance(m, torch.nn.Conv2d))
    assert not torch.allclose(F.conv2d(x[:, :24], first.weight, padding=1)[:, :8], x[:, :8])


def test_airbench94_shape_and_shift_only_norms():
    from cifar_dist.models import build_model, count_parameters

    net = build_model("airbench", 3, 32, 10, width=64, bn_learn_scale=False)
    # airbench94: widths 64/256/256, 24-channel 2×2 stem: 1,972,792 parameters (the paper's 1.97 M)
    assert count_parameters(net) == 1_972_792
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(not m.weight.requires_grad and m.bias.requires_grad for m in norms)


def test_alternating_flip_mirrors_each_image_every_other_epoch():
    first = torch.tensor([True, False, True, True, False])
    epochs = [alternating_flip(first, e) for e in range(10)]
    assert torch.equal(epochs[0], first)
    for a, b in zip(epochs, epochs[1:]):
        assert torch.equal(b, ~a)  # consecutive epochs: each image once each way
    assert torch.equal(torch.stack(epochs).sum(0), torch.full((5,), 5))


def test_tensor_loader_alternates_flips_by_image():
    """data.alternate_flip through the real loader: an image's flip in epoch e+1 is the opposite of
    epoch e's, whatever positions the shuffles put it at."""
    from types import SimpleNamespace

    from cifar_dist.config import resolve
    from cifar_dist.train.tensor_loader import TensorTrainLoader

    n = 64
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    data = SimpleNamespace(
        train_images=images, train_labels=torch.arange(n), mean=[0.5] * 3, std=[0.25] * 3, image_size=8
    )
    acc = SimpleNamespace(device=torch.device("cpu"), process_index=0, num_processes=1)
    cfg = resolve("airbench", None, ["--data.name=synthetic", "--data.crop_pad=0", "--train.per_device_batch_size=16"])
    assert cfg.data.alternate_flip
    loader = TensorTrainLoader(cfg, data, acc)

    def flipped_by_image(epoch: int) -> dict[int, bool]:
        loader.set_epoch(epoch)
        out = {}
        for x, y in loader.iterate():
            raw = (x * 0.25 + 0.5) * 255  # undo the normalisation
            for xi, yi in zip(raw, y):
                src = images[yi].float()
                same, mirror = torch.allclose(xi, src, atol=1e-3), torch.allclose(xi, src.flip(2), atol=1e-3)
                assert same != mirror
                out[int(yi)] = mirror
        return out

    e0, e1, e2 = flipped_by_image(0), flipped_by_image(1), flipped_by_image(2)
    assert len(e0) == n and 10 < sum(e0.values()) < 54
    assert all(e1[i] != e0[i] for i in range(n)) and all(e2[i] == e0[i] for i in range(n))


def test_lookahead_step_by_hand():
    slow, fast = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 6.0])]
    lookahead_step(slow, fast, 0.75)
    # slow <- 0.75·slow + 0.25·fast = [1.5, 3.0]; fast <- slow
    assert torch.equal(slow[0], torch.tensor([1.5, 3.0])) and torch.equal(fast[0], torch.tensor([1.5, 3.0]))
    fast[0].add_(1.0)
    lookahead_step(slow, fast, 1.0)  # the last step: the slow weights go back into the network
    assert torch.equal(fast[0], torch.tensor([1.5, 3.0]))
    lookahead_step(slow, [torch.tensor([7.0, 7.0])], 0.0)  # decay 0: plain SGD, slow follows fast
    assert torch.equal(slow[0], torch.tensor([7.0, 7.0]))


def test_lookahead_decay_ramps_from_zero_to_airbench_value():
    assert lookahead_decay(0, 100) == 0.0
    assert lookahead_decay(50, 100) == pytest.approx(0.95**5 / 8)
    assert lookahead_decay(100, 100) == pytest.approx(0.95**5)
    assert lookahead_decay(200, 100) == pytest.approx(0.95**5)


def test_lookahead_syncs_every_k_steps_and_ends_on_the_slow_weights():
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    la = Lookahead(net, total_steps=10, every=5)
    trajectory = []
    for step in range(1, 11):
        with torch.no_grad():
            net.weight.add_(1.0)  # a stand-in for an optimizer step
        la.after_step(step)
        trajectory.append(net.weight[0, 0].item())
    # steps 1-4 plain; step 5 syncs with decay d5 = 0.95^5·0.5³ from slow = 1 towards fast = 6
    d5 = 0.95**5 * 0.125
    s5 = d5 * 1.0 + (1 - d5) * 6.0
    assert trajectory[:4] == [2.0, 3.0, 4.0, 5.0]
    assert trajectory[4] == pytest.approx(s5)
    # step 10 is the last: the network ends on the slow weights, not the last fast ones
    assert trajectory[9] == pytest.approx(s5) and la.slow[0][0, 0].item() == pytest.approx(s5)
    restored = Lookahead(net, total_steps=10)
    restored.load_state_dict(la.state_dict())
    assert torch.equal(restored.slow[0], la.slow[0])


def test_param_groups_scale_norm_biases_and_leave_out_frozen_layers():
    from cifar_dist.models import build_model
    from cifar_dist.optim import param_groups

    net = build_model("airbench", 3, 32, 10, width=8, bn_learn_scale=False)
    net.whiten.weight.requires_grad_(False)
    groups = param_groups(net, weight_decay=1e-3, no_decay_norm_bias=False, bias_lr_scale=64.0)
    main, biases = groups
    norm_biases = {id(m.bias) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in biases["params"]} == norm_biases
    assert biases["lr_scale"] == 64.0 and biases["weight_decay"] == pytest.approx(1e-3 / 64)
    assert id(net.whiten.weight) not in {id(p) for g in groups for p in g["params"]}
    trained = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trained
    assert len(param_groups(net, 1e-3, False, 1.0)) == 1  # scale 1: one group, as before
    # with no_decay_norm_bias as well: the shifts keep no decay at the larger lr
    groups = param_groups(net, 1e-3, True, 64.0)
    assert [(g["weight_decay"], g["lr_scale"]) for g in groups] == [(1e-3, 1.0), (0.0, 1.0), (0.0, 64.0)]


def test_whiten_from_data_freezes_a_whitening_first_layer():
    from types import SimpleNamespace

    from cifar_dist.data import normalize_batch
    from cifar_dist.models import build_model
    from cifar_dist.models.whitening import whiten_from_data

    images = (correlated_images(300).clamp(-2, 2) * 60 + 128).to(torch.uint8)
    data = SimpleNamespace(train_images=images, mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])
    net = build_model("airbench", 3, 16, 10, width=8)
    whiten_from_data(net, normalize_batch(images, data.mean, data.std))
    assert not net.whiten.weight.requires_grad and net.whiten.bias.requires_grad
    x = normalize_batch(images, data.mean, data.std).double()
    out = F.conv2d(x, net.whiten.weight[:12].double()).permute(0, 2, 3, 1).reshape(-1, 12)
    cov = out.T @ out / len(out)
    assert (cov - torch.eye(12, dtype=torch.float64)).abs().max() < 0.05


@pytest.mark.parametrize(
    "override",
    ["--model.whiten=true", "--model.dirac_init=true", "--model.bn_learn_scale=false"],
)
def test_airbench_switches_on_another_network_are_one_line_errors(override):
    from cifar_dist.config import resolve
    from cifar_dist.errors import UserError

    with pytest.raises(UserError, match="model.name=airbench"):
        resolve("resnet_fast", None, [override])


def test_switches_are_off_by_default_and_on_in_the_airbench_presets():
    from cifar_dist.config import resolve

    for preset in ("seed", "tutorial_fast", "resnet_fast"):
        cfg = resolve(preset)
        assert not (cfg.model.whiten or cfg.model.dirac_init or cfg.optim.lookahead or cfg.data.alternate_flip)
        assert cfg.model.bn_learn_scale and cfg.optim.bias_lr_scale == 1.0
    for preset in ("airbench", "fast"):  # one recipe; fast trains it longer
        cfg = resolve(preset)
        assert cfg.model.whiten and cfg.model.dirac_init and not cfg.model.bn_learn_scale
        assert cfg.optim.lookahead and cfg.data.alternate_flip and cfg.optim.bias_lr_scale == 64.0
        assert cfg.optim.label_smoothing == 0.2 and cfg.eval.tta and cfg.eval.tta_translate == 1
    assert resolve("fast").train.epochs > resolve("airbench").train.epochs
    assert resolve("fast").to_dict()["optim"] == resolve("airbench").to_dict()["optim"]


@pytest.mark.slow
def test_airbench_run_stopped_mid_epoch_resumes_bit_exact(tmp_path, data_root_medium):
    """The whole recipe through the loop (whitening from data, Lookahead's slow weights, alternating
    flips, the bias group): a run stopped by SIGUSR1 in the middle of epoch 1 and resumed ends with the
    weights, Lookahead state and metrics of an uninterrupted run."""
    import signal
    import subprocess
    import time

    from helpers import MEDIUM, REPO, base_env, run, train_cmd, without_timing

    def cmd(run_dir, *extra):
        return train_cmd(
            "--preset=airbench",
            *MEDIUM,
            f"--data.root={data_root_medium}",
            "--model.width=8",
            "--train.epochs=2",
            "--train.per_device_batch_size=16",
            "--train.checkpoint_every_steps=10",
            "--seed=3",
            "--run.progress=false",
            "--tracking.backend=none",
            f"--run.dir={run_dir}",
            *extra,
        )

    full, cut = tmp_path / "full", tmp_path / "cut"
    run(cmd(full), timeout=300, check=True)
    with open(tmp_path / "leg1.log", "w+") as out:
        p = subprocess.Popen(cmd(cut, "--train.resume=auto"), cwd=REPO, env=base_env(), stdout=out, stderr=out)
        t0 = time.monotonic()
        while not (cut / "last" / "custom_checkpoint_1.pkl").exists() and p.poll() is None:
            assert time.monotonic() - t0 < 300
            time.sleep(0.02)
        p.send_signal(signal.SIGUSR1)
        assert p.wait(timeout=300) == 0
    state = torch.load(cut / "last" / "custom_checkpoint_0.pkl", weights_only=False)
    assert state["epoch"] == 0 and 0 < state["step_in_epoch"] < 100, state  # 1,600 images / 16: 100 steps
    run(cmd(cut, "--train.resume=auto"), timeout=300, check=True)

    from safetensors.torch import load_file

    a, b = load_file(full / "last" / "model.safetensors"), load_file(cut / "last" / "model.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    la = torch.load(full / "last" / "custom_checkpoint_1.pkl", weights_only=False)
    lb = torch.load(cut / "last" / "custom_checkpoint_1.pkl", weights_only=False)
    assert all(torch.equal(x, y) for x, y in zip(la["slow"], lb["slow"], strict=True))
    # the run ended on the slow weights: Lookahead's last step copied them into the network
    assert torch.equal(a["head.weight"], la["slow"][-1])  # the head is the model's last tensor

    def rows(d):
        return without_timing(read_metrics(d / "metrics.jsonl"))

    assert rows(full) == rows(cut) and len(rows(full)) == 2
