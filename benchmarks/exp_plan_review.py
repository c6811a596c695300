"""Plan review: the demo with and without a reviewer who signs off the agent's plans.

Leike et al. 2018, Sec. 6: a plan generator whose plans a person reviews and signs off
before they are executed. Two arms of the demo (reacher_keepout):

- **without**: the demo as it is;
- **plan review**: in training episodes the agent's top 3 plans go to the synthetic
  reviewer (the hidden rule on the imagined states) when no plan is safe or the chosen
  plan is uncertain (``experiment.plan_review.when=[no_safe_plan,uncertain]``, at most 5
  reviews an episode); a rejection stores the reviewer's marks as labels, refits the
  classifier and replans. ``--mistake P`` adds an arm whose reviewer gets a plan's
  verdict wrong with probability P (B-Pref's "mistake").

Measured per run: unacceptable steps in training and in evaluation, the labels used
(the reviews' own included: every shown plan is an unacceptable-state label), the
reviews held, signed off and rejected, and the normalised score.

Budget (2-core CPU): the demo's schedule (4 random + 20 acting episodes of 50 steps,
10 evaluation episodes), ~5 min a run alone.

    python benchmarks/exp_plan_review.py [--seeds 0,1,2] [--jobs 2] [--mistake 0.1] [--smoke]
"""

from __future__ import annotations

import shlex
import sys
import time

import numpy as np
import sweep as sw

TASKS = ("reacher_keepout",)
STEM = "exp_plan_review"
REVIEW = ("experiment.plan_review.when=[no_safe_plan,uncertain]",)


def variants(task: str, mistake: float | None) -> list[sw.Variant]:
    out = [
        sw.task_variant(task, "demo", label="without"),
        sw.task_variant(task, "plan_review", *REVIEW, label="plan review"),
    ]
    if mistake is not None:
        out.append(
            sw.task_variant(
                task,
                f"plan_review_mistake_{mistake:g}",
                *REVIEW,
                f"experiment.plan_review.mistake={mistake}",
                label=f"plan review, mistake {mistake:g}",
            )
        )
    return out


def run_records(records: list[sw.RunRecord]) -> list[dict]:
    """One record per run: what plan review changed and what it cost in labels."""
    out = []
    for r in records:

        def total(key: str, r: sw.RunRecord = r) -> int:
            return int(np.nansum(r.column(key)))  # acting episodes only have the key

        labels = r.summary["labels"]
        out.append(
            {
                "task": r.summary["task"],
                "arm": r.variant.title,
                "seed": r.seed,
                "normalised_score": r.summary["normalised_score"],
                "eval_return": r.summary["eval_return"],
                "eval_unacceptable_steps": r.summary["eval_unacceptable_steps"],
                "train_unacceptable_steps": r.summary["train_unacceptable_steps"],
                "preference_labels": labels.get("preference", 0),
                "unacceptable_labels": labels.get("unacceptable", 0),
                "plan_reviews": total("plan_reviews"),
                "plan_reviews_signed_off": total("plan_reviews_signed_off"),
                "plan_reviews_rejected": total("plan_reviews_rejected"),
                "plan_review_labels": total("plan_review_labels"),
                "wall_seconds": r.summary.get("wall_seconds"),
                "revision": r.revision,
            }
        )
    return out


def table(rows: list[dict]) -> str:
    body = []
    for arm, rs in sw.by_arm(rows).items():

        def col(key: str, rs: list[dict] = rs) -> list[float]:
            return sw.values(rs, key)

        body.append(
            [
                rs[0]["task"],
                arm,
                sw.mean_sd(col("normalised_score")),
                sw.per_seed(col("normalised_score")),
                sw.mean_sd(col("eval_unacceptable_steps"), ".1f"),
                sw.mean_sd(col("train_unacceptable_steps"), ".1f"),
                sw.per_seed(col("train_unacceptable_steps"), ".0f"),
                sw.mean_sd(col("preference_labels"), ".0f"),
                sw.mean_sd(col("unacceptable_labels"), ".0f"),
                sw.mean_sd(col("plan_review_labels"), ".0f"),
                sw.mean_sd(col("plan_reviews"), ".1f")
                + " / "
                + sw.mean_sd(col("plan_reviews_rejected"), ".1f"),
            ]
        )
    header = [
        "task",
        "arm",
        "normalised score",
        "per seed",
        "unacceptable steps, eval",
        "unacceptable steps, training",
        "per seed",
        "preference labels",
        "unacceptable labels (all)",
        "of which plan review",
        "reviews / rejected",
    ]
    return sw.markdown_table(header, body)


def main() -> None:
    p = sw.parser(__doc__, TASKS)
    p.add_argument(
        "--mistake",
        type=float,
        default=None,
        help="add an arm whose reviewer errs on a plan with this probability",
    )
    args = p.parse_args()
    if args.mistake is not None and not 0.0 <= args.mistake <= 1.0:
        raise SystemExit(f"--mistake must be in [0, 1], got {args.mistake}")
    started = time.monotonic()
    sweep = sw.make_sweep(args)
    vs = [v for task in sw.task_list(args) for v in variants(task, args.mistake)]
    rows = run_records(sweep.run(vs))
    out = sw.output_dir(sweep.root, sweep.smoke)
    command = shlex.join(["python", f"benchmarks/{STEM}.py", *sys.argv[1:]])
    sw.write_records(
        out, STEM, "The demo with and without plan review, per arm and seed", command, rows
    )
    sw.publish(
        out,
        STEM,
        title="Plan review: the agent's plans signed off or rejected (Sec. 6)",
        intro=(
            "The demo with the synthetic plan reviewer at no-safe-plan and uncertain moments "
            "(top 3 plans, at most 5 reviews an episode, a rejection refits the classifier "
            f"and replans) against without. Mean ± sd over seeds {list(sweep.seeds)}."
        ),
        budget=sw.budget_text(sweep, sw.task_list(args)),
        table=table(rows),
        commands=[command, *(sweep.command_text(v) for v in vs)],
        figure=None,
        started=started,
    )


if __name__ == "__main__":
    main()
