"""Text cells of the CSV files reidzoo writes, made safe to open in a spreadsheet.

Identity names and file names come from other people's datasets. A spreadsheet program reads a
cell that starts with `=`, `+`, `-` or `@` (or a tab or carriage return) as a formula, and a
formula can fetch data or run commands. `safe_cell` writes such a text with a single quote before
it, the spreadsheets' own mark for "this is text": `=HYPERLINK(...)` is written `'=HYPERLINK(...)`.

What is left as it is: numbers (`-1`, `+0.5`, `-2e-3`: a spreadsheet shows them as numbers and
runs nothing), every other text, and non-text cells. So a competition's identity names (which
start with a letter or digit) are written as before, and submissions stay what the graders read.

The quote is the only change, and it can be undone: `plain_cell` gives the text back, for
reidzoo's own readers of these files (a submission checked by scripts/validate_submission.py). So
that a name that already starts with quotes comes back as it was, those count as part of the
formula start: `'=x` is written `''=x`.
"""
from __future__ import annotations

import re
from typing import Any

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"
_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def _would_run(text: str) -> bool:
    """Whether a spreadsheet would read `text`, after any leading quotes, as a formula."""
    return text.lstrip(QUOTE)[:1] in FORMULA_STARTS and not _NUMBER.fullmatch(text)


def safe_cell(value: Any) -> Any:
    """The cell as written: a text a spreadsheet would run gets a leading single quote."""
    if isinstance(value, str) and value and _would_run(value):
        return QUOTE + value
    return value


def plain_cell(value: Any) -> Any:
    """The text `safe_cell` was given: its quote removed (any other cell as it is)."""
    if isinstance(value, str) and value.startswith(QUOTE) and _would_run(value[1:]):
        return value[1:]
    return value


def safe_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` whose text cells are `safe_cell`s, to pass to `to_csv`."""
    return _each_text(frame, safe_cell)


def plain_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` as read from a file of `safe_cells`, with the texts as they were given."""
    return _each_text(frame, plain_cell)


def _each_text(frame: pd.DataFrame, change) -> pd.DataFrame:
    out = frame.copy()
    for column in out.columns:
        if not (pd.api.types.is_numeric_dtype(out[column]) or pd.api.types.is_bool_dtype(out[column])):
            out[column] = out[column].map(change)
    return out
