"""How a config key is declared, converted, checked and listed: generic over the config's dataclasses
(config.py declares the keys themselves) and the command line's `--section.key=value` syntax.

    @dataclass
    class TrainConfig:
        epochs: int = key(30, "epochs to train", ge=1)
        device: Literal["auto", "cpu", "cuda"] = key("auto", "where to train")
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import field, fields
from typing import Any, Literal

from ..errors import UserError, first_line


def key(
    default, help: str, *, ge=None, gt=None, le=None, lt=None, choices=None, aliases=None, check=None, note: str = ""
):
    """Declare a config key: its default, one line saying what it does (--help), its bounds
    (ge/gt/le/lt), for a str key without a Literal type the function giving its `choices` (a
    registry), `aliases` (other spellings accepted as they are, e.g. a deprecated schedule name), `check`
    (a function raising the one-line UserError for a value of a key with open-ended values, such as
    model.name), and a `note` added to the out-of-range error."""
    meta = {"help": help, "bounds": {"ge": ge, "gt": gt, "le": le, "lt": lt}, "choices": choices}
    meta.update(aliases=aliases or {}, check=check, note=note)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def config_sections(config_cls) -> dict[str, type]:
    """section name -> its dataclass (the fields of the config whose default is a dataclass)."""
    return {f.name: f.default_factory for f in fields(config_cls) if dataclasses.is_dataclass(f.default_factory)}


def declared_keys(config_cls, sections: tuple[str, ...] | None = None) -> list[tuple[str, Any, Any]]:
    """(dotted path, dataclass field, its type) for every key (of `sections`), in declaration order;
    the top-level keys first (the preset's name is --preset's, not a key)."""
    out = []
    hints = typing.get_type_hints(config_cls)
    sections_of = config_sections(config_cls)
    if sections is None:
        out += [
            (f.name, f, hints[f.name]) for f in fields(config_cls) if f.name not in sections_of and f.name != "preset"
        ]
    for name, cls in sections_of.items():
        if sections is None or name in sections:
            hints = typing.get_type_hints(cls)
            out += [(f"{name}.{f.name}", f, hints[f.name]) for f in fields(cls)]
    return out


def choices_of(f, kind) -> tuple[str, ...] | None:
    """A key's valid values: its Literal's, or its registry's; None for a free value."""
    if typing.get_origin(kind) is Literal:
        return typing.get_args(kind)
    return f.metadata["choices"]() if f.metadata.get("choices") else None


def bounds_text(bounds: dict) -> str:
    lo = f"[{bounds['ge']}" if bounds["ge"] is not None else f"({bounds['gt']}" if bounds["gt"] is not None else None
    hi = f"{bounds['le']}]" if bounds["le"] is not None else f"{bounds['lt']})" if bounds["lt"] is not None else None
    if lo and hi:
        return f"in {lo}, {hi}"
    if lo:
        return f">= {bounds['ge']}" if bounds["ge"] is not None else f"> {bounds['gt']}"
    if hi:
        return f"<= {bounds['le']}" if bounds["le"] is not None else f"< {bounds['lt']}"
    return ""


def in_bounds(value, bounds: dict) -> bool:
    ge, gt, le, lt = (bounds[k] for k in ("ge", "gt", "le", "lt"))
    return (
        (ge is None or value >= ge)
        and (gt is None or value > gt)
        and (le is None or value <= le)
        and (lt is None or value < lt)
    )


def _get_path(cfg, path: str):
    node = cfg
    for part in path.split("."):
        node = getattr(node, part)
    return node


def check_keys(cfg) -> None:
    """Each key on its own: one of its choices (or an accepted alias), within its bounds."""
    for path, f, kind in declared_keys(type(cfg)):
        value = _get_path(cfg, path)
        choices = choices_of(f, kind)
        if choices is not None and value not in choices and value not in f.metadata["aliases"]:
            raise UserError(f"{path}={value!r} is not valid; choose one of: {', '.join(choices)}")
        if f.metadata.get("check"):
            f.metadata["check"](value)
        if not in_bounds(value, f.metadata["bounds"]):
            raise UserError(f"{path}={value!r} must be {bounds_text(f.metadata['bounds'])}{f.metadata['note']}")


