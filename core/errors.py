"""User-facing errors: one clear message and exit status 2, never a traceback."""
from __future__ import annotations

import functools
import sys
from typing import Callable, Iterable


class UserError(Exception):
    """Something the user can fix (bad config, bad data, missing file)."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid configuration: unknown key, wrong type, unknown component name."""


class DataError(UserError):
    """Invalid dataset: missing columns, duplicate ids, unreadable images, ..."""


def list_some(items: Iterable, limit: int = 10) -> str:
    """'a, b, c (and 7 more)': show the first `limit` offenders and the count."""
    items = [str(x) for x in items]
    shown = ", ".join(items[:limit])
    rest = len(items) - limit
    return f"{shown} (and {rest} more; {len(items)} in all)" if rest > 0 else shown


def cli_entry(main: Callable[..., object]) -> Callable[..., object]:
    """Wrap a command-line main: a UserError prints `error: ...` and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(err.exit_code)

    return wrapper
