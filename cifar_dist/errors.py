"""User-facing errors: one line on stderr, exit code 2, no traceback unless --debug.

raise UserError("data.root ./x does not exist; pass --data.root=DIR")   # -> "error: data.root ..."
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """Bad input the user can fix. The message says what is wrong and what to do."""

    exit_code = 2


def first_line(exc: BaseException | str, limit: int = 200) -> str:
    """An exception's (or a text's) first line, at most `limit` characters; an exception without
    text gives its type name."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__ if isinstance(exc, BaseException) else ""


def print_error(message: str) -> None:
    """The one-line error format: `error: <what is wrong>; <what to do>` on stderr."""
    print(f"error: {message}", file=sys.stderr, flush=True)
