"""Experiment 2: off-policy feedback queries.

Two ways to choose what the teacher is asked about:

- ``imagined+synthesised`` (the default): the candidate pool holds the planner's best
  imagined futures, replay segments, and hypotheticals synthesised by planning on an
  acquisition objective (uncertainty, lowest predicted reward);
- ``real only``: replay segments of states the agent has visited
  (``experiment.imagined_every=0 experiment.solicit.synthesised=0``).

Measured per task over seeds: the preference labels (and all labels) needed until the
reward ensemble's held-out preference accuracy (``reward_accuracy`` in ``metrics.csv``:
oracle-labelled pairs of replay segments, not its training pairs) first reaches 90%;
unacceptable steps during training; the final accuracy and normalised score.

Anchor: Reddy et al. 2020 (ReQueST) learned from queries on synthesised hypothetical
trajectories before the agent acted, with fewer unsafe states visited than learning
from the agent's own (real) trajectories; Leike et al. 2018, Sec. 5.6 (off-policy
feedback closes loopholes before the agent visits them).

Budget (2-core CPU, 3 seeds): reacher_keepout runs the demo's schedule (4 random + 20
acting episodes of 50 steps, 10 evaluation episodes); ~14 min an arm at ``--jobs 2``,
~28 min for both, ~14 min when experiment 1's demo runs exist (measured: 18.3 min for
the real-only arm at ``--jobs 1`` beside another experiment). half_cheetah_safe is
opt-in (``--tasks reacher_keepout,half_cheetah_safe``: the short schedule, ~12 min more
an arm).

    python benchmarks/exp2_offpolicy_queries.py [--tasks reacher_keepout,half_cheetah_safe] [--smoke]
"""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import sweep as sw

from mbrm.feedback.store import FeedbackStore

TASKS = ("reacher_keepout",)
STEM = "exp2_offpolicy_queries"
TARGET_ACCURACY = 0.9
REAL_ONLY = ("experiment.imagined_every=0", "experiment.solicit.synthesised=0")


def variants(tasks: list[str]) -> list[sw.Variant]:
    out = []
    for task in tasks:
        out.append(sw.task_variant(task, "demo", label="imagined+synthesised"))
        out.append(sw.task_variant(task, "real_only", *REAL_ONLY, label="real only"))
    return out


def preference_labels_by_episode(record: sw.RunRecord) -> np.ndarray:
    """Cumulative preference labels after each metrics row's round (feedback.sqlite)."""
    with FeedbackStore(record.run_dir / "feedback.sqlite") as store:
        per_round = [
            store.count_labels("preference", loop_round=int(it))
            for it in record.column("iteration")
        ]
    return np.cumsum(per_round).astype(float)


def labels_to_reach(accuracy: np.ndarray, labels: np.ndarray, level: float) -> float:
    """Labels at the first episode whose held-out accuracy is >= level; NaN if never."""
    hit = np.flatnonzero(np.nan_to_num(accuracy, nan=-1.0) >= level)
    return float(labels[hit[0]]) if len(hit) else float("nan")


def last_finite(x: np.ndarray) -> float:
    finite = x[np.isfinite(x)]
    return float(finite[-1]) if len(finite) else float("nan")


