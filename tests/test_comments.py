"""Comments and docstrings say why, in words; measured figures (timings, speed-ups, scores before and
after a change) live in docs/results.md with their machine and date, where they can be rerun and
replaced. Checked in every package, the engine and the two programs."""
from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path
from typing import Iterator, Tuple

from conftest import REPO

CHECKED = ("core", "data", "zoo", "losses", "matchers", "detectors", "engine", "train.py", "eval.py")

FIGURES = re.compile("|".join([
    r"\b\d+(?:\.\d+)?\s?(?:ms|us|µs)\b",  # a duration in milli- or microseconds
    r"\b\d+\.\d+\s?s\b",  # a duration in seconds with decimals (0.25 s)
    r"\b\d+(?:\.\d+)?\s?s (?:with|and|per)\b",  # 39 s with it, 45 s per 1,000 queries
    r"\b\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?x\b",  # a speed-up: 3.4x, 2-3x
    r"\d(?:\.\d+)? -> \d",  # a score before and after: 0.46 -> 0.66
    r"\d[\d.,]* against \d",  # one figure against another: 0.49 against 0.55
]))


def comments_and_docstrings(path: Path) -> Iterator[Tuple[int, str]]:
    source = path.read_text()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                yield node.body[0].lineno, docstring


def figures_in(path: Path) -> list:
    """The figures found, each as "line: 'figure'"."""
    return [f"{line}: {found.group(0)!r}" for line, text in comments_and_docstrings(path)
            for found in FIGURES.finditer(text)]


def test_the_figure_patterns_catch_benchmark_history_and_spare_settings(tmp_path):
    history = tmp_path / "history.py"
    history.write_text('"""int8 won (3.4x on an AMD EPYC); eval.py took 39 s with it and 32.5 s with int8."""\n'
                       "X = 1  # norms cost 18 us for 157 keypoints; lions 0.46 -> 0.66; rank-1 0.49 against 0.55\n"
                       "Y = 2  # one thread is 2-3x faster than two, and the import takes ~1.5 s\n")
    settings = tmp_path / "settings.py"
    settings.write_text('"""A YOLOv8-n at 320 px for 10 minutes; 32 MB of float32; bytes less 0x80 as int8."""\n'
                        "Z = 3  # (int) checkpoint every 200 steps; 3 minutes on 2 cores; a 3x3 kernel\n")
    found = sorted(figure.split(": ", 1)[1] for figure in figures_in(history))
    assert found == sorted(["'3.4x'", "'39 s with'", "'32.5 s'", "'18 us'", "'0.46 -> 0'", "'0.49 against 0'",
                            "'2-3x'", "'1.5 s'"])
    assert figures_in(settings) == []


def _python_files(place: Path) -> list:
    return [place] if place.is_file() else sorted(place.rglob("*.py"))


def test_no_comment_or_docstring_carries_a_measured_figure():
    found = [f"{path.relative_to(REPO)}:{figure}" for folder in CHECKED
             for path in _python_files(REPO / folder) for figure in figures_in(path)]
    assert not found, "move these figures to docs/results.md (with the machine), keep the why in words:\n" + \
        "\n".join(found)
