"""The layers, in one line: core <- data, zoo, losses, matchers, detectors <- engine <- train.py, eval.py,
scripts/ (and the `python -m` programs, `__main__.py`). A module imports only from its own package and
from lower layers; the middle layer's packages do not import each other; no module imports itself back
through others. Every import counts: at the top, inside functions, and the module names given to
`Registry.register_lazy`.

Inside engine the same rule holds between its rooms (ENGINE_ROOMS): the shared modules at its root <-
scoring, reproduce <- matching, training, outputs <- prepare <- the tasks (identify, cluster) and detection
<- review (a person's answers applied to either task's run) <- components. A room imports only itself and
lower rooms, never a sibling: a task never imports another."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

from conftest import REPO

LAYERS = {"core": 0, "data": 1, "zoo": 1, "losses": 1, "matchers": 1, "detectors": 1, "engine": 2}
PROGRAM = 3  # train.py, eval.py, scripts/*.py and every __main__.py
# engine's rooms: its sub-packages and the root modules named here; every other root module is 0.
ENGINE_ROOMS = {"scoring": 1, "reproduce": 1, "matching": 2, "training": 2, "outputs": 2, "prepare": 3,
                "identify": 4, "cluster": 4, "detection": 4, "review": 5, "components": 6}


def module_files() -> Dict[str, Path]:
    """Dotted module name -> file, for every package of the layers and every program."""
    found = {}
    for path in sorted(REPO.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[0] in LAYERS or parts[0] == "scripts" or parts in (("train",), ("eval",)):
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def layer(module: str) -> int:
    top = module.split(".")[0]
    return PROGRAM if top not in LAYERS or module.endswith("__main__") else LAYERS[top]


def imported(path: Path, modules: Set[str]) -> Iterator[Tuple[str, int]]:
    """(module of ours imported, line) for each import in the file, wherever it stands."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pkg import mod` imports the module pkg.mod; `from pkg import name` the package.
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "register_lazy"
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            names = [node.args[1].value]
        for name in names:
            while name not in modules and "." in name:  # `import a.b.c` of a name inside a.b
                name = name.rsplit(".", 1)[0]
            if name in modules:
                yield name, node.lineno


def import_graph() -> Dict[str, Dict[str, int]]:
    modules = module_files()
    return {m: dict(imported(path, set(modules))) for m, path in modules.items()}


def engine_room(module: str) -> Tuple[str, int]:
    """(room, level) of an engine module: `engine.scoring.voting` -> ("scoring", 1)."""
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else ""
    return (name, ENGINE_ROOMS[name]) if name in ENGINE_ROOMS else ("", 0)


def room_violation(module: str, target: str) -> bool:
    (own, level), (other, target_level) = engine_room(module), engine_room(target)
    return own != other and (target_level > level or (target_level == level and level > 0))


def layer_violations(graph: Dict[str, Dict[str, int]]) -> List[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        for target, line in sorted(targets.items()):
            own, other = module.split(".")[0], target.split(".")[0]
            if own == other == "engine" and room_violation(module, target):
                problems.append(f"{module} (line {line}) imports {target}: inside engine a room imports only "
                                "itself and lower rooms (tests/test_layers.py ENGINE_ROOMS)")
                continue
            if own == other and layer(module) != PROGRAM:
                continue
            if layer(target) > layer(module) or (layer(target) == layer(module) and own != other):
                problems.append(f"{module} (line {line}) imports {target}: layer {layer(module)} may import only "
                                f"its own package and lower layers")
    return problems


def cycles(graph: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_from_a_higher_layer_or_a_sibling_package():
    assert layer_violations(import_graph()) == []


def test_no_import_cycles_between_modules():
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_are_for(tmp_path):
    graph = {"data.images": {"engine.array_cache": 3}, "detectors.export": {"zoo.published": 7},
             "zoo.published": {"detectors.export": 9}, "engine.x": {"core.y": 1}, "zoo.__main__": {"detectors": 2},
             "engine.cluster.tuning": {"engine.identify.decision": 4, "engine.scoring.voting": 5},
             "engine.scoring.voting": {"engine.matching.scorer": 6, "engine.retrieval": 7},
             "engine.retrieval": {"engine.crops": 8, "engine.outputs.html": 9}}
    assert [p.split(" ")[0] for p in layer_violations(graph)] == [
        "data.images", "detectors.export", "engine.cluster.tuning", "engine.retrieval", "engine.scoring.voting",
        "zoo.published"]
    assert cycles(graph) == [["detectors.export", "zoo.published"]]
    probe = tmp_path / "probe.py"
    probe.write_text('def f():\n    import engine.tables.x\nR.register_lazy("yolo", "detectors.yolo", requires="x")\n')
    assert sorted(imported(probe, {"engine.tables", "detectors.yolo"})) == [("detectors.yolo", 3), ("engine.tables", 2)]
