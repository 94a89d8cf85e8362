"""No import cycles inside the ``deblur`` package.

A cycle (engine imported quantize, quantize imported engine) means neither module can be read,
tested or moved on its own, and it works only as long as the imports stay in functions. The
graph is read from the source, not from running it: every ``import`` statement of every module,
at the top and inside functions alike (a function-level import is a cycle that waits for its
first call).
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from pathlib import Path

import deblur

PACKAGE = "deblur"


def package_modules() -> dict[str, Path]:
    """Every module of the package, by name: ``deblur``, ``deblur.engine``, ``deblur.bench.report`` ..."""
    modules = {PACKAGE: Path(deblur.__file__)}
    for info in pkgutil.walk_packages(deblur.__path__, prefix=f"{PACKAGE}."):
        spec = importlib.util.find_spec(info.name)
        assert spec is not None and spec.origin is not None, info.name
        modules[info.name] = Path(spec.origin)
    return modules


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The module an ``ImportFrom`` names, with a relative one (``from . import x``) resolved."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``module``'s source imports, anywhere in the file.

    ``from deblur.x import y`` imports ``deblur.x.y`` where that is a module, else ``deblur.x``.
    A package's ``__init__`` that runs first is not counted: a package that re-exports its own
    modules would otherwise always be a cycle with them.
    """
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in known else base)
    return {target for target in targets if target in known and target != module}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    # Each named by its shortest cycle through its first module: enough to find the import to move.
    return [_shortest(graph, component[0], component[0], set(component)) for component in components]


def _shortest(graph: dict[str, set[str]], source: str, target: str, members: set[str]) -> list[str]:
    """The shortest path source -> ... -> target through ``members`` (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [source]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == target:
                    way = [target, node]
                    while way[-1] != source:
                        way.append(previous[way[-1]])
                    return way[::-1]
                if nxt not in previous and nxt != source:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{target} not reachable from {source}")


def test_the_package_has_no_import_cycles() -> None:
    graph = import_graph()
    assert "deblur.engine" in graph and "deblur.model" in graph  # the walk found the package
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in deblur:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_finder_names_a_cycle_and_reads_relative_and_function_level_imports(tmp_path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"x": {"y"}, "y": {"z"}, "z": set()}) == []

    source = tmp_path / "engine.py"
    source.write_text(
        "from deblur.model import DeblurNet\n"
        "from . import storage\n"
        "from .bench import report\n"
        "def f():\n"
        "    from deblur import quantize\n"
        "    import deblur.video\n"
    )
    known = {"deblur", "deblur.model", "deblur.storage", "deblur.bench", "deblur.bench.report", "deblur.quantize"}
    known.add("deblur.video")
    found = imported_modules("deblur.engine", source, known)
    assert found == {"deblur.model", "deblur.storage", "deblur.bench.report", "deblur.quantize", "deblur.video"}
