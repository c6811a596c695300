"""The layering of docs/DESIGN.md, checked on the import graph read from the source.

The graph comes from ``scripts/import_graph.py`` (imports inside functions count);
the last tests prove on a synthetic package that it finds cycles and
function-level imports, so the checks above them cannot pass on an empty graph.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400
PLANNER_DEPENDENCIES = frozenset({"torch", "numpy"})
# One entry per application; a module may import modules of its own application only.
APPLICATIONS: tuple[str, ...] = ("mbrm.cli", "mbrm.options", "mbrm.labeling", "mbrm.report")


def _load_import_graph() -> ModuleType:
    """``scripts/import_graph.py`` as a module (``scripts/`` is no package)."""
    path = ROOT / "scripts" / "import_graph.py"
    spec = importlib.util.spec_from_file_location("import_graph", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ig = _load_import_graph()


def _application(module: str) -> str | None:
    """The application ``module`` belongs to, or None."""
    for app in APPLICATIONS:
        if ig.has_prefix(module, (app,)):
            return app
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return ig.import_graph(ROOT)


def _edges(graph: dict[str, set[str]], keep) -> list[str]:
    return [
        f"{src} -> {dst}" for src in sorted(graph) for dst in sorted(graph[src]) if keep(src, dst)
    ]


def test_graph_covers_the_packages(graph: dict[str, set[str]]) -> None:
    for module in ("mbrm.nn", "mbrm.loop", "planners.cem", "constraints.sets"):
        assert module in graph
    assert "mbrm.nn" in graph["mbrm.world_model"]


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    found = ig.cycles(graph)
    lines = []
    for component in found:
        lines.append(" -> ".join(ig.shortest_cycle(graph, component)))
        members = set(component)
        lines += [f"    {m} -> {', '.join(sorted(graph[m] & members))}" for m in component]
    assert not found, f"{len(found)} import cycle(s):\n" + "\n".join(lines)


def test_planners_import_only_torch_numpy_and_stdlib(graph: dict[str, set[str]]) -> None:
    def forbidden(src: str, dst: str) -> bool:
        top = dst.split(".")[0]
        allowed = top == "planners" or top in PLANNER_DEPENDENCIES or top in sys.stdlib_module_names
        return ig.has_prefix(src, ("planners",)) and not allowed

    bad = _edges(graph, forbidden)
    assert not bad, "planners import outside torch, numpy and the stdlib:\n" + "\n".join(bad)


def test_nothing_imports_an_application(graph: dict[str, set[str]]) -> None:
    def forbidden(src: str, dst: str) -> bool:
        # the command line dispatches to the other applications (``mbrm label``, the
        # report written after ``mbrm train``); nothing imports the command line
        target = _application(dst)
        if src == "mbrm.cli" and target != "mbrm.cli":
            return False
        return target is not None and _application(src) != target

    bad = _edges(graph, forbidden)
    assert not bad, "imports of an application module from outside it:\n" + "\n".join(bad)


def test_composition_root_imports_no_application(graph: dict[str, set[str]]) -> None:
    run_modules = [m for m in graph if ig.has_prefix(m, ("mbrm.run",))]
    if not run_modules:
        pytest.skip("no mbrm.run module in the tree")
    bad = _edges(graph, lambda s, d: s in run_modules and _application(d) is not None)
    assert not bad, "the composition root imports an application:\n" + "\n".join(bad)


def test_modules_are_at_most_400_lines() -> None:
    sizes = ig.module_sizes(ROOT)
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    listing = "\n".join(f"{n:6d}  {name}" for name, n in over.items())
    assert not over, f"modules over {MAX_LINES} lines:\n{listing}"


# The graph builder itself, on a package small enough to know its graph by heart.


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_builder_finds_cycles_and_function_level_imports(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import f\n",
            "pkg/a.py": "import numpy\nimport pkg.b\n\ndef f():\n    return pkg.b\n",
            # b closes the cycle only inside a function, through a relative import.
            "pkg/b.py": "def g():\n    from . import a\n    return a\n",
            "pkg/sub/__init__.py": "from . import c\nfrom .. import b\n",
            "pkg/sub/c.py": "from pkg import sub\nfrom pkg.b import g\n\ndef h():\n    import json\n",
        },
    )
    graph = ig.import_graph(tmp_path, packages=("pkg",))

    assert set(graph) == {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"}
    assert graph["pkg"] == {"pkg.a"}
    assert graph["pkg.a"] == {"numpy", "pkg.b"}
    assert graph["pkg.b"] == {"pkg.a"}  # function-level, relative, `from . import module`
    assert graph["pkg.sub"] == {"pkg.sub.c", "pkg.b"}
    assert graph["pkg.sub.c"] == {"pkg.sub", "pkg.b", "json"}
    assert ig.cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.sub", "pkg.sub.c"]]
    assert ig.shortest_cycle(graph, ["pkg.a", "pkg.b"]) == ["pkg.a", "pkg.b", "pkg.a"]
    assert ig.module_sizes(tmp_path, packages=("pkg",))["pkg.a"] == 5


def test_builder_ignores_self_loops(tmp_path: Path) -> None:
    _write(tmp_path, {"pkg/__init__.py": "from pkg import x\nx = 1\n", "pkg/m.py": "import os\n"})
    graph = ig.import_graph(tmp_path, packages=("pkg",))
    assert graph == {"pkg": set(), "pkg.m": {"os"}}
    assert ig.cycles(graph) == []


def test_every_module_has_a_layer_and_imports_downward(graph: dict[str, set[str]]) -> None:
    """DESIGN.md's layering: each module sits in one layer and imports only its own
    layer and those below it."""
    unplaced = sorted(m for m in graph if m != "mbrm" and ig.layer_of(m) is None)
    assert not unplaced, f"modules in no layer of scripts/import_graph.py LAYERS: {unplaced}"
    bad = ig.layer_violations(graph)
    assert not bad, "\n".join(f"{a} ({la}) -> {b} ({lb})" for a, la, b, lb in bad)
