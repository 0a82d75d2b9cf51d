"""The import rules of docs/architecture.md, checked on the source (every `import`, also those inside functions):
no module imports a layer above its own, and no two modules import each other, directly or in a ring. And the
backend rule: a backend is one folder of nca_scale/train/backends/ and one line of its registry; nothing outside
that package names one.

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


# ---- backends ---------------------------------------------------------------------------------------------------
BACKENDS = PACKAGE / "train" / "backends"
REGISTRY = "nca_scale.train.backends"


def backend_folders() -> set[str]:
    return {p.name for p in BACKENDS.iterdir() if (p / "__init__.py").is_file()}


def naming(source: str, where: str, names: set[str]) -> list[str]:
    """Where the module `source` (file `where`) names a backend: imports one's modules (`nca_scale.train.backends.<name>...`,
    also `from nca_scale.train.backends import <name>`) or its library (a top-level package named like a backend;
    torch, every backend's base, excepted), or holds its name as a string, an attribute or a keyword
    (`== "megatron"`, `cfg.megatron`, `replace(cfg, megatron=...)`). The user's `backend:` value and the config's
    sections go through the registry (backends.get, backends.sections())."""
    libraries = names - {"torch"}
    found = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Import):
            hits = [a.name for a in node.names if a.name.split(".")[0] in libraries or a.name.startswith(REGISTRY + ".")]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            m = node.module
            hits = [m] if m.split(".")[0] in libraries or m.startswith(REGISTRY + ".") else []
            hits += [f"{m}.{a.name}" for a in node.names if m == REGISTRY and a.name in names]
        elif isinstance(node, ast.Constant) and node.value in names:
            hits = [repr(node.value)]
        elif isinstance(node, ast.Attribute) and node.attr in names:
            hits = ["." + node.attr]
        elif isinstance(node, ast.keyword) and node.arg in names:
            hits = [node.arg + "="]
        else:
            continue
        found += [f"{where}:{node.lineno}: {hit}" for hit in hits]
    return found


def backend_naming() -> list[str]:
    names = backend_folders()
    return [hit for path in sorted(PACKAGE.rglob("*.py")) if BACKENDS not in path.parents
            for hit in naming(path.read_text(), str(path.relative_to(PACKAGE.parent)), names)]


def test_a_backend_is_one_folder_and_one_registry_line():
    from nca_scale.train import backends
    from nca_scale.train.config import TrainConfig

    assert set(backends.REGISTRY) == backend_folders(), "a folder of train/backends/ without its registry line, or a " \
        "registry line without its folder"
    fields = TrainConfig.__dataclass_fields__
    for b in backends.sections():  # a backend's own keys are TrainConfig's section of its name
        assert b.name in fields and fields[b.name].default_factory is b.section, b.name


def test_nothing_outside_the_backends_names_one():
    found = backend_naming()
    assert not found, f"backend names outside train/backends/ (ask the registry, train/backends/__init__.py): {found}"


def test_the_checker_sees_a_backend_named():
    planted = ("import deepspeed.comm\nfrom nca_scale.train.backends.megatron.engine import MegatronEngine\n"
               "from nca_scale.train.backends import torch\nimport torch.nn\nfrom nca_scale.train import backends\n"
               "def f(cfg):\n    return cfg.backend == 'megatron' or cfg.deepspeed.zero or replace(cfg, torch=1)\n")
    got = [hit.split(": ", 1)[1] for hit in naming(planted, "planted.py", backend_folders())]
    assert got == ["deepspeed.comm", "nca_scale.train.backends.megatron.engine", "nca_scale.train.backends.torch",
                   "'megatron'", ".deepspeed", "torch="], got
