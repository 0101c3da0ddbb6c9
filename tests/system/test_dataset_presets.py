"""Per-dataset layers of the presets (config.PRESET_DATASET_OVERRIDES) and translate test-time views."""

import pytest
import torch
from helpers import run, train_cmd

from cifar_dist.config import PRESET_DATASET_OVERRIDES, PRESETS, resolve
from cifar_dist.evaluate.evaluation import logits_of


def test_a_preset_takes_its_layer_for_the_runs_dataset(tmp_path):
    layer = PRESET_DATASET_OVERRIDES["tutorial_fast"]["cifar10"]
    cifar = resolve("tutorial_fast", overrides=["--data.name=cifar10"])
    fashion = resolve("tutorial_fast", overrides=["--data.name=fashion_mnist"])
    for section, keys in layer.items():
        for key, value in keys.items():
            assert getattr(getattr(cifar, section), key) == value
            assert getattr(getattr(fashion, section), key) == PRESETS["tutorial_fast"].get(section, {}).get(
                key, getattr(getattr(resolve(), section), key)
            )
    assert resolve("tutorial_fast", overrides=["--data.name=imagefolder"]).data.crop_pad == cifar.data.crop_pad
    # The command line still beats the layer, and data.name from a YAML file selects it too.
    assert resolve("tutorial_fast", overrides=["--data.name=cifar10", "--data.crop_pad=3"]).data.crop_pad == 3
    y = tmp_path / "c.yaml"
    y.write_text("data:\n  name: cifar10\n")
    assert resolve("tutorial_fast", str(y)) == cifar


@pytest.mark.slow
def test_print_config_names_the_layer_it_applied():
    p = run(train_cmd("--preset", "resnet_fast", "--data.name=cifar10", "--print-config"), timeout=120)
    assert p.returncode == 0, p.stderr
    first = p.stdout.splitlines()[0]  # a YAML comment: --config reads the output back unchanged
    assert first.startswith("# preset resnet_fast with its cifar10 layer: ") and "data.crop_pad=" in first
    assert "preset: resnet_fast" in p.stdout.splitlines()
    p = run(train_cmd("--preset", "resnet_fast", "--data.name=fashion_mnist", "--print-config"), timeout=120)
    assert not p.stdout.startswith("#") and "preset: resnet_fast" in p.stdout.splitlines()


def test_translate_tta_averages_six_views_with_airbench_weights():
    views = []

    def net(x):  # records each view; its "logits" are one number per image
        views.append(x.clone())
        return x.sum(dim=(1, 2, 3)).unsqueeze(1)

    x = torch.randn(2, 3, 8, 8)
    out = logits_of(net, x, tta=True, translate=1)
    assert len(views) == 6
    plain, mirror, a, a_mirror, b, b_mirror = views
    assert torch.equal(plain, x) and torch.equal(mirror, x.flip(3))
    assert torch.equal(a[..., 1:, 1:], x[..., :-1, :-1]) and torch.equal(a_mirror, a.flip(3))  # moved down-right
    assert torch.equal(b[..., :-1, :-1], x[..., 1:, 1:]) and torch.equal(b_mirror, b.flip(3))  # moved up-left
    s = [v.sum(dim=(1, 2, 3)) for v in views]
    expected = 0.25 * (s[0] + s[1]) + 0.125 * (s[2] + s[3] + s[4] + s[5])
    assert torch.allclose(out.squeeze(1), expected)
    views.clear()
    assert (
        torch.allclose(logits_of(net, x, tta=True), x.sum(dim=(1, 2, 3)).unsqueeze(1)) and len(views) == 2
    )  # flip only
