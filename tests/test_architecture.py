"""The package's shape: no import circle, strategies that never import each other, and
Lightning reached through one module."""

from __future__ import annotations

import ast
from pathlib import Path

import vtss_lightning

ROOT = Path(vtss_lightning.__file__).resolve().parent
STRATEGIES = {"retrain", "parallel", "halving", "ray"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Package modules ``path`` imports anywhere (lazy imports too), except under
    ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in node.body
        for n in ast.walk(child)
    }
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from pkg import submodule` is an edge to the submodule
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in MODULES else node.module)
    return {m for m in out if m in MODULES}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def test_the_import_graph_has_no_circle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_no_strategy_imports_another():
    prefix = "vtss_lightning.search.strategies."
    for name in STRATEGIES:
        others = {prefix + o for o in STRATEGIES - {name}}
        assert not GRAPH[prefix + name] & others, name


def test_lightning_is_imported_at_run_time_only_through_the_compat_module():
    allowed = {"_lightning.py", "cli.py"}  # the CLI needs LightningCLI itself
    for name, path in MODULES.items():
        if path.name in allowed:
            continue
        tree = ast.parse(path.read_text())
        guarded = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in guarded or not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            assert not any(
                (n or "").split(".")[0] in ("pytorch_lightning", "lightning") for n in names
            ), f"{name} imports Lightning directly"
