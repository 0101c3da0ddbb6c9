"""config/keys.py: how a --section.key=value becomes a nested dict, how a value is converted to the
type of its default, and the one-line errors for what does not convert.

    python -m pytest tests/unit/test_keys.py
"""

from __future__ import annotations

import pytest

from cifar_dist.config import Config
from cifar_dist.config.keys import coerce, declared_keys, in_bounds, parse_overrides
from cifar_dist.errors import UserError


def test_overrides_become_a_nested_dict_of_yaml_values():
    tree = parse_overrides(["--optim.lr=0.1", "--train.epochs", "3", "--seed=1", "--data.name=synthetic"])
    assert tree == {"optim": {"lr": 0.1}, "train": {"epochs": 3}, "seed": 1, "data": {"name": "synthetic"}}


@pytest.mark.parametrize(
    "argv,message",
    [(["optim.lr=1"], "unexpected argument"), (["--optim.lr"], "needs a value"), (["--a.b.c=1"], "bad override")],
)
def test_malformed_overrides_say_what_to_write(argv, message):
    with pytest.raises(UserError, match=message):
        parse_overrides(argv)


@pytest.mark.parametrize(
    "value,current,expected",
    [
        ("yes", False, True),
        ("0", True, False),
        ("12", 1, 12),
        ("1e-3", 0.1, 0.001),
        ("0.9,0.99", [0.9, 0.999], [0.9, 0.99]),
        ("{depth: 2}", {}, {"depth": 2}),
        (True, "auto", "true"),
    ],
)
def test_values_convert_to_the_type_of_the_default(value, current, expected):
    assert coerce("k", value, current) == expected


@pytest.mark.parametrize("value,current", [("maybe", False), ("1.5", 1), (True, 1), ("x", 0.1), ({}, "s")])
def test_values_that_do_not_convert_are_one_line_errors(value, current):
    with pytest.raises(UserError, match="^k must be"):
        coerce("k", value, current)


def test_every_key_is_declared_with_help_and_a_default_in_its_bounds():
    import dataclasses

    keys = declared_keys(Config)
    assert len(keys) > 50 and keys[0][0] == "seed"
    for path, f, _ in keys:
        assert f.metadata["help"], path
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            assert in_bounds(default, f.metadata["bounds"]), path


@pytest.mark.parametrize(
    "overrides, warned",
    [
        (["--optim.name=adamw"], True),  # the preset's SGD lr 0.1 kept
        (["--optim.name=adamw", "--optim.lr=0.001"], False),
        (["--optim.name=sgd"], False),
        (["--optim.name=muon", "--optim.muon_companion=adamw"], True),
        (["--optim.name=muon"], False),  # the companion is SGD
    ],
)
def test_adamw_at_an_sgd_tuned_lr_is_warned_in_one_line(overrides, warned):
    from cifar_dist.config import resolve
    from cifar_dist.config.rules import config_warnings

    lines = [w for w in config_warnings(resolve("tutorial_fast", None, overrides)) if "AdamW" in w]
    assert len(lines) == warned
    if warned:
        assert lines[0].startswith("warning: optim.lr=0.1 with ") and "--optim.lr" in lines[0]
        assert "\n" not in lines[0]
