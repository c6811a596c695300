"""Draw docs/architecture.png (one loop iteration's data flow) and docs/layers.png.

    python scripts/draw_architecture.py [OUT_DIR]

The layer picture lists the modules of the tree as ``scripts/import_graph.py``
assigns them to layers, so rerunning it after a move keeps the picture true.
Output is deterministic: fixed size and dpi, no software or date metadata.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

ROOT = Path(__file__).resolve().parent.parent
DPI = 100
FONT = 12
SMALL = 10.5
METADATA = {"Software": None}

# Fill colours by layer of docs/DESIGN.md, shared by both pictures.
COLOURS = {
    "applications": "#f4c7c3",
    "composition root": "#fce8b2",
    "training": "#d9d2e9",
    "learners and data": "#c9e4c5",
    "search": "#fdd9b5",
    "base": "#cfe2f3",
    "outside": "#e6e6e6",
}
EDGE = "#333333"


def _load_import_graph() -> ModuleType:
    """``scripts/import_graph.py`` as a module."""
    path = Path(__file__).resolve().parent / "import_graph.py"
    spec = importlib.util.spec_from_file_location("import_graph", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Box:
    """A labelled box; ``x, y`` is its centre, in axes data units."""

    x: float
    y: float
    w: float
    h: float

    def top(self, dx: float = 0.0) -> tuple[float, float]:
        return (self.x + dx, self.y + self.h / 2)

    def bottom(self, dx: float = 0.0) -> tuple[float, float]:
        return (self.x + dx, self.y - self.h / 2)

    def left(self, dy: float = 0.0) -> tuple[float, float]:
        return (self.x - self.w / 2, self.y + dy)

    def right(self, dy: float = 0.0) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + dy)


def _canvas(width: float, height: float, bottom: float = 0.0) -> tuple[plt.Figure, Axes]:
    """A figure whose axes run 0..width by bottom..bottom+height at 0.16 inch per unit."""
    fig = plt.figure(figsize=(width * 0.16, height * 0.16), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(bottom, bottom + height)
    ax.set_axis_off()
    return fig, ax


def box(
    ax: Axes,
    x: float,
    y: float,
    w: float,
    h: float,
    title: str,
    detail: str = "",
    layer: str = "outside",
) -> Box:
    """Draw a rounded box with a bold title and an optional smaller detail line(s)."""
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0,rounding_size=0.8",
            facecolor=COLOURS[layer],
            edgecolor=EDGE,
            linewidth=1.2,
            zorder=2,
        )
    )
    if detail:
        ax.text(
            x, y + 0.25, title, ha="center", va="bottom", fontsize=FONT, weight="bold", zorder=3
        )
        ax.text(
            x, y - 0.25, detail, ha="center", va="top", fontsize=SMALL, zorder=3, linespacing=1.2
        )
    else:
        ax.text(x, y, title, ha="center", va="center", fontsize=FONT, weight="bold", zorder=3)
    return Box(x, y, w, h)


def group(ax: Axes, x0: float, y0: float, x1: float, y1: float, title: str) -> None:
    """A dashed frame around the boxes of one stage, its title at the top left."""
    ax.add_patch(
        FancyBboxPatch(
            (x0, y0),
            x1 - x0,
            y1 - y0,
            boxstyle="round,pad=0,rounding_size=1.2",
            facecolor="none",
            edgecolor="#777777",
            linewidth=1.2,
            linestyle=(0, (5, 3)),
            zorder=1,
        )
    )
    ax.text(x0 + 1, y1 - 0.7, title, ha="left", va="top", fontsize=FONT, style="italic", zorder=3)


def arrow(
    ax: Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    label: str = "",
    *,
    label_at: tuple[float, float] | None = None,
    ha: str = "center",
    both: bool = False,
    dashed: bool = False,
    path: list[tuple[float, float]] | None = None,
) -> None:
    """An arrow from ``start`` to ``end``, through the corners of ``path`` if given."""
    points = [start, *(path or []), end]
    style = dict(color=EDGE, linewidth=1.5, linestyle="--" if dashed else "-", zorder=4)
    for a, b in itertools.pairwise(points[:-1]):
        ax.plot([a[0], b[0]], [a[1], b[1]], solid_capstyle="butt", **style)
    ax.add_patch(
        FancyArrowPatch(
            points[-2],
            points[-1],
            arrowstyle="<|-|>" if both else "-|>",
            mutation_scale=16,
            shrinkA=0,
            shrinkB=0,
            **style,
        )
    )
    if label:
        if label_at is None:
            label_at = ((points[-2][0] + end[0]) / 2, (points[-2][1] + end[1]) / 2 + 0.5)
        ax.text(
            *label_at,
            label,
            ha=ha,
            va="bottom",
            fontsize=SMALL,
            zorder=5,
            bbox=dict(facecolor="white", edgecolor="none", pad=1.0, alpha=0.9),
        )


def legend(ax: Axes, x: float, y: float, layers: list[str]) -> None:
    """Colour swatches naming the layer of docs/DESIGN.md each box belongs to."""
    for i, layer in enumerate(layers):
        ax.add_patch(
            FancyBboxPatch(
                (x + i * 17, y - 0.8),
                2.2,
                1.6,
                boxstyle="round,pad=0,rounding_size=0.3",
                facecolor=COLOURS[layer],
                edgecolor=EDGE,
                linewidth=1.0,
            )
        )
        name = "environment" if layer == "outside" else f"layer: {layer}"
        ax.text(x + i * 17 + 3, y, name, ha="left", va="center", fontsize=SMALL)


def draw_iteration(out: Path) -> Path:
    """The data flow of one loop iteration (docs/DESIGN.md, "The loop")."""
    fig, ax = _canvas(100, 76, bottom=-4)
    ax.text(50, 70.6, "mbrm: one loop iteration", ha="center", va="top", fontsize=15, weight="bold")

    # 1. Fit the models on everything collected so far.
    group(ax, 1, 42, 99, 67.5, "1  fit on the data so far")
    env = box(ax, 10, 58, 16, 7, "real env", "MuJoCo, state = qpos | qvel")
    replay = box(ax, 32, 58, 16, 7, "replay buffer", "real transitions", "learners and data")
    wm = box(ax, 54, 58, 18, 7, "world model fit", "ensemble, delta targets", "learners and data")
    store = box(ax, 88, 58, 18, 7, "feedback store", "SQLite: queries, labels", "learners and data")
    reward = box(
        ax, 66, 47.5, 20, 7, "reward ensemble fit", "Bradley-Terry on pairs", "learners and data"
    )
    clf = box(
        ax,
        88,
        47.5,
        18,
        7,
        "classifier fit",
        "+ conformal calibration\n(recall ≥ 1 − α)",
        "learners and data",
    )
    arrow(ax, env.right(), replay.left(), "transitions", label_at=(21, 58.6))
    arrow(ax, replay.right(), wm.left())
    arrow(ax, store.left(dy=-2), reward.top(dx=4), "preferences", path=[(70, 56)], ha="left",
          label_at=(71, 54.6))  # fmt: skip
    arrow(ax, store.bottom(), clf.top(), "unacceptable labels", label_at=(87.2, 51.6), ha="right")

    # 2. Act: plan in imagination, reject plans with unacceptable futures.
    group(ax, 1, 21, 99, 40, "2  agent.act(state)")
    action = box(
        ax, 10, 29, 16, 8, "action", "optional QP filter\n(linear constraints)", "training"
    )
    planner = box(
        ax, 32.5, 29, 15, 8, "planner", "CEM / iCEM / MCTS\nrejects p_unacc > τ", "search"
    )
    imag = box(
        ax,
        71,
        29,
        40,
        8,
        "imagination.rollout(state, actions)",
        "world model  ·  reward ensemble (mean, std)\nconstraint set (p_unacceptable per step)",
        "training",
    )
    arrow(ax, planner.right(dy=1.5), imag.left(dy=1.5), "actions [N, H, A]", label_at=(45.5, 30.7))
    arrow(ax, imag.left(dy=-1.5), planner.right(dy=-1.5), "ImaginedBatch", label_at=(45.5, 25.8))
    arrow(ax, planner.left(), action.right(), "PlanResult", label_at=(21.5, 29.6))
    arrow(ax, action.top(dx=-3), env.bottom(dx=-3), "step", label_at=(7.6, 44.5), ha="left")
    arrow(ax, env.bottom(dx=3), planner.top(dx=-4), "state", path=[(13, 36), (28.5, 36)],
          label_at=(20.5, 36.5))  # fmt: skip
    arrow(ax, wm.bottom(), imag.top(dx=-17), "dynamics", label_at=(54.6, 35.2), ha="left")
    arrow(ax, reward.bottom(), imag.top(dx=-5), "reward", label_at=(66.6, 35.2), ha="left")
    arrow(ax, clf.bottom(), imag.top(dx=17), "p_unacc, τ", label_at=(88.6, 35.2), ha="left")

    # 3. Solicit feedback on the segments the models are least sure about.
    group(ax, 1, 1, 99, 19, "3  solicit feedback")
    segments = box(
        ax,
        26,
        8.5,
        32,
        9,
        "candidate segments",
        "imagined · real (replay) · synthesised\nranked by reward disagreement,\n"
        "constraint uncertainty, novelty",
        "training",
    )
    queue = box(ax, 56, 8.5, 16, 7, "query queue", "pairs and single clips", "learners and data")
    synthetic = box(
        ax,
        81,
        12.5,
        24,
        5.5,
        "synthetic gatherer",
        "hidden true reward and cost",
        "learners and data",
    )
    person = box(ax, 81, 4.8, 24, 5.5, "person", "in the labelling web UI", "applications")
    ax.text(81, 16.4, "teacher (one interface)", ha="center", va="bottom", fontsize=SMALL,
            style="italic")  # fmt: skip
    arrow(ax, segments.right(), queue.left())
    arrow(ax, queue.right(dy=1.5), synthetic.left(), path=[(66.5, 10), (66.5, 12.5)])
    arrow(ax, queue.right(dy=-1.5), person.left(), path=[(66.5, 7), (66.5, 4.8)])
    arrow(ax, imag.bottom(dx=-14), segments.top(dx=12), "imagined", label_at=(56.4, 21.8),
          ha="right", path=[(57, 17.5), (38, 17.5)])  # fmt: skip
    arrow(ax, planner.bottom(dx=-2), segments.top(dx=4.5), "synthesised",
          label_at=(31.1, 21.8), ha="left")  # fmt: skip
    ax.plot([person.right()[0], 97.5], [person.y, person.y], color=EDGE, linewidth=1.5, zorder=4)
    arrow(ax, synthetic.right(), store.right(dy=-1.5), "labels", label_at=(97.2, 30),
          ha="right", path=[(97.5, synthetic.y), (97.5, 56.5)])  # fmt: skip
    ax.plot([97.5, 97.5], [person.y, synthetic.y], color=EDGE, linewidth=1.5, zorder=4)

    legend(ax, 2, -1.8, ["outside", "learners and data", "training", "search", "applications"])
    fig.savefig(out, dpi=DPI, metadata=METADATA)
    plt.close(fig)
    return out


UNASSIGNED = "not in the layer table"


def _modules_by_layer(ig: ModuleType) -> dict[str, list[str]]:
    """Per layer, its modules; a package's submodules are listed after its name."""
    graph = ig.import_graph(ROOT)
    grouped: dict[str, dict[str, list[str]]] = {layer: {} for layer, _ in ig.LAYERS}
    grouped[UNASSIGNED] = {}
    for module in sorted(graph):
        if module in ig.PACKAGES:
            continue
        layer = ig.layer_of(module) or UNASSIGNED
        parent, _, leaf = module.rpartition(".")
        if parent in graph and parent not in ig.PACKAGES:
            grouped[layer].setdefault(parent, []).append(leaf)
        else:
            grouped[layer].setdefault(module, [])
    grouped["applications"]["benchmarks/*.py"] = []
    return {
        layer: [f"{name} ({', '.join(subs)})" if subs else name for name, subs in entries.items()]
        for layer, entries in grouped.items()
    }


