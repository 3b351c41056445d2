"""The import graph of src/imagerec keeps DESIGN.md's layers: no circles, and no module imports one above it.

Every `import` counts wherever it stands: at the top, inside a function (a lazy import is still a dependency,
only a later one) and under `if TYPE_CHECKING:`. Type-only imports count for circles too: two modules that
name each other's types cannot be read, moved or tested apart, and the circle is one refactor away from a
runtime one. Imports built from strings at run time (`importlib.import_module(name)`) are not seen.

An import names one module: `from a.b import c` is an import of `a.b.c` where that is a module, else of `a.b`.
The packages above it, which Python initialises on the way, are not counted: every module would import
`imagerec` otherwise. Importing `imagerec` itself (for `__version__`, say) is importing the face.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "imagerec"

# Top may import below, never the reverse; modules of one layer may import each other, but not in circles.
# An entry is a module, or a package with everything under it; the root package `imagerec` is only its
# __init__.py. New modules need a row here (test_every_module_has_a_layer).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("face", ("imagerec", "imagerec.__main__", "imagerec.cli", "imagerec.batch")),
    ("api", ("imagerec.api",)),
    ("outputs", ("imagerec.outputs",)),
    (
        "training glue",
        (
            "imagerec.training",
            "imagerec.pretraining",
            "imagerec.evaluation",
            "imagerec.embedding_head",
            "imagerec.recipe",
        ),
    ),
    ("engine", ("imagerec.engine",)),
    ("tasks", ("imagerec.tasks",)),
    ("transforms, models, data", ("imagerec.transforms", "imagerec.models", "imagerec.data")),
    (
        "bottom",
        (
            "imagerec.metrics",
            "imagerec.runs",
            "imagerec.records",
            "imagerec.config",
            "imagerec.registry",
            "imagerec.errors",
            "imagerec.safe_read",
            "imagerec.weights_io",
            "imagerec.progress",
        ),
    ),
)

# Within one layer: data knows nothing of models or augmentation; models take numbers, never datasets.
FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("imagerec.data", "imagerec.models"),
    ("imagerec.data", "imagerec.transforms"),
    ("imagerec.models", "imagerec.data"),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted((SRC / ROOT).rglob("*.py"))}


def imports_in(source: str, module: str, *, is_package: bool, known: set[str]) -> set[str]:
    """The modules among `known` that the code of `module` imports, anywhere in it (itself left out)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join([*anchor[: len(anchor) - node.level + 1], *([base] if base else [])])
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return (found & known) - {module}


def import_graph() -> dict[str, set[str]]:
    """Each module of the package → the modules of the package it imports."""
    modules = _modules()
    known = set(modules)
    return {
        module: imports_in(path.read_text(), module, is_package=path.name == "__init__.py", known=known)
        for module, path in modules.items()
    }


def _within(module: str, entry: str) -> bool:
    return module == entry or (entry != ROOT and module.startswith(entry + "."))


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the layer holding `module` (0 is the top), None where no row places it."""
    for index, (_, entries) in enumerate(LAYERS):
        if any(_within(module, entry) for entry in entries):
            return index
    return None


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules `start` imports, directly or through others."""
    seen: set[str] = set()
    frontier = [start]
    while frontier:
        frontier = [target for node in frontier for target in graph[node] - seen]
        seen.update(frontier)
    return seen


def find_cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """Per group of modules that reach each other (a strongly connected component): a shortest closed path
    through its first module, and the modules of the group that path leaves out."""
    reach = {module: _reachable(graph, module) for module in graph}  # a hundred modules: quadratic is fine
    grouped: set[str] = set()
    cycles = []
    for module in sorted(graph):
        if module in grouped or module not in reach[module]:
            continue
        component = {other for other in reach[module] if module in reach[other]}
        grouped |= component
        path = _cycle_through(graph, component)
        cycles.append((path, sorted(component - set(path))))
    return cycles


def _cycle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest closed path inside `component`, from its first module back to it (breadth-first)."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in its component")


def test_every_module_has_a_layer():
    unplaced = sorted(module for module in _modules() if layer_of(module) is None)
    assert not unplaced, f"modules with no row in LAYERS: {', '.join(unplaced)}"


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    lines = [
        " → ".join(path) + (f" (and in the same circle: {', '.join(more)})" if more else "") for path, more in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(lines)


def test_no_module_imports_a_higher_layer():
    upward = []
    for module, targets in sorted(import_graph().items()):
        for target in sorted(targets):
            source_layer, target_layer = layer_of(module), layer_of(target)
            if source_layer is not None and target_layer is not None and target_layer < source_layer:
                upward.append(f"{module} ({LAYERS[source_layer][0]}) → {target} ({LAYERS[target_layer][0]})")
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_no_forbidden_imports_within_a_layer():
    forbidden = [
        f"{module} → {target}"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        for source, banned in FORBIDDEN
        if _within(module, source) and _within(target, banned)
    ]
    assert not forbidden, "imports the layer rules forbid:\n" + "\n".join(forbidden)


def test_every_kind_of_import_counts():
    """The checks above are only as good as the graph: lazy, type-only, relative and package imports count."""
    source = """
import p.a
from p import b
from p.c import name
from . import d
from .e import name
if TYPE_CHECKING:
    from p.f import Type
def later():
    from p.g import name
    import p.h as h
"""
    known = {"p", *(f"p.{m}" for m in "abcdefgh"), "p.sub", "p.x"}
    assert imports_in(source, "p.x", is_package=False, known=known) == {f"p.{m}" for m in "abcdefgh"}
    in_package = "from .. import x\nfrom . import b"  # in p/sub/__init__.py, where `.` is p.sub itself
    assert imports_in(in_package, "p.sub", is_package=True, known=known) == {"p.x"}
    assert imports_in("import p\nfrom p import name", "p.x", is_package=False, known=known) == {"p"}


def test_cycles_are_found_and_shown_as_closed_paths():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [(["a", "b", "c", "a"], [])]
    assert find_cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"b"}}) == [(["a", "b", "a"], ["c"])]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
