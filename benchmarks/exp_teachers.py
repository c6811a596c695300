"""Teacher robustness: the learned agent with an imperfect synthetic teacher.

Experiment 1's learned agent is taught by the perfectly rational B-Pref "oracle" teacher.
Here the same runs are repeated with the B-Pref "mistake" teacher (Lee et al. 2021,
Sec. 3, "Teachers": rational, but 10% of its preference answers are flipped;
``configs/feedback/mistake.yaml``), and both are scored seed by seed against experiment
1's oracle-mode run of the same task and seed (the hidden reward and rule from the start,
so a world model trained on the oracle's own data at equal environment steps):
``(R - R_random) / (R_oracle_mode - R_random)``. Unacceptable labels are the rule's in
both arms (B-Pref's teachers answer preferences only).

Targets: the learned agent's targets of the task (reacher_keepout >= 0.95 of oracle mode,
half_cheetah_safe >= 0.9) less 0.05 with the mistake teacher, and 0 unacceptable steps in
evaluation with either teacher.

The perfect-teacher arm and the oracle-mode arm are experiment 1's runs (reused when
finished, started otherwise); the mistake arm adds one run per task and seed, with the
schedule of experiment 1 (``sweep.TASK_BUDGET``). Besides the markdown table and figure,
``docs/<stem>.json`` holds one record per task, teacher and seed with its score, target,
labels, unacceptable steps, wall seconds, revision and the command that reruns it.

    python benchmarks/exp_teachers.py [--tasks reacher_keepout,half_cheetah_safe]
        [--seeds 0,1,2] [--jobs 2] [--smoke] [--stem exp_teachers]
"""

from __future__ import annotations

import json
import shlex
import sys
import time

import matplotlib

matplotlib.use("Agg")
import exp1_preferences as exp1
import matplotlib.pyplot as plt
import numpy as np
import sweep as sw

STEM = "exp_teachers"
TASKS = ("reacher_keepout", "half_cheetah_safe")
# The learned agent's target against oracle mode with the perfect teacher (issue targets);
# an imperfect teacher's target is this less MISTAKE_SLACK.
TARGET = {"reacher_keepout": 0.95, "half_cheetah_safe": 0.9, "hopper_safe": 0.9}
MISTAKE_SLACK = 0.05
# teacher (and how the reward model reads it) -> (arm, overrides); "oracle" is experiment
# 1's plain learned arm. "lapse 0.1": the Bradley-Terry model assumes 10% of answers are
# uniformly random (Christiano et al. 2017, Sec. 2.2.3).
TEACHERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "oracle": ("demo", ()),
    "oracle, lapse 0.1": ("teacher_oracle_lapse", ("reward_model.lapse=0.1",)),
    "mistake": ("teacher_mistake", ("feedback=mistake",)),
    "mistake, lapse 0.1": ("teacher_mistake_lapse", ("feedback=mistake", "reward_model.lapse=0.1")),
}


def variants(tasks: list[str]) -> list[sw.Variant]:
    """Per task: each teacher's learned arm, then experiment 1's oracle-mode arm."""
    out = []
    for task in tasks:
        for teacher, (arm, overrides) in TEACHERS.items():
            out.append(sw.task_variant(task, arm, *overrides, label=f"{task}, {teacher} teacher"))
    out += [
        sw.task_variant(task, "oracle_mode", *exp1.ORACLE_MODE, label=f"{task} oracle mode")
        for task in tasks
    ]
    return out


def teacher_of(record: sw.RunRecord) -> str | None:
    """The teacher of a learned run, None for an oracle-mode run."""
    arm = record.variant.name.rsplit("/", 1)[-1]
    return next((t for t, (a, _) in TEACHERS.items() if a == arm), None)


def target(task: str, teacher: str) -> float | None:
    """The score a run must reach against oracle mode (None for a task without one)."""
    if task not in TARGET:
        return None
    return TARGET[task] - (MISTAKE_SLACK if teacher.startswith("mistake") else 0.0)


def json_records(records: list[sw.RunRecord], sweep: sw.Sweep) -> list[dict]:
    """One record per learned run (task, teacher, seed), scored against the oracle-mode
    run of its task and seed (null where that run is missing)."""
    out = []
    for r in records:
        teacher = teacher_of(r)
        if teacher is None:
            continue
        s = r.summary
        vs = exp1.against_oracle_mode([r], records)
        score = vs[0] if vs and np.isfinite(vs[0]) else None
        goal = target(s["task"], teacher)
        out.append(
            {
                "task": s["task"],
                "teacher": teacher,
                "seed": r.seed,
                "score_against_oracle_mode": score,
                "target": goal,
                "meets_target": (
                    None
                    if score is None or goal is None
                    else bool(score >= goal and s["eval_unacceptable_steps"] == 0)
                ),
                "eval_return": s["eval_return"],
                "random_return": s["random_return"],
                "eval_unacceptable_steps": s["eval_unacceptable_steps"],
                "train_unacceptable_steps": s["train_unacceptable_steps"],
                "preference_labels": s["labels"].get("preference", 0),
                "unacceptable_labels": s["labels"].get("unacceptable", 0),
                "env_steps": s["env_steps"],
                "wall_seconds": s["wall_seconds"],
                "revision": r.revision,
                "command": sweep.run_command_text(r.variant, r.seed),
            }
        )
    return out