def table(records: list[sw.RunRecord]) -> str:
    rows = []
    for recs in sw.by_variant(records).values():
        pref_needed, all_needed = [], []
        for r in recs:
            acc = r.column("reward_accuracy")
            pref_needed.append(
                labels_to_reach(acc, preference_labels_by_episode(r), TARGET_ACCURACY)
            )
            all_needed.append(labels_to_reach(acc, r.column("labels"), TARGET_ACCURACY))
        reached = sum(np.isfinite(pref_needed))
        s = [r.summary for r in recs]
        sources = sorted({k for x in s for k in x["labels_by_source"]})
        rows.append(
            [
                recs[0].summary["task"],
                recs[0].variant.title,
                f"{sw.mean_sd(pref_needed, '.0f')} ({reached}/{len(recs)} reached)",
                sw.per_seed(pref_needed, ".0f"),
                sw.mean_sd(all_needed, ".0f"),
                sw.mean_sd([last_finite(r.column("reward_accuracy")) for r in recs]),
                sw.mean_sd([x["train_unacceptable_steps"] for x in s], ".1f"),
                sw.per_seed([x["train_unacceptable_steps"] for x in s], ".0f"),
                sw.mean_sd([r.acting_unacceptable_steps() for r in recs], ".1f"),
                sw.mean_sd([x["normalised_score"] for x in s]),
                ", ".join(
                    f"{src} {np.mean([x['labels_by_source'].get(src, 0) for x in s]):.0f}"
                    for src in sources
                ),
            ]
        )
    header = [
        "task",
        "queries on",
        f"preference labels to {TARGET_ACCURACY:.0%} accuracy (mean of seeds that reach it)",
        "per seed",
        "all labels then",
        "final accuracy",
        "unacceptable steps, training",
        "per seed",
        "of which in planned episodes",
        "normalised score",
        "all labels by segment source (mean)",
    ]
    return sw.markdown_table(header, rows)


def figure(records: list[sw.RunRecord], tasks: list[str]):
    groups = sw.by_variant(records)
    fig, axes = plt.subplots(len(tasks), 2, figsize=(13, 4.2 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        ax_acc, ax_unacc = axes[row]
        arms = [recs for recs in groups.values() if recs[0].summary["task"] == task]
        for i, recs in enumerate(arms):
            xs, ys, cs = [], [], []
            for r in recs:
                x, y = preference_labels_by_episode(r), r.column("reward_accuracy")
                c = np.cumsum(r.column("unacceptable_steps"))
                ax_acc.plot(x, y, color=f"C{i}", lw=0.6, alpha=0.5)
                ax_unacc.plot(c, color=f"C{i}", lw=0.6, alpha=0.5)
                xs.append(x)
                ys.append(y)
                cs.append(c)
            label = recs[0].variant.title
            ax_acc.plot(sw.mean_curve(xs), sw.mean_curve(ys), color=f"C{i}", lw=2, label=label)
            ax_unacc.plot(sw.mean_curve(cs), color=f"C{i}", lw=2, label=label)
        ax_acc.axhline(TARGET_ACCURACY, color="k", ls="--", lw=1)
        ax_acc.set_xlabel("preference labels used")
        ax_acc.set_ylabel("held-out preference accuracy")
        ax_acc.set_title(f"{task}: reward model accuracy (thin: seeds)")
        ax_acc.legend()
        ax_unacc.set_xlabel("episode (random exploration first)")
        ax_unacc.set_ylabel("unacceptable steps so far")
        ax_unacc.set_title(f"{task}: unacceptable outcomes during training")
        ax_unacc.legend()
    fig.tight_layout()
    return fig


def main() -> None:
    args = sw.parser(__doc__, TASKS).parse_args()
    started = time.monotonic()
    sweep = sw.make_sweep(args)
    tasks = sw.task_list(args)
    vs = variants(tasks)
    records = sweep.run(vs)
    sw.publish(
        sw.output_dir(sweep.root, sweep.smoke),
        STEM,
        title="Experiment 2: off-policy feedback queries",
        intro=(
            "Queries on imagined and synthesised segments (the default) against queries on "
            "real segments only. Preference labels until the reward ensemble's held-out "
            f"preference accuracy first reaches {TARGET_ACCURACY:.0%} (NaN: not reached within "
            "the budget), unacceptable steps during training, final normalised score. "
            f"Mean ± sd over seeds {list(sweep.seeds)}. Anchor: Reddy et al. 2020 (ReQueST)."
        ),
        budget=sw.budget_text(sweep, tasks),
        table=table(records),
        commands=[f"python benchmarks/{STEM}.py", *(sweep.command_text(v) for v in vs)],
        figure=figure(records, tasks),
        started=started,
    )


if __name__ == "__main__":
    main()