def coerce(path: str, value: Any, current: Any, choices=None) -> Any:
    """Convert a YAML/CLI value to the type of the default, or raise a one-line UserError."""
    kind = type(current)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"{path} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UserError(f"{path} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise UserError(f"{path} must be an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise UserError(f"{path} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{path} must be a number, got {value!r}") from None
    if kind is dict:
        if isinstance(value, str):
            import yaml

            try:
                value = yaml.safe_load(value) if value.strip() else {}
            except yaml.YAMLError:
                raise UserError(f"{path} must be a YAML mapping such as '{{depth: 2}}', got {value!r}") from None
        if not isinstance(value, dict):
            raise UserError(f"{path} must be a YAML mapping such as '{{depth: 2}}', got {value!r}")
        return value
    if kind is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("[]()").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{path} must be a list (a,b,c), got {value!r}")
        if current and all(isinstance(v, float) for v in current):  # a list of numbers (optim.betas)
            try:
                return [float(v) for v in value]
            except (TypeError, ValueError):
                raise UserError(f"{path} must be a list of numbers (0.9,0.999), got {value!r}") from None
        return [str(v) for v in value]
    if kind is str:
        if isinstance(value, bool):  # YAML 1.1 reads true/false/yes/no unquoted as booleans
            spelled = [w for w in (("true", "yes") if value else ("false", "no")) if w in (choices or ())]
            return spelled[0] if spelled else ("true" if value else "false")
        if isinstance(value, (dict, list)):
            raise UserError(f"{path} must be a string, got {value!r}")
        return str(value)
    raise AssertionError(kind)


def _literal_choices(cls, name: str):
    kind = typing.get_type_hints(cls)[name]
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None


def parse_overrides(argv: list[str]) -> dict:
    """['--optim.lr=0.1', '--train.epochs', '3', '--seed=1'] -> nested dict of raw values."""
    import yaml

    tree: dict = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}; overrides look like --section.key=value")
        body = arg[2:]
        if "=" in body:
            key, raw = body.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, raw = body, argv[i + 1]
            i += 1
        else:
            raise UserError(f"{arg} needs a value: --{body}=VALUE")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict,)) or value is None:
            value = raw
        node = tree
        parts = key.split(".")
        if len(parts) > 2 or not all(parts):
            raise UserError(f"bad override {arg!r}; use --section.key=value (e.g. --optim.lr=0.05)")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        i += 1
    return tree


def reject_unknown_options(parser: argparse.ArgumentParser, rest: list[str], extra: tuple[str, ...] = ()) -> None:
    """A flag that is neither the parser's nor a --section.key override (nor one of `extra`) is a
    typo: say which option was probably meant, instead of a config error about a key or a value."""
    import difflib

    known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")] + ["--debug", *extra]
    for arg in rest:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and "." not in name and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"options: {', '.join(known)}, or --section.key=value"
            raise UserError(f"unknown option {name}; {hint}")


def read_yaml(config_file: str) -> dict:
    import yaml

    try:
        with open(config_file) as f:
            tree = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise UserError(f"config file {config_file} does not exist; pass a YAML file path to --config") from None
    except yaml.YAMLError as e:
        raise UserError(f"config file {config_file} is not valid YAML ({first_line(e)})") from None
    if not isinstance(tree, dict):
        raise UserError(f"config file {config_file} must hold a mapping of sections (data:, optim:, ...)")
    return tree


TYPE_NAMES = {str: "text", int: "int", float: "float", bool: "bool", list: "list", dict: "yaml-mapping"}


def keys_help(config_cls, sections: tuple[str, ...] | None = None) -> str:
    """Every config key (of `sections`, or all) with its type, default, choices or bounds and one line
    of meaning, for --help; generated from the declarations."""
    lines = []
    for path, f, kind in declared_keys(config_cls, sections):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        type_name = TYPE_NAMES.get(type(default), "text")
        choices = choices_of(f, kind)
        bounds = bounds_text(f.metadata["bounds"])
        valid = f" (one of: {', '.join(choices)})" if choices else f" ({bounds})" if bounds else ""
        lines += [f"  --{path}={type_name.upper()}  (default: {default!r})", f"        {f.metadata['help']}{valid}"]
    return "\n".join(lines)


def literal_choices(cls, name: str) -> tuple | None:
    kind = typing.get_type_hints(cls)[name]
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None
