"""The package's import graph has no cycle, not even one hidden by a function-local import.

A cycle that only closes inside a function body works until someone moves that import to
the top of its module (or a new caller imports the modules in another order); then the
package fails to import with a half-initialised module. So the graph is read from the
source with ``ast``, every import counted wherever it sits (except under
``if TYPE_CHECKING:``, which never runs), and must be acyclic. A package's lazy
re-exports (``__getattr__`` with ``importlib.import_module``, as in ``habactl.format`` and
``habactl.evaluation``) are not edges: they run on first attribute access, once the
package and its importer are complete.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "habactl"

# Edges allowed to close a cycle, as (importer, imported). Keep this empty: a cycle is
# broken by moving the shared piece into a module both can import.
ALLOWED: set[tuple[str, str]] = set()


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imported_names(module: str, path: Path) -> set[str]:
    """Dotted names ``module`` imports: ``import a.b`` gives a.b, ``from a import b`` gives
    a.b (a module or a name in a; resolved later)."""
    names: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name == "habactl" or name.startswith("habactl.")}


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it makes Python execute.

    Importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` and ``a/b/c``; the packages
    that contain the importer itself are left out (they are already being imported when
    it runs, and a package importing its own submodules is normal)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        if path.name == "__init__.py":
            own.add(module)
        targets: set[str] = set()
        for name in imported_names(module, path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in known and prefix not in own and prefix != module:
                    targets.add(prefix)
        graph[module] = {t for t in targets if (module, t) not in ALLOWED}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_reader_sees_function_local_imports_and_packages(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import os\n\ndef f():\n    from habactl.distill import engine\n"
        "if TYPE_CHECKING:\n    import habactl.training.dataset\n"
    )
    assert imported_names("habactl.m", source) == {"habactl.distill", "habactl.distill.engine"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    # experts.train builds networks from nets/, and nets/ knows nothing of the engine
    assert "habactl.nets.seeded" in graph["habactl.experts.train"]
    assert "habactl.nets" in graph["habactl.distill.objectives.mtt"]


def test_the_package_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.slow
@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_every_module_imports_at_top_level_in_a_fresh_interpreter(order):
    # Alphabetical (each package before its modules) and reversed (modules first): a
    # cycle closed at module level fails with a half-initialised module in one of them.
    names = sorted(modules(), reverse=order == "reverse")
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run(
        [sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
