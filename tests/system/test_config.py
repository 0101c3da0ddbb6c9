"""Config layering (defaults < preset < YAML < overrides) and one-line errors before any work."""

import pytest
from helpers import eval_cmd, run, train_cmd

from cifar_dist.config import PRESETS, from_dict, parse_overrides, resolve
from cifar_dist.errors import UserError


def test_defaults_are_the_tutorial():
    cfg = resolve()
    assert cfg.preset == "tutorial"
    assert (cfg.data.name, cfg.data.root, cfg.data.val_fraction, cfg.data.normalize) == (
        "cifar10",
        "./data",
        0.2,
        "half",
    )
    assert (cfg.model.name, cfg.model.dropout) == ("tutorial_cnn", 0.3)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.schedule) == (
        0.01,
        0.0,
        0.0,
        "constant",
    )
    assert (cfg.train.epochs, cfg.train.per_device_batch_size) == (30, 16)
    assert cfg.data.loader == "torch" and cfg.data.augment is False


def test_layering_order(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("optim:\n  lr: 0.2\n  momentum: 0.5\ntrain:\n  epochs: 7\n")
    cfg = resolve("tutorial_fast", str(y), ["--optim.lr=0.3", "--seed", "5"])
    assert cfg.optim.lr == 0.3  # override beats YAML
    assert cfg.optim.momentum == 0.5  # YAML beats preset (0.9)
    assert cfg.train.epochs == 7
    assert cfg.train.global_batch_size == PRESETS["tutorial_fast"]["train"]["global_batch_size"]  # preset beats default
    assert cfg.seed == 5


def test_type_coercion():
    cfg = resolve(
        overrides=["--optim.lr=1", "--train.channels_last=true", "--tracking.tags=a,b", "--train.resume=auto"]
    )
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    assert cfg.train.channels_last is True
    assert cfg.tracking.tags == ["a", "b"]
    assert cfg.train.resume == "auto"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--optim.lrr=0.1"], "unknown key 'optim.lrr'; valid keys in 'optim': lr"),
        (["--optimizer.lr=0.1"], "unknown key 'optimizer'"),
        (["--optim.lr=-1"], "optim.lr=-1.0 must be > 0"),
        (["--optim.lr=fast"], "optim.lr must be a number"),
        (["--train.per_device_batch_size=0"], "set exactly one of them above 0"),
        (["--train.epochs=2.5"], "train.epochs must be an integer"),
        (["--data.val_fraction=1"], "data.val_fraction=1.0 must be in [0, 1)"),
        (["--data.name=imagenet"], "choose one of: cifar10, cifar100, fashion_mnist, synthetic"),
        (["--model.name=vit"], "model.name='vit' is not valid; choose one of: tutorial_cnn"),
        (["--train.channels_last=maybe"], "must be true or false"),
    ],
)
def test_bad_values_name_the_fix(args, fragment):
    with pytest.raises(UserError) as e:
        resolve(overrides=args)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="unknown preset 'nope'; choose one of: tutorial"):
        resolve("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        resolve(config_file=str(bad))
    unknown = tmp_path / "u.yaml"
    unknown.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(UserError, match="unknown key 'trian'"):
        resolve(config_file=str(unknown))
    with pytest.raises(UserError, match="does not exist"):
        resolve(config_file=str(tmp_path / "missing.yaml"))


def test_roundtrip_through_checkpoint_dict():
    cfg = resolve("tutorial_fast", overrides=["--optim.lr=0.07", "--tracking.tags=x"])
    again = from_dict(cfg.to_dict())
    assert again == cfg


def test_parse_overrides_forms():
    assert parse_overrides(["--a.b=1", "--c.d", "x", "--seed=3"]) == {"a": {"b": 1}, "c": {"d": "x"}, "seed": 3}


@pytest.mark.slow
def test_cli_error_is_one_line_before_any_work(tmp_path):
    p = run(train_cmd("--optim.lr=-0.1", f"--run.dir={tmp_path / 'r'}"), timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["error: optim.lr=-0.1 must be > 0"]
    assert "Traceback" not in p.stderr + p.stdout
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, argv, line",
    [
        ("train", ["--print-confg"], "error: unknown option --print-confg; did you mean --print-config?"),
        ("train", ["--resme", "--train.epochs=1"], "error: unknown option --resme; did you mean --resume?"),
        ("eval", ["--checkpoint", "x.pt", "--splt=val"], "error: unknown option --splt; did you mean --split?"),
    ],
)
def test_a_mistyped_option_names_the_one_meant(script, argv, line):
    """A flag that is neither an option nor --section.key: one line, the closest option (difflib)."""
    p = run((train_cmd if script == "train" else eval_cmd)(*argv), timeout=120)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [line], p.stderr
    assert "Traceback" not in p.stderr + p.stdout


@pytest.mark.slow
def test_print_config(tmp_path):
    p = run(train_cmd("--preset", "tutorial_fast", "--optim.lr=0.2", "--print-config"), timeout=120)
    assert p.returncode == 0, p.stderr
    assert "preset: tutorial_fast" in p.stdout and "  lr: 0.2\n" in p.stdout


@pytest.mark.parametrize("data_name", ["cifar10", "fashion_mnist"])  # with and without a per-dataset layer
@pytest.mark.parametrize("preset", list(PRESETS))
def test_print_config_yaml_reads_back_identically(tmp_path, preset, data_name):
    """--print-config's YAML, given to --config, is the same config again, key for key (every preset)."""
    from cifar_dist.config import config_yaml

    cfg = resolve(
        preset,
        overrides=[f"--data.name={data_name}", "--tracking.tags=a,b", "--train.resume=auto", "--run.dir=runs/x y"],
    )
    path = tmp_path / "c.yaml"
    path.write_text(config_yaml(cfg))
    again = resolve(config_file=str(path))
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert config_yaml(again) == path.read_text()


@pytest.mark.slow
def test_print_config_round_trip_through_the_cli(tmp_path):
    first = run(train_cmd("--preset", "fast", "--optim.lr=0.3", "--print-config"), check=True).stdout
    (tmp_path / "fast.yaml").write_text(first)
    assert run(train_cmd("--config", str(tmp_path / "fast.yaml"), "--print-config"), check=True).stdout == first


@pytest.mark.slow
def test_help_lists_every_config_key():
    from cifar_dist.config import Config

    tree = Config().to_dict()
    keys = [f"{s}.{k}" for s, sec in tree.items() if isinstance(sec, dict) for k in sec]
    keys += [k for k, v in tree.items() if not isinstance(v, dict) and k != "preset"]  # preset: --preset itself
    assert len(keys) > 40
    train_help = run(train_cmd("--help"), check=True).stdout
    eval_help = run(eval_cmd("--help"), check=True).stdout
    for k in keys:
        assert f"--{k}=" in train_help, k
        assert (f"--{k}=" in eval_help) == k.startswith(("data.", "eval.", "train.")), k
    assert "--optim.lr=FLOAT  (default: 0.01)" in train_help
    assert "--train.epochs=INT  (default: 30)" in train_help


def test_mixed_precision_auto_on_cpu_is_bf16_only_with_bf16_units():
    from cifar_dist.distributed import cpu_has_bf16_matrix_units, resolve_mixed_precision

    assert resolve(overrides=["--train.mixed_precision=auto"]).train.mixed_precision == "auto"
    assert resolve_mixed_precision("auto", use_cpu=True) == ("bf16" if cpu_has_bf16_matrix_units() else "no")
    assert resolve_mixed_precision("no", use_cpu=True) == "no"
    assert resolve_mixed_precision("bf16", use_cpu=True) == "bf16"  # asked for by name: honoured


def test_old_preset_and_model_names_still_work():
    # Renamed after the tutorial (issue 23); commands and configs written with the old names run as
    # the new ones, and the run records the new names.
    old, new = resolve("seed_fast"), resolve("tutorial_fast")
    assert old.to_dict() == new.to_dict() and old.preset == "tutorial_fast"
    assert resolve("seed").to_dict() == resolve("tutorial").to_dict()
    assert resolve(overrides=["--model.name=seed_cnn_bn"]).model.name == "tutorial_cnn_bn"
    saved = resolve("tutorial_fast").to_dict()
    saved["preset"], saved["model"]["name"] = "seed_fast", "seed_cnn"  # a checkpoint's config from before
    assert from_dict(saved).to_dict() == resolve("tutorial_fast").to_dict()


def test_each_key_is_checked_from_its_declaration():
    from cifar_dist.config import config_help

    # Bounds and choices come from the declarations: the help shows them, the check enforces them.
    assert "(one of: torch, tensor)" in config_help() and "(in [0, 8])" in config_help()
    with pytest.raises(UserError, match=r"data\.crop_pad=9 must be in \[0, 8\]"):
        resolve(overrides=["--data.crop_pad=9"])
    with pytest.raises(UserError, match="data.loader='fast' is not valid; choose one of: torch, tensor"):
        resolve(overrides=["--data.loader=fast"])
    # YAML 1.1 reads `no` as false: a Literal key with that choice gets its spelling back.
    assert resolve(overrides=["--train.mixed_precision=no"]).train.mixed_precision == "no"
    assert resolve(overrides=["--train.resume=true"]).train.resume == "true"
