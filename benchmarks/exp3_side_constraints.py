"""Experiment 3: side-constraints -- rejection against a reward penalty against none.

Three arms on the same task and teacher:

- ``reject`` (the default): a plan with any imagined step that the calibrated
  classifier (split-conformal threshold, recall >= 1 - alpha) judges unacceptable is
  rejected outright;
- ``penalty``: the plan's reward is lowered by ``constraint_penalty * p_unacceptable``
  per imagined step instead (``experiment.constraint_mode=penalty``);
- ``none``: no side-constraints at all (``constraints=none``).

Measured over seeds: unacceptable steps during training (all episodes, and the
planner's episodes alone) and in evaluation, the evaluation return, the normalised
score, and constraint flags on rejected imagined sequences. Each run is normalised
against its own oracle: the hidden reward on the run's final world model, rejecting
the hidden unacceptable rule in every arm (the ``none`` arm too), plus the arm's own
hard entries -- so the ``none`` arm's oracle lacks reacher's +-20 rad/s joint-speed
bounds. The evaluation and oracle returns are in the table beside the score.

Anchor: Saunders et al. 2018 (*Trial without error*): a learned blocker of
catastrophic actions, trained on human labels, kept the agent from catastrophes
that a reward penalty alone did not prevent; Leike et al. 2018, Sec. 5.7.

Budget (2-core CPU, 3 seeds): reacher_keepout runs the demo's schedule (4 random + 20
acting episodes of 50 steps and 10 evaluation episodes with the agent, a random policy
and the oracle); ~14 min an arm at ``--jobs 2``. 3 arms: ~40 min, ~27 min when
experiment 1's demo runs exist (measured: 38.8 min for the two new arms at ``--jobs 1``
beside another experiment).

    python benchmarks/exp3_side_constraints.py [--penalty 10] [--tasks reacher_keepout] [--smoke]
"""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import sweep as sw

TASKS = ("reacher_keepout",)
STEM = "exp3_side_constraints"


def variants(tasks: list[str], penalty: float) -> list[sw.Variant]:
    out = []
    for task in tasks:
        out.append(sw.task_variant(task, "demo", label="reject (calibrated classifier)"))
        out.append(
            sw.task_variant(
                task,
                f"penalty_{penalty:g}",
                "experiment.constraint_mode=penalty",
                f"experiment.constraint_penalty={penalty:g}",
                label=f"reward penalty {penalty:g}",
            )
        )
        out.append(sw.task_variant(task, "no_constraints", "constraints=none", label="none"))
    return out


def table(records: list[sw.RunRecord]) -> str:
    rows = []
    for recs in sw.by_variant(records).values():
        s = [r.summary for r in recs]
        rows.append(
            [
                recs[0].summary["task"],
                recs[0].variant.title,
                sw.mean_sd([x["train_unacceptable_steps"] for x in s], ".1f"),
                sw.per_seed([x["train_unacceptable_steps"] for x in s], ".0f"),
                sw.mean_sd([r.acting_unacceptable_steps() for r in recs], ".1f"),
                sw.mean_sd([x["eval_unacceptable_steps"] for x in s], ".1f"),
                sw.per_seed([x["eval_unacceptable_steps"] for x in s], ".0f"),
                sw.mean_sd([x["random_unacceptable_steps"] for x in s], ".1f"),
                sw.mean_sd([x["eval_return"] for x in s], ".2f"),
                sw.mean_sd([x["oracle_return"] for x in s], ".2f"),
                sw.mean_sd([x["normalised_score"] for x in s]),
                sw.mean_sd([np.nansum(r.column("blocked")) for r in recs], ".0f"),
                sw.mean_sd([np.nansum(r.column("no_safe_plan")) for r in recs], ".1f"),
            ]
        )
    header = [
        "task",
        "side-constraint",
        "unacceptable steps, training",
        "per seed",
        "of which in planned episodes",
        "unacceptable steps, evaluation",
        "per seed",
        "random policy, same episodes",
        "eval return",
        "oracle return",
        "normalised score",
        "constraint flags on rejected imagined sequences, training (summed over entries)",
        "no-safe-plan steps, training",
    ]
    return sw.markdown_table(header, rows)


def figure(records: list[sw.RunRecord]):
    groups = list(sw.by_variant(records).values())
    fig, (ax_cum, ax_eval, ax_ret) = plt.subplots(1, 3, figsize=(17, 4.5))
    names = []
    for i, recs in enumerate(groups):
        label = f"{recs[0].summary['task']}: {recs[0].variant.title}"
        names.append(label.replace(": ", "\n"))
        curves = [np.cumsum(r.column("unacceptable_steps")) for r in recs]
        for c in curves:
            ax_cum.plot(c, color=f"C{i}", lw=0.6, alpha=0.5)
        ax_cum.plot(sw.mean_curve(curves), color=f"C{i}", lw=2, label=label)
        for ax, key in ((ax_eval, "eval_unacceptable_steps"), (ax_ret, "eval_return")):
            v = [r.summary[key] for r in recs]
            ax.bar(i, np.mean(v), color=f"C{i}", alpha=0.6)
            ax.plot([i] * len(v), v, "ko", ms=4)
    ax_cum.set_xlabel("episode (random exploration first)")
    ax_cum.set_ylabel("unacceptable steps so far")
    ax_cum.set_title("unacceptable outcomes during training (thin: seeds)")
    ax_cum.legend()
    ax_eval.set_title("unacceptable steps in evaluation (dots: seeds)")
    ax_ret.set_title("true return in evaluation (dots: seeds)")
    for ax in (ax_eval, ax_ret):
        ax.set_xticks(range(len(names)), names, fontsize=8)
    fig.tight_layout()
    return fig


def main() -> None:
    p = sw.parser(__doc__, TASKS)
    p.add_argument("--penalty", type=float, default=10.0, help="experiment.constraint_penalty")
    args = p.parse_args()
    if args.penalty < 0:
        raise SystemExit(f"--penalty must be >= 0, got {args.penalty}")
    started = time.monotonic()
    sweep = sw.make_sweep(args)
    tasks = sw.task_list(args)
    vs = variants(tasks, args.penalty)
    records = sweep.run(vs)
    sw.publish(
        sw.output_dir(sweep.root, sweep.smoke),
        STEM,
        title="Experiment 3: side-constraints by rejection, by penalty, or none",
        intro=(
            "Unacceptable outcomes (steps; evaluation: summed over the evaluation episodes) and "
            "return when imagined unacceptable futures are rejected by the calibrated classifier, "
            "penalised in the planning reward, or not modelled at all. Each run is normalised "
            "against its own oracle (hidden reward on its final world model), which rejects the "
            "hidden unacceptable rule in every arm, plus the arm's hard entries (none in the "
            "'none' arm). "
            f"Mean ± sd over seeds {list(sweep.seeds)}. Anchor: Saunders et al. 2018."
        ),
        budget=sw.budget_text(sweep, tasks),
        table=table(records),
        commands=[
            f"python benchmarks/{STEM}.py --penalty {args.penalty:g}",
            *(sweep.command_text(v) for v in vs),
        ],
        figure=figure(records),
        started=started,
    )


if __name__ == "__main__":
    main()
