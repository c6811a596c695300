"""Experiment 6: CEM against iCEM against MCTS at an equal number of model calls.

The demo's agent with three planners at the same budget of ~300 imagined action
sequences of 12 steps per planning step (``planner=cem_fast``: 3 iterations x 100;
``icem_fast``: 123 + 98 + 78 with coloured noise and kept elites; ``mcts_fast``: 300
simulations in batches of 100, progressive widening). The script composes each
variant's configuration, checks that the planner is the one asked for (a later
``planner=`` override wins over the demo's ``cem_fast``), and counts the sequences
one planning step imagines with a counting imagination. Measured over seeds: the
normalised score, the evaluation return, unacceptable steps, and planning seconds
per step (``plan_seconds_per_step``: the median step of each evaluation episode,
averaged).

Anchor: Chua et al. 2018 (PETS, CEM); Pinneri et al. 2020 (iCEM: better plans at
equal or fewer model calls); batched continuous-action MCTS with progressive
widening (Couëtoux et al. 2011).

Budget (2-core CPU, 3 seeds): reacher_keepout runs the demo's schedule (4 random + 20
acting episodes of 50 steps and 10 evaluation episodes); ~14 min a planner at
``--jobs 2``. 3 planners: ~40 min, ~27 min when experiment 1's demo runs exist
(measured: 40.4 min for iCEM and MCTS at ``--jobs 1`` beside another experiment).

    python benchmarks/exp6_planners.py [--tasks reacher_keepout] [--smoke]
"""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import sweep as sw

TASKS = ("reacher_keepout",)
STEM = "exp6_planners"
PLANNERS = {  # config name -> expected planner.kind
    "cem_fast": "cem",
    "icem_fast": "cem",
    "mcts_fast": "mcts",
}


def variants(tasks: list[str]) -> list[sw.Variant]:
    out = []
    for task in tasks:
        for name in PLANNERS:
            if name == "cem_fast":  # the demo itself: its runs are shared with experiment 1
                out.append(sw.task_variant(task, "demo", label="CEM (cem_fast)"))
            else:
                label = f"{'iCEM' if name.startswith('icem') else 'MCTS'} ({name})"
                out.append(sw.task_variant(task, name, f"planner={name}", label=label))
    return out


def planner_name(variant: sw.Variant) -> str:
    names = [o.split("=", 1)[1] for o in variant.overrides if o.startswith("planner=")]
    return names[-1] if names else sw.DEMO_OVERRIDES[-1].split("=", 1)[1]


def planning_budget(sweep: sw.Sweep, variant: sw.Variant) -> dict[str, int]:
    """Compose the variant, check its planner, and count one step's imagined sequences."""
    cfg = sweep.compose(variant)
    name = planner_name(variant)
    if cfg.planner.kind != PLANNERS[name]:
        raise RuntimeError(
            f"{variant.name}: planner={name} composed to planner.kind={cfg.planner.kind}, "
            f"expected {PLANNERS[name]}: the demo's planner override was not replaced"
        )
    result = sw.count_planning_step(cfg)
    horizon = int(cfg.planner.horizon)
    return {"sequences": result.n_candidates, "calls": result.n_calls, "horizon": horizon}


def table(records: list[sw.RunRecord], budgets: dict[str, dict[str, int]]) -> str:
    rows = []
    for name, recs in sw.by_variant(records).items():
        s = [r.summary for r in recs]
        b = budgets[name]
        rows.append(
            [
                recs[0].summary["task"],
                recs[0].variant.title,
                f"{b['sequences']} x {b['horizon']} steps ({b['calls']} calls)",
                sw.mean_sd([x["normalised_score"] for x in s]),
                sw.per_seed([x["normalised_score"] for x in s]),
                sw.mean_sd([x["eval_return"] for x in s], ".2f"),
                sw.mean_sd([x["plan_seconds_per_step"] for x in s]),
                sw.mean_sd([x["eval_unacceptable_steps"] for x in s], ".1f"),
                sw.mean_sd([x["train_unacceptable_steps"] for x in s], ".1f"),
                sw.mean_sd([np.nansum(r.column("seconds")) / 60 for r in recs], ".1f"),
            ]
        )
    header = [
        "task",
        "planner",
        "imagined per step",
        "normalised score",
        "per seed",
        "eval return",
        "planning seconds per step",
        "unacceptable steps, eval",
        "unacceptable steps, training",
        "training minutes (without evaluation)",
    ]
    return sw.markdown_table(header, rows)


def figure(records: list[sw.RunRecord]):
    groups = list(sw.by_variant(records).values())
    fig, (ax_score, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [f"{g[0].summary['task']}\n{g[0].variant.title}" for g in groups]
    for i, recs in enumerate(groups):
        for ax, key in ((ax_score, "normalised_score"), (ax_time, "plan_seconds_per_step")):
            v = [r.summary[key] for r in recs]
            ax.bar(i, np.mean(v), color=f"C{i}", alpha=0.6)
            ax.plot([i] * len(v), v, "ko", ms=4)
    ax_score.axhline(1.0, color="k", ls="--", lw=1)
    ax_score.set_ylabel("normalised score (evaluation)")
    ax_score.set_title("score at an equal number of model calls (dots: seeds)")
    ax_time.set_ylabel("planning seconds per step")
    ax_time.set_title("planning time (dots: seeds)")
    for ax in (ax_score, ax_time):
        ax.set_xticks(range(len(names)), names, fontsize=8)
    fig.tight_layout()
    return fig


def main() -> None:
    args = sw.parser(__doc__, TASKS).parse_args()
    started = time.monotonic()
    sweep = sw.make_sweep(args)
    tasks = sw.task_list(args)
    vs = variants(tasks)
    budgets = {v.name: planning_budget(sweep, v) for v in vs}
    for v in vs:
        b = budgets[v.name]
        print(f"{v.name}: {b['sequences']} imagined sequences of {b['horizon']} steps per step")
    records = sweep.run(vs)
    sw.publish(
        sw.output_dir(sweep.root, sweep.smoke),
        STEM,
        title="Experiment 6: CEM, iCEM and MCTS at an equal number of model calls",
        intro=(
            "The demo's agent with three planners at ~300 imagined sequences per planning step "
            "(counted on one step of each composed planner). Mean ± sd over seeds "
            f"{list(sweep.seeds)}. Anchor: Chua et al. 2018; Pinneri et al. 2020."
        ),
        budget=sw.budget_text(sweep, tasks),
        table=table(records, budgets),
        commands=[f"python benchmarks/{STEM}.py", *(sweep.command_text(v) for v in vs)],
        figure=figure(records),
        started=started,
    )


if __name__ == "__main__":
    main()