def _pack(entries: list[str], width: int, sep: str = "    ") -> list[str]:
    """Lines of at most ``width`` characters, breaking between entries where one fits."""
    lines: list[str] = []
    for entry in entries:
        if lines and len(lines[-1]) + len(sep) + len(entry) <= width:
            lines[-1] += sep + entry
        else:
            lines.extend(textwrap.wrap(entry, width, subsequent_indent="  "))
    return lines


def draw_layers(out: Path) -> Path:
    """The layers of docs/DESIGN.md with the modules that live in each, imports downward."""
    ig = _load_import_graph()
    by_layer = _modules_by_layer(ig)
    notes = {
        "applications": "nothing imports them",
        "composition root": "builds a run's parts from the config; loads finished runs",
        "training": "the loop, its stages, the agent",
        "learners and data": "may import base, torch, cvxpy (not search)",
        "search": "torch, numpy, stdlib only",
        "base": "torch, numpy, gymnasium, mujoco",
        UNASSIGNED: "add these to LAYERS in scripts/import_graph.py",
    }
    layers = [name for name, _ in ig.LAYERS]
    if by_layer[UNASSIGNED]:
        layers.append(UNASSIGNED)
    wrapped = {name: _pack(by_layer[name] or ["(no module yet)"], 100) for name in layers}
    heights = [2.9 + 1.15 * len(wrapped[name]) for name in layers]
    gap = 3.0
    total = sum(heights) + gap * (len(layers) - 1) + 6
    fig, ax = _canvas(100, total)
    ax.text(50, total - 1, "mbrm layers: imports go downward only", ha="center", va="top",
            fontsize=15, weight="bold")  # fmt: skip
    y = total - 5
    spans = []
    for name, h in zip(layers, heights, strict=True):
        colour = "#f8d7d3" if name == UNASSIGNED else COLOURS[name]
        ax.add_patch(
            FancyBboxPatch(
                (1, y - h),
                98,
                h,
                boxstyle="round,pad=0,rounding_size=0.8",
                facecolor=colour,
                edgecolor=EDGE,
                linestyle="--" if name == UNASSIGNED else "-",
                linewidth=1.2,
            )
        )
        ax.text(2, y - 0.6, name, ha="left", va="top", fontsize=FONT, weight="bold")
        ax.text(98, y - 0.6, notes[name], ha="right", va="top", fontsize=SMALL, style="italic")
        ax.text(2, y - 2.2, "\n".join(wrapped[name]), ha="left", va="top", fontsize=SMALL,
                family="DejaVu Sans Mono", linespacing=1.25)  # fmt: skip
        spans.append((y, y - h))
        y -= h + gap
    n_arrows = len(ig.LAYERS) - 1  # no arrow into the unassigned band
    for (_, bottom), (top, _) in itertools.pairwise(spans[: n_arrows + 1]):
        ax.add_patch(
            FancyArrowPatch(
                (50, bottom),
                (50, top),
                arrowstyle="-|>",
                mutation_scale=18,
                shrinkA=0,
                shrinkB=0,
                color=EDGE,
                linewidth=1.6,
            )
        )
    fig.savefig(out, dpi=DPI, metadata=METADATA)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    """Write both pictures and print their paths."""
    args = sys.argv[1:] if argv is None else argv
    out_dir = Path(args[0]) if args else ROOT / "docs"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(draw_iteration(out_dir / "architecture.png"))
    print(draw_layers(out_dir / "layers.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