def table(rows: list[dict]) -> str:
    """One line per task and teacher: the score against oracle mode and the target."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["teacher"]), []).append(row)
    lines = []
    for (task, teacher), rs in groups.items():
        scores = [
            np.nan if r["score_against_oracle_mode"] is None else r["score_against_oracle_mode"]
            for r in rs
        ]
        goal = rs[0]["target"]
        met = [r["meets_target"] for r in rs]
        lines.append(
            [
                task,
                teacher,
                sw.mean_sd(scores),
                sw.per_seed(scores),
                "-" if goal is None else f">= {goal:.2f}",
                f"{sum(bool(m) for m in met)} of {len(met)}",
                sw.mean_sd([r["eval_unacceptable_steps"] for r in rs], ".1f"),
                sw.mean_sd([r["train_unacceptable_steps"] for r in rs], ".1f"),
                sw.mean_sd([r["preference_labels"] for r in rs], ".0f"),
                sw.mean_sd([r["unacceptable_labels"] for r in rs], ".0f"),
                sw.mean_sd([r["wall_seconds"] / 60 for r in rs], ".1f"),
            ]
        )
    header = [
        "task",
        "teacher",
        "score against oracle mode",
        "per seed",
        "target",
        "seeds meeting it (and 0 unacceptable steps)",
        "unacceptable steps, eval",
        "unacceptable steps, training",
        "preference labels",
        "unacceptable labels",
        "wall min",
    ]
    return sw.markdown_table(header, lines)


def figure(rows: list[dict]):
    """Score against oracle mode per task and teacher (bars: mean, dots: seeds, ticks:
    targets)."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    teachers = list(TEACHERS)
    fig, ax = plt.subplots(figsize=(4.5 + 2.4 * len(tasks), 4))
    width = 0.8 / len(teachers)
    for j, teacher in enumerate(teachers):
        for i, task in enumerate(tasks):
            rs = [r for r in rows if r["task"] == task and r["teacher"] == teacher]
            scores = [r["score_against_oracle_mode"] for r in rs]
            scores = [np.nan if s is None else s for s in scores]
            x = i + (j - (len(teachers) - 1) / 2) * width
            if scores:
                ax.bar(
                    x,
                    np.nanmean(scores),
                    width * 0.9,
                    color=f"C{j}",
                    alpha=0.6,
                    label=teacher if i == 0 else None,
                )
                ax.plot([x] * len(scores), scores, "ko", ms=4)
            goal = target(task, teacher)
            if goal is not None:
                ax.plot([x - width / 2, x + width / 2], [goal, goal], color=f"C{j}", lw=2, ls="--")
    ax.axhline(1.0, color="k", lw=1, ls=":", label="oracle mode")
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("(R - R_random) / (R_oracle_mode - R_random)")
    finite = [
        r["score_against_oracle_mode"] for r in rows if r["score_against_oracle_mode"] is not None
    ]
    ax.set_ylim(min([0.7, *finite]) - 0.05, max([1.0, *finite]) + 0.05)
    ax.set_title("teacher robustness (dashed: targets; dots: seeds)")
    ax.legend(title="teacher (reward model)", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def main() -> None:
    p = sw.parser(__doc__, TASKS)
    p.add_argument(
        "--stem",
        default=STEM,
        help=f"output names, docs/STEM.md/.json/.png (default {STEM})",
    )
    args = p.parse_args()
    started = time.monotonic()
    sweep = sw.make_sweep(args)
    tasks = sw.task_list(args)
    vs = variants(tasks)
    records = sweep.run(vs)
    rows = json_records(records, sweep)
    out = sw.output_dir(sweep.root, sweep.smoke)
    command = shlex.join(["python", f"benchmarks/{STEM}.py", *sys.argv[1:]])
    path = out / f"{args.stem}.json"
    what = "Teacher robustness: B-Pref oracle and mistake teachers against oracle mode"
    payload = {"what": what, "command": command, "cpu": sw.cpu_name(), "runs": rows}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")
    sw.publish(
        out,
        args.stem,
        title="Teacher robustness",
        intro=(
            "The learned agent taught by the B-Pref oracle teacher (experiment 1's runs) and "
            "by the B-Pref mistake teacher (10% of preference answers flipped), each scored "
            "against the oracle-mode run of the same task and seed: (R - R_random) / "
            f"(R_oracle_mode - R_random). Seeds {list(sweep.seeds)}. A seed meets its target "
            "when its score reaches it and its evaluation has 0 unacceptable steps."
        ),
        budget=sw.budget_text(sweep, tasks),
        table=table(rows),
        commands=[command, *(sweep.command_text(v) for v in vs)],
        figure=figure(rows),
        started=started,
    )


if __name__ == "__main__":
    main()
