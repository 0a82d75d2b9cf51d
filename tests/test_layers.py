"""The import rules of docs/architecture.md, checked on the source (every `import`, also those inside functions):
no module imports a layer above its own, and no two modules import each other, directly or in a ring.

`KNOWN` lists the violations that exist today (none since issue 16). It is a ratchet: a new violation fails,
and so does a listed one that is gone, so the list can only shrink and always says what is left."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nca_scale"
ORDER = ["base", "nca", "data", "model", "train", "launch", "analysis", "cli"]  # docs/architecture.md

KNOWN: set[str] = set()  # empty since issue 16: every import goes down, no cycles


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else "base"  # config.py, errors.py, ...


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports. `from pkg import name` counts as importing the submodule
    pkg.name when there is one, else pkg itself."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                subs = [f"{base}.{alias.name}" for alias in node.names]
                targets = [s if s in files else base for s in subs]
            else:
                continue
            graph[module].update(t for t in targets if t in files and t != module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations() -> set[str]:
    graph = import_graph()
    upward = {f"{m} -> {t}" for m, targets in graph.items() for t in targets
              if ORDER.index(layer(t)) > ORDER.index(layer(m))}
    return upward | {"cycle: " + ", ".join(c) for c in cycles(graph)}


def test_the_checker_sees_an_upward_import_and_a_cycle():
    graph = {"nca_scale.nca.a": {"nca_scale.train.b"}, "nca_scale.train.b": {"nca_scale.nca.a"}}
    assert cycles(graph) == [["nca_scale.nca.a", "nca_scale.train.b"]]
    assert layer("nca_scale.config") == "base" and layer("nca_scale.cli.train") == "cli"
    assert import_graph()["nca_scale.cli.train"]  # it parses real imports (the CLI imports the library)


def test_imports_go_one_direction_without_cycles():
    found = violations()
    new, gone = found - KNOWN, KNOWN - found
    assert not new, f"imports against docs/architecture.md's layer order or in a cycle: {sorted(new)}"
    assert not gone, f"fixed, so remove from KNOWN in tests/test_layers.py: {sorted(gone)}"
