"""A user's choice wins over what the preset left behind: `--preset P --optim.name=adamw` drops the preset's
SGD momentum, while keys the user wrote themselves still stop the run with one line naming them.

    python -m pytest tests/system/test_preset_choices.py
"""

from __future__ import annotations

import pytest
from helpers import SMALL

from cifar_dist.config import resolve
from cifar_dist.config.presets import PRESETS
from cifar_dist.errors import UserError
from cifar_dist.train import train


@pytest.mark.parametrize("preset", list(PRESETS))
def test_switching_the_optimizer_drops_the_presets_sgd_keys(preset):
    cfg = resolve(preset, None, ["--optim.name=adamw"])
    assert cfg.optim.name == "adamw"
    assert (cfg.optim.momentum, cfg.optim.nesterov) == (0.0, False)
    # everything else the preset chose stays
    assert cfg.optim.lr == resolve(preset).optim.lr


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_trains_with_adamw(tmp_path, data_root, preset):
    cfg = resolve(
        preset,
        None,
        [
            *SMALL,
            f"--data.root={data_root}",
            f"--run.dir={tmp_path / 'run'}",
            "--optim.name=adamw",
            "--train.epochs=1",
            "--train.max_steps=2",
            "--train.global_batch_size=64",  # the fast presets' 512 exceeds the small set's 400-500 images
            "--run.progress=false",
            "--tracking.backend=none",
            "--train.threads_per_process=1",
        ],
    )
    summary = train(cfg)
    assert summary["epochs"] == 1 and 1 <= summary["steps"] <= 2 and 0 <= summary["accuracy"] <= 1, summary


def test_sgd_keys_the_user_wrote_stay_an_error_naming_the_flag():
    with pytest.raises(UserError) as e:
        resolve("tutorial_fast", None, ["--optim.name=adamw", "--optim.momentum=0.9"])
    message = str(e.value)
    assert "\n" not in message
    assert "--optim.momentum=0.9" in message and "optim.name=adamw" in message
    assert "nesterov" not in message, message  # the preset's nesterov is not the user's to drop


def test_a_key_from_the_users_yaml_is_named_with_its_file(tmp_path):
    yaml = tmp_path / "mine.yaml"
    yaml.write_text("optim:\n  nesterov: true\n")
    with pytest.raises(UserError) as e:
        resolve("tutorial", str(yaml), [])
    assert f"optim.nesterov from {yaml}" in str(e.value), str(e.value)


def test_other_leftovers_give_way_too():
    # the airbench network's own keys go with another model; the batch augmentation with the torch loader
    cfg = resolve("fast", None, ["--model.name=resnet_fast"])
    assert (cfg.model.whiten, cfg.model.dirac_init, cfg.model.bn_learn_scale) == (False, False, True)
    cfg = resolve("fast", None, ["--data.loader=torch"])
    assert (cfg.data.augment, cfg.data.alternate_flip) == (False, False)
    # momentum 0 chosen by the user: the preset's Nesterov goes, the issue's own way out now works alone
    assert resolve("tutorial_fast", None, ["--optim.momentum=0"]).optim.nesterov is False


def test_a_saved_config_is_not_rewritten():
    """A checkpoint's config counts as the user's: nothing in it is silently changed on load."""
    from cifar_dist.config import from_dict
    from cifar_dist.config.rules import validate

    tree = resolve("tutorial_fast").to_dict()
    tree["optim"]["name"] = "adamw"
    with pytest.raises(UserError):
        validate(from_dict(tree))
