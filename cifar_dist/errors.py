"""User-facing errors: one line on stderr, exit code 2, no traceback unless --debug."""
from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix. The message says what is wrong and what to do."""

    exit_code = 2
