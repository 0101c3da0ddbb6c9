"""The search space file: which config keys to search, how, and what to optimise. Checked against
the config's own key declarations before anything is written; every mistake is one line (UserError).

    preset: tutorial_fast          # the base recipe
    objective: val_accuracy        # val_accuracy (max), val_loss (min), test_accuracy (max; needs val_fraction=0)
    trials: 12                     # finished trials the study ends with (retries and requeues not counted twice)
    sampler: tpe                   # tpe (default), random, grid (every param a list of choices)
    seed: 0                        # the sampler's seed (each worker adds its index)
    pruner: {name: median, n_startup_trials: 2}     # median (default), percentile, hyperband, threshold, none
    fixed: {data.name: synthetic, train.epochs: 4}  # overrides every trial gets
    params:
      optim.lr: {low: 0.01, high: 1.0, log: true}   # a float key: suggest_float; an int key: suggest_int
      optim.weight_decay: {low: 1.0e-5, high: 1.0e-2, log: true}
      model.dropout: [0.0, 0.1, 0.3]                 # a list: categorical choices
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .toolkit import UserError, bounds_text, choices_of, coerce, declared_keys, in_bounds, resolve

OBJECTIVES = {"val_accuracy": "maximize", "val_loss": "minimize", "test_accuracy": "maximize"}
SAMPLERS = ("tpe", "random", "grid")
TOP_LEVEL = ("preset", "objective", "trials", "sampler", "seed", "pruner", "fixed", "params", "launch")
RESERVED = {"run.dir", "train.resume"}  # the sweep sets these for every trial


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # "float", "int" or "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()


@dataclass
class Space:
    preset: str
    objective: str
    trials: int
    sampler: str
    seed: int
    pruner: dict
    fixed: dict
    params: list[Param]
    launch: str = ""
    source: str = field(default="", compare=False)

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective]

    def fingerprint(self) -> str:
        """What must match for a study folder to be continued: all but `trials` (a study may be
        extended) and `launch` (the same search may run locally and on a cluster)."""
        d = asdict(self)
        for k in ("trials", "launch", "source"):
            d.pop(k)
        return json.dumps(d, sort_keys=True, default=str)

    def overrides(self, params: dict) -> list[str]:
        """The trial's command-line overrides: the preset, the fixed keys, then its parameters."""
        values = {**self.fixed, **params}
        return ["--preset", self.preset, *(f"--{k}={cli_value(v)}" for k, v in values.items())]


def cli_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def key_table() -> dict:
    """dotted key -> (dataclass field, type hint, default) for every config key."""
    from dataclasses import MISSING

    out = {}
    for path, f, kind in declared_keys(_config_cls()):
        out[path] = (f, kind, f.default_factory() if f.default is MISSING else f.default)
    return out


def _config_cls():
    from .toolkit import Config

    return Config


