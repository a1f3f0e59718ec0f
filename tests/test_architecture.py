"""The package's shape, checked from its source: kernel calls in ocirun/sys only, no
import cycle, no use of another module's private names, functions that fit a screen,
and product code only (no test or bench helpers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ocirun"
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (imports for annotations)."""
    out: list[ast.AST] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and \
                node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)
    visit(tree)
    return out


def _imports(name: str, path: Path) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for each import the module makes at run time."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((sub, None) if sub in MODULES else (base, a.name))
    return found


def test_only_ocirun_sys_loads_ctypes() -> None:
    users = [name for name, path in MODULES.items() if not name.startswith("ocirun.sys")
             and any(mod.split(".")[0] in ("ctypes", "_ctypes")
                     for mod, _ in _imports(name, path))]
    assert users == []


def test_the_import_graph_has_no_cycle() -> None:
    graph = {name: {mod for mod, _ in _imports(name, path) if mod in MODULES and mod != name}
             for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_module_uses_another_modules_private_names() -> None:
    bad = []
    for name, path in MODULES.items():
        imports = _imports(name, path)
        bad += [f"{name}: from {mod} import {what}" for mod, what in imports
                if what and what.startswith("_") and not what.startswith("__")
                and mod.startswith("ocirun") and mod != name]
        aliases = {}
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ocirun"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("ocirun") and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    aliases.get(node.value.id, name) != name and \
                    node.attr.startswith("_") and not node.attr.startswith("__"):
                bad.append(f"{name}: {aliases[node.value.id]}.{node.attr}")
    assert bad == []


def test_functions_fit_a_screen() -> None:
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


@pytest.mark.parametrize("helper", ["ocirun.seccomp.profile", "ocirun.lifecycle"])
def test_no_test_helper_or_retired_module_in_the_package(helper: str) -> None:
    assert helper not in MODULES
