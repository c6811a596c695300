"""The module import graph of ``mbrm``, ``planners`` and ``constraints``, read from the AST.

Run it to print module sizes, import cycles and layer violations::

    python scripts/import_graph.py [ROOT]

or import it (``tests/test_architecture.py`` does) for :func:`import_graph`,
:func:`cycles`, :func:`module_sizes` and :func:`layer_violations`.

Every ``import`` statement counts, wherever it sits: inside functions, under
``if TYPE_CHECKING:``, in ``try`` blocks. ``from pkg import name`` is an edge to
``pkg.name`` when that is a module of the tree, else to ``pkg``; relative imports
are resolved against the importing module. Importing ``a.b.c`` also runs the
``__init__`` of ``a`` and ``a.b``; those implicit edges are left out, as
import-linter and pydeps leave them out, so that a package re-exporting its
modules is not a cycle with each of them.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGES: tuple[str, ...] = ("mbrm", "planners", "constraints")

# The layer table of docs/DESIGN.md, top to bottom. A module belongs to the first
# layer with a prefix equal to its name or to a dotted parent of it; a prefix
# ending in "*" matches any name that starts with the rest.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "applications",
        ("mbrm.cli", "mbrm.options", "mbrm.labeling", "mbrm.report", "mbrm.certify", "benchmarks"),
    ),
    ("composition root", ("mbrm.run",)),
    (
        "training",
        (
            "mbrm.loop",
            "mbrm.loop_state",
            "mbrm.agent",
            "mbrm.plan_review",
            "mbrm.imagination",
            "mbrm.solicit",
            "mbrm.synthesis",
            "mbrm.episodes",
            "mbrm.calibration",
            "mbrm.evaluation",
            "mbrm.rundir",
            "mbrm.parts",
            "mbrm.settings",
            "mbrm.video",
            "mbrm.workers",
            "mbrm.progress",
        ),
    ),
    (
        "learners and data",
        (
            "mbrm.world_model*",
            "mbrm.reward_*",
            "mbrm.feedback",
            "mbrm.replay",
            "mbrm.checkpoint",
            "mbrm.preference_pairs",
            "mbrm.ensemble",
            "mbrm.ensemble_training",
            "constraints",
        ),
    ),
    ("search", ("planners",)),
    ("base", ("mbrm.nn", "mbrm.device", "mbrm.tasks", "mbrm.resources")),
)

# Which layers each layer may import from (its own included).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "applications": frozenset(
        {"applications", "composition root", "training", "learners and data", "search", "base"}
    ),
    "composition root": frozenset(
        {"composition root", "training", "learners and data", "search", "base"}
    ),
    "training": frozenset({"training", "learners and data", "search", "base"}),
    "learners and data": frozenset({"learners and data", "base"}),
    "search": frozenset({"search"}),
    "base": frozenset({"base"}),
}

APPLICATION_PREFIXES: tuple[str, ...] = ("mbrm.cli", "mbrm.labeling", "mbrm.report")


def has_prefix(module: str, prefixes: Iterable[str]) -> bool:
    """Whether ``module`` is one of ``prefixes`` or a submodule of one (``p*``: starts with p)."""
    return any(
        module.startswith(p[:-1]) if p.endswith("*") else module == p or module.startswith(p + ".")
        for p in prefixes
    )


def module_files(root: Path | str, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Map each dotted module name under ``root/<package>/`` to its source file."""
    root = Path(root)
    files: dict[str, Path] = {}
    for package in packages:
        # Sorted so that a package's __init__.py wins over a same-named module file,
        # as it does for the import system.
        paths = sorted((root / package).rglob("*.py"), key=lambda p: p.name == "__init__.py")
        for path in paths:
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
        files = dict(sorted(files.items()))
    return files


def module_sizes(root: Path | str, packages: Iterable[str] = PACKAGES) -> dict[str, int]:
    """Lines per module, largest first."""
    sizes = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in module_files(root, packages).items()
    }
    return dict(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])))


