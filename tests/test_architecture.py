"""The house rules, checked statically (ast, no import of the project): no import cycle among the
modules of container/, bench/ and search/, dependencies one way (container <- bench <- search), and
no module over MAX_LINES lines.

Every import counts, wherever it is written: at the top, inside a function (a lazy import that
dodges a cycle at run time is still a cycle in the design) or under `if TYPE_CHECKING:`.
`from package import name` depends on the submodule `package.name` where that is a module, else on
the package itself. Importing a submodule also runs its parents' __init__, but those implicit edges
are left out: every module would otherwise be in a cycle with its own package.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("container", "bench", "search")  # each may import only those before it
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> list[tuple[str, int]]:
    """(imported project module, line) for every import in `source`, at any depth."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y / from .. import y
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}" if base else alias.name
                found.append((submodule if submodule in known else base, node.lineno))
    return [(name, line) for name, line in found if name in known and name != module]


def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    """module -> {imported module: first line importing it}."""
    modules = project_modules()
    known = set(modules)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in imports_of(path.read_text(), name, path.name == "__init__.py", known):
            edges.setdefault(target, line)
        graph[name] = edges
    return graph, modules


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def shortest_cycle(graph: dict[str, dict[str, int]], members: set[str], start: str) -> list[str]:
    """A shortest import cycle through `start` within its component, as a path that ends where it starts."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    return paths[v] + [start]
                if w in members and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # cannot happen in a strongly connected component


def cycles_of(graph: dict[str, dict[str, int]], component: list[str]) -> list[list[str]]:
    """One shortest cycle through each module of the component, without repeats: what to cut."""
    seen: set[tuple[str, ...]] = set()
    cycles = []
    for start in component:
        cycle = shortest_cycle(graph, set(component), start)
        pivot = cycle.index(min(cycle[:-1]))
        key = tuple(cycle[pivot:-1] + cycle[:pivot])  # the same cycle from any of its modules
        if key not in seen:
            seen.add(key)
            cycles.append(cycle)
    return cycles


def describe(graph: dict[str, dict[str, int]], modules: dict[str, Path], cycle: list[str]) -> str:
    return ", ".join(f"{a} -> {b} ({modules[a].relative_to(ROOT)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:]))


def test_the_import_collector_sees_every_kind_of_import():
    known = {"container", "container.fast", "container.fast.infer", "bench", "bench.kit", "search.study"}
    source = """
import bench
from container.fast import infer, attention_dtype
from . import kit
def lazy():
    from search.study import feasible
if TYPE_CHECKING:
    import container
import torch
"""
    found = {name for name, _ in imports_of(source, "bench.report", False, known)}
    assert found == {"bench", "container.fast.infer", "container.fast", "bench.kit", "search.study", "container"}


def test_no_import_cycle():
    graph, modules = import_graph()
    components = strongly_connected(graph)
    report = [f"  modules in a cycle: {', '.join(c)}\n    " + "\n    ".join(
        f"cycle: {describe(graph, modules, cycle)}" for cycle in cycles_of(graph, c)) for c in components]
    assert not components, "import cycles (function-local imports included):\n" + "\n".join(report)


def test_dependencies_run_container_bench_search():
    graph, modules = import_graph()
    layer = {name: LAYERS.index(name.split(".")[0]) for name in graph}
    upward = [f"  {a} -> {b} ({modules[a].relative_to(ROOT)}:{line})"
              for a, edges in sorted(graph.items()) for b, line in sorted(edges.items()) if layer[b] > layer[a]]
    assert not upward, "imports against the direction container <- bench <- search:\n" + "\n".join(upward)


def test_no_module_is_too_long():
    lengths = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in project_modules().values()}
    long = [f"  {path}: {n} lines" for path, n in sorted(lengths.items(), key=lambda kv: -kv[1]) if n > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_is_found(layer):
    # a guard for the checks above: an empty graph would pass them all
    assert any(name.split(".")[0] == layer for name in project_modules())


def test_cycle_finder_on_a_small_graph():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"e": 5}}
    assert strongly_connected(graph) == [["a", "b", "c"]]  # a self-import is not a module cycle
    assert cycles_of(graph, ["a", "b", "c"]) == [["a", "b", "c", "a"]]
