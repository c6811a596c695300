"""Label efficiency: the agent's score against the labels a run used.

A person's time is the budget (Christiano et al. 2017: 3-5 s a comparison). Each arm runs
the demo's schedule at several total label budgets B (preferences and unacceptable-state
judgements together, every stored label counted, ``experiment.solicit.label_budget=B``),
spread evenly over the rounds: every round's query counts are the demo's scaled by
``B / (labels the demo uses)``, apportioned by largest remainders, so the mix of
acquisitions stays the demo's. Arms:

- **random**: preference pairs drawn uniformly from the round's candidates, no
  synthesised hypotheticals, no extra unacceptable-state queries (each segment shown in
  a preference is still judged): the baseline every preference-learning paper reports;
- **acquisition**: today's acquisition (ensemble disagreement, novelty, lowest and
  highest predicted reward; hypotheticals synthesised on uncertainty, novelty, lowest
  reward; unacceptable-state queries by constraint uncertainty).

At B = the demo's own labels the acquisition arm is the demo itself (shared with
experiments 1-6). Scores are against experiment 1's oracle-mode runs of the same seed
(reused when that has run), ``(R - R_random) / (R_oracle_mode - R_random)``.

Budget (2-core CPU): each run is the demo's schedule (4 random + 20 acting episodes of 50
steps, 10 evaluation episodes), ~4-6 min alone; 2 arms x 4 budgets x 3 seeds, plus the
demo and oracle-mode runs: ~2 h at ``--jobs 2``.

    python benchmarks/exp_labels.py [--budgets 100,200,300,600] [--seeds 0,1,2] [--jobs 2]
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import sweep as sw
from exp1_preferences import ORACLE_MODE

TASKS = ("reacher_keepout",)
STEM = "exp_labels"
BUDGETS = (100, 200, 300, 600)
ARMS = ("random", "acquisition")


def apportion(weights: dict[str, float], total: int) -> dict[str, int]:
    """``total`` split over ``weights`` in proportion, by largest remainders."""
    w = {k: float(v) for k, v in weights.items() if v > 0}
    if not w or total <= 0:
        return dict.fromkeys(weights, 0)
    exact = {k: total * v / sum(w.values()) for k, v in w.items()}
    out = {k: int(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - out[k], reverse=True)[
        : total - sum(out.values())
    ]:
        out[k] += 1
    return {k: out.get(k, 0) for k in weights}


def scaled_overrides(arm: str, budget: int, demo: Any, demo_labels: float) -> list[str]:
    """The ``experiment.solicit`` overrides of ``arm`` at ``budget`` labels a run.

    ``demo`` is the demo's composed ``experiment.solicit``; ``demo_labels`` the labels a
    demo run stores (its summary's total).
    """
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; expected one of {', '.join(ARMS)}")
    f = budget / demo_labels
    prefs = dict(demo.preferences)
    n_prefs = max(1, round(sum(prefs.values()) * f))
    extra = []
    if arm == "random":
        mix = dict.fromkeys(prefs, 0)
        extra = [f"+experiment.solicit.preferences.random={n_prefs}"]  # a key the demo lacks
        unacceptable, synthesised = 0, 0
    else:
        mix = apportion(prefs, n_prefs)
        unacceptable = round(demo.unacceptable * f)
        synthesised = round(demo.synthesised * f)
    flow = ", ".join(f"{k}: {v}" for k, v in mix.items())
    return [
        f"experiment.solicit.label_budget={budget}",
        f"experiment.solicit.preferences={{{flow}}}",
        *extra,
        f"experiment.solicit.unacceptable={unacceptable}",
        f"experiment.solicit.synthesised={synthesised}",
    ]


def variants(task: str, budgets: Sequence[int], demo: Any, demo_labels: float) -> list[sw.Variant]:
    out = [
        sw.task_variant(task, "demo", label="acquisition, the demo's budget"),
        sw.task_variant(task, "oracle_mode", *ORACLE_MODE, label=f"{task} oracle mode"),
    ]
    for arm in ARMS:
        for b in budgets:
            out.append(
                sw.task_variant(
                    task,
                    f"labels_{arm}_{b}",
                    *scaled_overrides(arm, b, demo, demo_labels),
                    label=f"{arm}, {b} labels",
                )
            )
    return out


def run_records(records: list[sw.RunRecord]) -> list[dict]:
    """One record per learned run, scored against the oracle-mode run of its seed."""
    oracle = {r.seed: r.summary for r in records if r.variant.name.endswith("/oracle_mode")}
    out = []
    for r in records:
        if r.variant.name.endswith("/oracle_mode"):
            continue
        s = r.summary
        name = r.variant.name.rsplit("/", 1)[-1]
        arm = "acquisition" if name == "demo" else name.split("_")[1]
        om = oracle.get(r.seed)
        score = None
        if om is not None and om["eval_return"] != s["random_return"]:
            score = (s["eval_return"] - s["random_return"]) / (
                om["eval_return"] - s["random_return"]
            )
        out.append(
            {
                "task": s["task"],
                "arm": arm,
                "variant": r.variant.title,
                "seed": r.seed,
                "labels": int(sum(s["labels"].values())),
                "preference_labels": s["labels"].get("preference", 0),
                "unacceptable_labels": s["labels"].get("unacceptable", 0),
                "score_against_oracle_mode": score,
                "normalised_score": s["normalised_score"],
                "eval_unacceptable_steps": s["eval_unacceptable_steps"],
                "train_unacceptable_steps": s["train_unacceptable_steps"],
                "wall_seconds": s.get("wall_seconds"),
                "revision": r.revision,
            }
        )
    return out


def table(rows: list[dict]) -> str:
    body = []
    for name, rs in sorted(
        sw.by_arm(rows, "variant").items(), key=lambda kv: (kv[1][0]["arm"], kv[1][0]["labels"])
    ):
        body.append(
            [
                name,
                sw.mean_sd(sw.values(rs, "labels"), ".0f"),
                sw.mean_sd(sw.values(rs, "score_against_oracle_mode")),
                sw.per_seed(sw.values(rs, "score_against_oracle_mode")),
                sw.mean_sd(sw.values(rs, "eval_unacceptable_steps"), ".1f"),
                sw.mean_sd(sw.values(rs, "train_unacceptable_steps"), ".1f"),
            ]
        )
    header = [
        "arm",
        "labels used",
        "score against oracle mode",
        "per seed",
        "unacceptable steps, eval",
        "unacceptable steps, training",
    ]
    return sw.markdown_table(header, body)


def figure(rows: list[dict]):
    """Score against oracle mode against labels used: seeds as dots, arm means as lines."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, arm in enumerate(ARMS):
        rs = [r for r in rows if r["arm"] == arm]
        x, y = sw.values(rs, "labels"), sw.values(rs, "score_against_oracle_mode")
        ax.scatter(x, y, color=f"C{i}", alpha=0.5, s=15)
        pts = sorted(
            (np.mean(sw.values(v, "labels")), np.nanmean(sw.values(v, "score_against_oracle_mode")))
            for v in sw.by_arm(rs, "variant").values()
        )
        if pts:
            ax.plot(*zip(*pts, strict=True), "-o", color=f"C{i}", label=arm)
    ax.axhline(1.0, color="k", ls="--", lw=1, label="oracle mode")
    ax.axhline(0.9, color="gray", ls=":", lw=1, label="target 0.9")
    ax.set_xscale("log")
    ax.set_xlabel("labels used (preferences + unacceptable-state judgements)")
    ax.set_ylabel("score against oracle mode (evaluation)")
    ax.set_title("label efficiency (dots: seeds)")
    ax.legend()
    fig.tight_layout()
    return fig


def main() -> None:
    p = sw.parser(__doc__, TASKS)
    p.add_argument(
        "--budgets",
        default=",".join(map(str, BUDGETS)),
        help=f"comma-separated total labels a run (default {','.join(map(str, BUDGETS))})",
    )
    p.add_argument(
        "--demo-labels",
        type=float,
        default=1792.0,
        help="labels a demo run stores, the scale of every budget (default 1792, seed 0)",
    )
    args = p.parse_args()
    try:
        budgets = [int(b) for b in args.budgets.split(",")]
    except ValueError:
        raise SystemExit(f"--budgets: comma-separated integers, got {args.budgets!r}") from None
    if any(b < 1 for b in budgets):
        raise SystemExit(f"--budgets must be >= 1, got {budgets}")
    started = time.monotonic()
    sweep = sw.make_sweep(args)
    vs: list[sw.Variant] = []
    for task in sw.task_list(args):
        demo = sweep.compose(sw.task_variant(task, "demo")).experiment.solicit
        vs += variants(task, budgets, demo, args.demo_labels)
    rows = run_records(sweep.run(vs))
    out = sw.output_dir(sweep.root, sweep.smoke)
    command = shlex.join(["python", f"benchmarks/{STEM}.py", *sys.argv[1:]])
    sw.write_records(
        out,
        STEM,
        "Label efficiency: score against oracle mode by labels used, per arm",
        command,
        rows,
    )
    sw.publish(
        out,
        STEM,
        title="Label efficiency: score against the labels a run used",
        intro=(
            "Random queries against today's acquisition at several total label budgets "
            "(each round's query counts the demo's, scaled), scored against oracle mode. "
            f"Mean ± sd over seeds {list(sweep.seeds)}."
        ),
        budget=sw.budget_text(sweep, sw.task_list(args)),
        table=table(rows),
        commands=[command, *(sweep.command_text(v) for v in vs)],
        figure=figure(rows),
        started=started,
    )


if __name__ == "__main__":
    main()
