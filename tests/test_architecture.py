"""The import rules of docs/design.md, checked on the AST of every module (imports inside functions included).

The rules, once: each module belongs to the longest unit below that prefixes its name; it may import its own unit
and the units listed for it, nothing else of the project.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("core", "experiments", "feature_store", "embeddings", "ranking")
MAY_IMPORT = {
    "core": set(),                                   # the neutral base: config, MLflow, metrics, atomic writes
    "feature_store.schema": {"core"},                # the table contracts every stage reads and writes through
    "experiments": {"core", "feature_store.schema"},  # the simulator writes the contracts' tables
    "embeddings": {"core", "feature_store.schema"},   # stages: never each other, never the simulator
    "feature_store": {"core", "feature_store.schema"},
    "ranking": {"core", "feature_store.schema"},
    # The simulated A/B test wires the world, the feature store and served models together, like a user's
    # serving system: the one place that may import them all; no stage (nor the simulator) imports it.
    "experiments.ab_simulate": {"core", "feature_store.schema", "feature_store", "ranking", "experiments"},
}


def unit_of(module: str) -> str | None:
    units = [u for u in MAY_IMPORT if module == u or module.startswith(u + ".")]
    return max(units, key=len) if units else None


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every project module that `source` imports, anywhere in the file; relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {m for m in found if m.split(".")[0] in PACKAGES}


def project_modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}


def violations(root: Path) -> list[str]:
    modules = project_modules(root)
    out = []
    for name, path in modules.items():
        mine = unit_of(name)
        for target in imported_modules(path.read_text(), name, path.name == "__init__.py"):
            if target not in modules:
                continue  # a name imported from a module, not a module
            theirs = unit_of(target)
            if theirs != mine and theirs not in MAY_IMPORT[mine]:
                out.append(f"{path.relative_to(root)}: {name} ({mine}) imports {target} ({theirs})")
    return out


def module_graph(root: Path) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: {t for t in imported_modules(path.read_text(), name, path.name == "__init__.py")
                   if t in modules and t != name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for source, targets in graph.items():
        out.setdefault(unit_of(source), set()).update(unit_of(t) for t in targets if unit_of(t) != unit_of(source))
    return out


def test_no_module_breaks_the_import_rules():
    assert violations(ROOT) == []


def test_no_import_cycle_between_modules_or_packages():
    graph = module_graph(ROOT)
    assert cycles(graph) == []
    assert cycles(package_graph(graph)) == []


def test_the_checker_catches_a_stage_importing_another_stage_and_the_simulator(tmp_path):
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "feature_store" / "schema.py").write_text("from core import files\n")
    (tmp_path / "core" / "files.py").write_text("")
    (tmp_path / "experiments" / "world.py").write_text("")
    (tmp_path / "ranking" / "online.py").write_text("def f():\n    from feature_store import store\n")
    (tmp_path / "feature_store" / "store.py").write_text("from ..experiments import world\n")
    (tmp_path / "embeddings" / "train.py").write_text("import feature_store.schema\nfrom core.files import x\n")
    assert sorted(violations(tmp_path)) == [
        "feature_store/store.py: feature_store.store (feature_store) imports experiments (experiments)",
        "feature_store/store.py: feature_store.store (feature_store) imports experiments.world (experiments)",
        "ranking/online.py: ranking.online (ranking) imports feature_store (feature_store)",
        "ranking/online.py: ranking.online (ranking) imports feature_store.store (feature_store)",
    ]


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_cycles(graph, expected):
    assert cycles(graph) == expected