def load_space(path: str | Path) -> Space:
    """Read and check a space file; raises a one-line UserError for any mistake in it."""
    import yaml

    src = str(path)
    try:
        tree = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"space file {src} does not exist") from None
    except yaml.YAMLError as e:
        raise UserError(f"space file {src} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise UserError(f"{src}: must be a mapping with params:, objective:, trials: ...")
    unknown = [k for k in tree if k not in TOP_LEVEL]
    if unknown:
        raise UserError(f"{src}: unknown entry '{unknown[0]}'; valid entries: {', '.join(TOP_LEVEL)}")
    keys = key_table()
    space = Space(
        preset=str(tree.get("preset", "tutorial")),
        objective=_choice(src, "objective", tree.get("objective", "val_accuracy"), tuple(OBJECTIVES)),
        trials=_positive_int(src, "trials", tree.get("trials")),
        sampler=_choice(src, "sampler", tree.get("sampler", "tpe"), SAMPLERS),
        seed=_int(src, "seed", tree.get("seed", 0)),
        pruner=_pruner(src, tree.get("pruner", "median")),
        fixed=_fixed(src, tree.get("fixed") or {}, keys),
        params=_params(src, tree.get("params"), keys),
        launch=str(tree.get("launch") or ""),
        source=src,
    )
    if space.objective != "test_accuracy":  # best.pt (what the trial tests) picked by the objective
        space.fixed.setdefault("train.best_metric", space.objective)
    _check_together(src, space)
    return space


def _choice(src: str, name: str, value, choices: tuple) -> str:
    if value not in choices:
        raise UserError(f"{src}: {name}={value!r} is not valid; choose one of: {', '.join(choices)}")
    return value


def _int(src: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{src}: {name} must be an integer, got {value!r}")
    return value


def _positive_int(src: str, name: str, value) -> int:
    if value is None:
        raise UserError(f"{src}: says no '{name}:' (how many trials the study ends with)")
    if _int(src, name, value) < 1:
        raise UserError(f"{src}: {name} must be >= 1, got {value}")
    return value


def _pruner(src: str, spec) -> dict:
    from .pruning import PRUNERS, build_pruner

    spec = {"name": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, dict) or spec.get("name") not in PRUNERS:
        raise UserError(f"{src}: pruner must be one of {', '.join(PRUNERS)} (or {{name: ..., options}}), got {spec!r}")
    try:
        build_pruner(spec)
    except (TypeError, ValueError) as e:
        raise UserError(f"{src}: pruner {spec['name']}: {str(e).splitlines()[0]}") from None
    return dict(spec)


def _flatten(src: str, what: str, tree) -> dict:
    """{'optim': {'lr': ..}} or {'optim.lr': ..} -> {'optim.lr': ..}."""
    if not isinstance(tree, dict):
        raise UserError(f"{src}: {what} must be a mapping of config keys (optim.lr: ...)")
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict) and "." not in str(k) and what == "fixed":
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            flat[str(k)] = v
    return flat


def _known(src: str, what: str, key: str, keys: dict) -> None:
    if key in RESERVED:
        raise UserError(f"{src}: {what} {key} is set by the sweep for every trial; remove it")
    if key not in keys:
        close = difflib.get_close_matches(key, list(keys), n=1)
        hint = f"did you mean {close[0]}?" if close else "`python train.py --help` lists every key"
        raise UserError(f"{src}: unknown key '{key}' in {what}; {hint}")


def check_value(src: str, key: str, value, keys: dict):
    """A value converted to the key's type and checked against its choices and bounds."""
    f, kind, default = keys[key]
    choices = choices_of(f, kind)
    try:
        value = coerce(key, value, default, choices)
    except UserError as e:
        raise UserError(f"{src}: {e}") from None
    if choices is not None and value not in choices and value not in f.metadata["aliases"]:
        raise UserError(f"{src}: {key}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")
    if isinstance(value, (int, float)) and not in_bounds(value, f.metadata["bounds"]):
        raise UserError(f"{src}: {key}={value!r} must be {bounds_text(f.metadata['bounds'])}")
    return value


def _fixed(src: str, tree, keys: dict) -> dict:
    fixed = {}
    for key, value in _flatten(src, "fixed", tree).items():
        _known(src, "fixed", key, keys)
        fixed[key] = check_value(src, key, value, keys)
    return fixed


def _params(src: str, tree, keys: dict) -> list[Param]:
    if not tree:
        raise UserError(f"{src}: says no 'params:' (the config keys to search, e.g. optim.lr: {{low: 0.01, high: 1}})")
    return [_param(src, key, spec, keys) for key, spec in _flatten(src, "params", tree).items()]


def _param(src: str, key: str, spec, keys: dict) -> Param:
    _known(src, "params", key, keys)
    where = f"{src}: params {key}"
    if isinstance(spec, list) or (isinstance(spec, dict) and "choices" in spec):
        choices = spec if isinstance(spec, list) else spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: an empty list of choices")
        return Param(key, "categorical", choices=tuple(check_value(src, key, c, keys) for c in choices))
    if not isinstance(spec, dict) or "low" not in spec or "high" not in spec:
        raise UserError(f"{where}: give {{low: A, high: B}} (optional log: true, step: S) or a list of choices")
    extra = set(spec) - {"low", "high", "log", "step"}
    if extra:
        raise UserError(f"{where}: unknown option {sorted(extra)[0]!r}; a range takes low, high, log, step")
    default = keys[key][2]
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise UserError(
            f"{where}: a range on a non-numeric key (its values are {type(default).__name__}); list choices"
        )
    low, high = (check_value(src, key, spec[b], keys) for b in ("low", "high"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise UserError(f"{where}: an empty range (low {low} is not below high {high})")
    if log and low <= 0:
        raise UserError(f"{where}: a log range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 or log):
        raise UserError(f"{where}: step must be a positive number, and not with log: true")
    return Param(key, "int" if isinstance(default, int) else "float", low, high, log, step)


def _check_together(src: str, space: Space) -> None:
    """What needs several entries: the objective against the split, the grid, and one whole config."""
    if space.sampler == "grid":
        ranged = [p.key for p in space.params if p.kind != "categorical"]
        if ranged:
            raise UserError(f"{src}: sampler grid needs a list of choices for every param; {ranged[0]} is a range")
        size = 1
        for p in space.params:
            size *= len(p.choices)
        if space.trials > size:
            raise UserError(f"{src}: trials={space.trials} is more than the grid's {size} combinations")
    sample = {p.key: p.choices[0] if p.kind == "categorical" else p.low for p in space.params}
    args = space.overrides(sample)
    try:  # a bad preset, or keys that clash (the config's own cross-key rules), fail here in one line
        cfg = resolve(args[1], None, args[2:])
    except UserError as e:
        raise UserError(f"{src}: {e}") from None
    validated = cfg.data.val_fraction > 0
    if space.objective == "test_accuracy" and validated:
        raise UserError(
            f"{src}: objective test_accuracy is only for runs without validation (data.val_fraction=0); "
            f"with a validation split use val_accuracy (choosing on the test set would overfit it)"
        )
    if space.objective != "test_accuracy" and not validated:
        raise UserError(f"{src}: objective {space.objective} needs a validation split; data.val_fraction is 0")