def _resolve(name: str, modules: set[str]) -> str:
    """The longest dotted prefix of ``name`` that is a module of the tree, else ``name``."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return name


def _imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """The modules ``module`` imports, internal ones resolved to a module of the tree."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_resolve(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # `from . import x` in a package is relative to the package itself.
                parts = module.split(".")
                drop = node.level - 1 if is_package else node.level
                base_parts = parts[: len(parts) - drop] if drop else parts
                if drop > len(parts) or not base_parts:
                    raise ImportError(f"{path}: relative import beyond the top-level package")
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else _resolve(base, modules))
    found.discard(module)  # self-loops (`from pkg import x` inside pkg/__init__) are ignored
    return found


def import_graph(root: Path | str, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules it imports (internal ones resolved, external ones as written).

    Keys are the modules under ``root/<package>/`` for each package; values also hold
    external names (``torch.nn``, ``numpy``, ``sqlite3``), which :func:`cycles` ignores.
    """
    files = module_files(root, packages)
    modules = set(files)
    return {name: _imports_of(name, path, modules) for name, path in files.items()}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted.

    Only edges between keys of ``graph`` count; a module importing itself is no cycle.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    def successors(v: str) -> list[str]:
        return sorted(w for w in graph[v] if w in graph and w != v)

    for start in sorted(graph):
        if start in index:
            continue
        # Iterative Tarjan: (node, iterator over its successors).
        work = [(start, iter(successors(start)))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(successors(w))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return sorted(components)


def shortest_cycle(graph: Mapping[str, set[str]], component: list[str]) -> list[str]:
    """One shortest import cycle through the first module of ``component`` (BFS)."""
    members = set(component)
    start = component[0]
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if w not in parent:
                parent[w] = v
                queue.append(w)
    return [start]


def layer_of(module: str) -> str | None:
    """The layer of ``module`` in :data:`LAYERS`, or None for a module the table omits."""
    for layer, prefixes in LAYERS:
        if has_prefix(module, prefixes):
            return layer
    return None


def layer_violations(graph: Mapping[str, set[str]]) -> list[tuple[str, str, str, str]]:
    """Internal edges a layer may not take: (importer, its layer, imported, its layer)."""
    found = []
    for src in sorted(graph):
        src_layer = layer_of(src)
        if src_layer is None:
            continue
        for dst in sorted(graph[src]):
            dst_layer = layer_of(dst) if dst in graph else None
            if dst_layer is not None and dst_layer not in MAY_IMPORT[src_layer]:
                found.append((src, src_layer, dst, dst_layer))
    return found


def main(argv: list[str] | None = None) -> int:
    """Print module sizes, import cycles and layer violations of the tree at ROOT."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else Path(__file__).resolve().parent.parent
    graph = import_graph(root)

    print("## Module sizes (lines)")
    for name, lines in module_sizes(root).items():
        flag = "  > 400" if lines > 400 else ""
        print(f"{lines:6d}  {name}{flag}")

    found = cycles(graph)
    print(f"\n## Import cycles: {len(found)}")
    for i, component in enumerate(found, 1):
        print(f"{i}. {len(component)} modules: {', '.join(component)}")
        print(f"   e.g. {' -> '.join(shortest_cycle(graph, component))}")
        members = set(component)
        for src in component:
            inside = sorted(graph[src] & members)
            if inside:
                print(f"   {src} -> {', '.join(inside)}")

    violations = layer_violations(graph)
    print(f"\n## Layer violations: {len(violations)}")
    for src, src_layer, dst, dst_layer in violations:
        print(f"{src} ({src_layer}) -> {dst} ({dst_layer})")

    unassigned = sorted(m for m in graph if layer_of(m) is None and m not in PACKAGES)
    if unassigned:
        print(f"\n## Modules in no layer of LAYERS: {', '.join(unassigned)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
