"""scripts/ as a user finds it: the tools at its top, the benchmarks in scripts/bench/ with a README row
each that links to where their figures are, every script starting (`--help`), none editing sys.path
(they import reidzoo as installed), and every script a document or docstring names present."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import List

import pytest
from conftest import BENCH, REPO

TOOLS = REPO / "scripts"
HELPERS = {"benchmarking", "bench_cluster_real", "bench_cluster_lodo", "bench_review_lodo", "bench_review_ceiling"}  # imported by the benchmarks, not run on their own


def _is_sys_path(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
            and node.value.id == "sys")


def sys_path_edits(path: Path) -> List[int]:
    """Lines that change the module search path: a call on sys.path (insert, append, ...), an assignment
    to it or to a slice of it, or site.addsitedir."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if _is_sys_path(node.func.value) or node.func.attr == "addsitedir":
                lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_is_sys_path(t.value if isinstance(t, ast.Subscript) else t) for t in targets):
                lines.append(node.lineno)
    return sorted(lines)


def programs() -> List[Path]:
    return sorted(TOOLS.glob("*.py")) + sorted(p for p in BENCH.glob("*.py") if p.stem not in HELPERS)


def test_the_sys_path_check_finds_every_kind_of_edit(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import site, sys\nprint(sys.path)\nsys.path.insert(0, 'x')\nsys.path[:0] = ['x']\n"
                     "sys.path += ['x']\nsys.path = ['x']\nsite.addsitedir('x')\nn = len(sys.path)\n")
    assert sys_path_edits(probe) == [3, 4, 5, 6, 7]


def test_no_script_edits_sys_path():
    found = [f"{path.relative_to(REPO)}:{line}" for path in sorted(TOOLS.rglob("*.py"))
             for line in sys_path_edits(path)]
    assert not found, "scripts import reidzoo as installed (docs/install.md); remove:\n" + "\n".join(found)


@pytest.mark.parametrize("path", programs(), ids=lambda p: str(p.relative_to(TOOLS)))
def test_every_script_starts_and_prints_its_usage(path, capsys):
    module = importlib.import_module(path.stem if path.parent == BENCH else f"scripts.{path.stem}")
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(document: Path) -> set:
    return {github_anchor(line.lstrip("#")) for line in document.read_text().splitlines() if line.startswith("#")}


def test_the_anchor_of_a_heading_is_githubs():
    assert github_anchor(" Clustering (eval.py task=cluster, AnimalCLEF 2026 layout)") == \
        "clustering-evalpy-taskcluster-animalclef-2026-layout"
    assert github_anchor("Training recipes (`configs/train/`)") == "training-recipes-configstrain"


def test_the_benchmarks_readme_has_a_row_per_script_and_its_links_lead_to_headings():
    readme = BENCH / "README.md"
    text = readme.read_text()
    rows = set(re.findall(r"^\| `(\w+\.py)` \|", text, re.M))
    assert rows == {p.name for p in BENCH.glob("*.py")}
    links = re.findall(r"\]\(([^)#]+\.md)#([^)]+)\)", text)
    assert links
    for target, anchor in links:
        document = (readme.parent / target).resolve()
        assert document.is_file(), target
        assert anchor in anchors(document), f"{target}#{anchor}: no such heading"


def test_every_script_a_document_or_docstring_names_exists():
    pattern = re.compile(r"scripts/[\w/]+\.py")
    texts = [REPO / name for name in ("README.md", "MODEL_ZOO.md", "train.py", "eval.py")]
    for folder in ("docs", "recipes", "configs", "scripts", "tests", "core", "data", "zoo", "losses", "matchers",
                   "detectors", "engine"):
        texts += [p for p in (REPO / folder).rglob("*") if p.suffix in (".md", ".py", ".yaml")]
    missing = sorted({f"{p.relative_to(REPO)}: {name}" for p in texts for name in pattern.findall(p.read_text())
                      if not (REPO / name).is_file()})
    assert not missing, "\n".join(missing)
