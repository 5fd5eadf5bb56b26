"""User-facing errors: one clear message and exit status 2, never a traceback."""
from __future__ import annotations

import functools
import re
import sys
from typing import Callable, Iterable

from tqdm import tqdm


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


# torch re-raises an exception from a DataLoader worker (or its pin-memory thread) as the same
# class, with this header and the worker's whole traceback as the message.
_WORKER_WRAPPER = re.compile(r"\ACaught \w+ (?:in|from) [^\n]*\.\nOriginal Traceback")


def original_message(err: BaseException) -> str:
    """The message `err` was raised with: for an exception torch re-raised from a DataLoader
    worker, the worker's own message without torch's header and traceback."""
    text = str(err)
    if not _WORKER_WRAPPER.match(text):
        return text
    # The worker's traceback ends with "module.Class: message" (just "Class: " for builtins).
    cls = type(err)
    heads = [f"\n{cls.__module__}.{cls.__qualname__}: ", f"\n{cls.__qualname__}: "]
    found = [(text.rfind(head), head) for head in heads]
    start, head = max(found)
    if start < 0:
        return text.rstrip().rsplit("\n", 1)[-1]
    return text[start + len(head):].strip()


def _end_progress_bars() -> None:
    """Close the progress bars the failure left open, so the error starts a line of its own
    instead of following the bar (which would also be redrawn after it at exit)."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def cli_entry(main: Callable[..., object]) -> Callable[..., object]:
    """Wrap a command-line main: a UserError prints `error: ...` and exits with status 2, also
    when a DataLoader worker raised it (torch's worker traceback is left out)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            _end_progress_bars()
            print(f"error: {original_message(err)}", file=sys.stderr)
            sys.exit(err.exit_code)

    return wrapper
