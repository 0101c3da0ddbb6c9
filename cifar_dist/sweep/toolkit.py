"""Everything the search takes from the rest of cifar-dist, in one place: when the package is
regrouped (config/, train/, ...), only these imports move.

The search never trains in its own process: each trial is a `train.py` run started through the
launcher, so all it needs here is the config's declarations (to check a space) and its resolver
(to check a trial's whole config before anything is written).
"""

from __future__ import annotations

from ..config import Config, resolve
from ..config.keys import bounds_text, choices_of, coerce, declared_keys, in_bounds
from ..errors import UserError, print_error

__all__ = [
    "Config",
    "UserError",
    "bounds_text",
    "choices_of",
    "coerce",
    "declared_keys",
    "in_bounds",
    "print_error",
    "resolve",
]
