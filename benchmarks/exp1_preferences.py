"""Experiment 1: learning from preferences alone.

The agent never sees a reward: it plans with a reward ensemble fitted to pairwise
preferences of the synthetic (B-Pref oracle) teacher and with a classifier of the
teacher's unacceptable-outcome labels. Measured per task over seeds:

- the normalised score ``(R - R_random) / (R_oracle - R_random)`` on the evaluation
  episodes, where the oracle plans with the hidden reward and the hidden unacceptable
  rule on the *same* world model, i.e. at equal environment steps;
- the labels used (preferences + unacceptable judgements) and the environment steps;
- unacceptable steps in evaluation and during training;
- with ``--oracle-mode``, also against separate oracle-mode runs
  (``reward_model=oracle constraints.kind=hidden_rule``: the hidden reward and rule from
  the start with the task's hard entries kept, so a world model trained on the
  oracle's own data, at the same number of environment steps): ``(R - R_random) / (R_oracle_mode - R_random)``, seed by seed.

Anchor: Christiano et al. 2017 (*Deep RL from human preferences*) reached most of
RL-with-the-true-reward on MuJoCo tasks with ~700 synthetic labels, but after
millions of environment steps; here the model-based agent gets a few thousand.

Budget (2-core CPU, 3 seeds, ``--jobs 2``): reacher_keepout runs the demo's schedule (4
random + 20 acting episodes of 50 steps, 10 evaluation episodes with the agent, a random
policy and the oracle); inverted_pendulum its preset (200-step episodes, 2 random + 10
acting, the experimenter's reset, 3 evaluation episodes) with the PETS world model and an
18-step horizon, 10-25 min a run; half_cheetah_safe its preset (1 random + 19 acting
episodes of 1,000 steps, 5 particles, 2 evaluation episodes) with icem_fast, 60-90 min a
run; hopper_safe a short one (100-step episodes, 2 random + 10 acting, 5 particles, 3
evaluation episodes) until its preset is settled. ``--oracle-mode`` adds one oracle-mode arm a task, quicker (no reward or
classifier to fit). Besides the markdown table, ``docs/<stem>.json`` holds one record per
task and seed: env steps, preference and unacceptable labels, eval return, the
oracle-mode run's eval return and the score against it, unacceptable steps in evaluation
and training, wall seconds, the git revision the run started from and the command that
reruns it.

    python benchmarks/exp1_preferences.py [--seeds 0,1,2] [--jobs 2] [--oracle-mode] [--smoke]
        [--tasks inverted_pendulum,...] [--stem exp1_preferences]
"""

from __future__ import annotations

import json
import shlex
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import sweep as sw

TASKS = ("inverted_pendulum", "reacher_keepout", "half_cheetah_safe", "hopper_safe")
STEM = "exp1_preferences"


# The hidden reward and rule, with the task's own hard entries kept (``constraints=oracle``
# would also drop e.g. reacher's joint-speed bounds, a less constrained planner).
ORACLE_MODE = ("reward_model=oracle", "constraints.kind=hidden_rule")


def variants(tasks: list[str], oracle_mode: bool = False) -> list[sw.Variant]:
    """The plain demo on each task (shared with experiments 2-6), then oracle-mode runs."""
    out = [sw.task_variant(task, "demo", label=task) for task in tasks]
    if oracle_mode:
        out += [
            sw.task_variant(task, "oracle_mode", *ORACLE_MODE, label=f"{task} oracle mode")
            for task in tasks
        ]
    return out


def learned_runs(records: list[sw.RunRecord]) -> dict[str, list[sw.RunRecord]]:
    return {k: v for k, v in sw.by_variant(records).items() if k.endswith("/demo")}


def against_oracle_mode(recs: list[sw.RunRecord], records: list[sw.RunRecord]) -> list[float]:
    """Per seed: (R - R_random) / (R_oracle_mode - R_random); empty without oracle-mode runs."""
    name = f"{recs[0].summary['task']}/oracle_mode"
    oracle = {r.seed: r.summary for r in records if r.variant.name == name}
    out = []
    for r in recs:
        if r.seed in oracle:
            lo, hi = r.summary["random_return"], oracle[r.seed]["eval_return"]
            out.append((r.summary["eval_return"] - lo) / (hi - lo) if hi != lo else np.nan)
    return out


def json_records(records: list[sw.RunRecord], sweep: sw.Sweep) -> list[dict]:
    """One record per learned run (task, seed): its labels, returns and unacceptable steps,
    the oracle-mode run of the same task and seed where there is one, and how to rerun it."""
    oracle = {
        (r.summary["task"], r.seed): r for r in records if r.variant.name.endswith("/oracle_mode")
    }
    out = []
    for recs in learned_runs(records).values():
        for r in recs:
            s = r.summary
            o = oracle.get((s["task"], r.seed))
            vs = against_oracle_mode([r], records)  # empty without an oracle-mode run
            out.append(
                {
                    "task": s["task"],
                    "seed": r.seed,
                    "env_steps": s["env_steps"],
                    "preference_labels": s["labels"].get("preference", 0),
                    "unacceptable_labels": s["labels"].get("unacceptable", 0),
                    "eval_return": s["eval_return"],
                    "random_return": s["random_return"],
                    "oracle_same_world_model_return": s["oracle_return"],
                    "oracle_mode_eval_return": None if o is None else o.summary["eval_return"],
                    "score_against_oracle_mode": vs[0] if vs and np.isfinite(vs[0]) else None,
                    "eval_unacceptable_steps": s["eval_unacceptable_steps"],
                    "train_unacceptable_steps": s["train_unacceptable_steps"],
                    "train_resets": s.get("train_resets", 0),
                    "oracle_mode_eval_unacceptable_steps": (
                        None if o is None else o.summary["eval_unacceptable_steps"]
                    ),
                    "wall_seconds": s["wall_seconds"],
                    "oracle_mode_wall_seconds": None if o is None else o.summary["wall_seconds"],
                    "revision": r.revision,
                    "command": sweep.run_command_text(r.variant, r.seed),
                    "oracle_mode_command": (
                        None if o is None else sweep.run_command_text(o.variant, o.seed)
                    ),
                }
            )
    return out


def table(records: list[sw.RunRecord]) -> str:
    rows = []
    with_oracle_mode = any(r.variant.name.endswith("/oracle_mode") for r in records)
    for recs in learned_runs(records).values():
        s = [r.summary for r in recs]
        score = [x["normalised_score"] for x in s]
        extra = []
        if with_oracle_mode:
            task = recs[0].summary["task"]
            oracle_returns = [
                r.summary["eval_return"] for r in records if r.variant.name == f"{task}/oracle_mode"
            ]
            vs_oracle = against_oracle_mode(recs, records)
            extra = [
                sw.mean_sd(oracle_returns, ".2f"),
                sw.mean_sd(vs_oracle),
                sw.per_seed(vs_oracle),
            ]
        rows.append(
            [
                recs[0].summary["task"],
                sw.mean_sd(score),
                sw.per_seed(score),
                sw.mean_sd([x["eval_return"] for x in s], ".2f"),
                sw.mean_sd([x["random_return"] for x in s], ".2f"),
                sw.mean_sd([x["oracle_return"] for x in s], ".2f"),
                sw.mean_sd([x["labels"].get("preference", 0) for x in s], ".0f"),
                sw.mean_sd([x["labels"].get("unacceptable", 0) for x in s], ".0f"),
                sw.mean_sd([x["env_steps"] for x in s], ".0f"),
                sw.mean_sd([x["eval_unacceptable_steps"] for x in s], ".1f"),
                sw.mean_sd([x["train_unacceptable_steps"] for x in s], ".1f"),
                *extra,
            ]
        )
    header = [
        "task",
        "normalised score",
        "per seed",
        "eval return",
        "random",
        "oracle (same world model)",
        "preference labels",
        "unacceptable labels",
        "env steps",
        "unacceptable steps, eval",
        "unacceptable steps, training",
    ]
    if with_oracle_mode:
        header += ["oracle-mode run: eval return", "score against oracle mode", "per seed"]
    return sw.markdown_table(header, rows)


def figure(records: list[sw.RunRecord]):
    """Final normalised score per task, and the training episodes' normalised return
    against the labels used so far."""
    groups = learned_runs(records)
    fig, (ax_bar, ax_curve) = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, (name, recs) in enumerate(groups.items()):
        scores = [r.summary["normalised_score"] for r in recs]
        ax_bar.bar(i, np.nanmean(scores), color=f"C{i}", alpha=0.6)
        ax_bar.plot([i] * len(scores), scores, "ko", ms=4)
        curves_x, curves_y = [], []
        for r in recs:
            lo, hi = r.summary["random_return"], r.summary["oracle_return"]
            y = (
                (r.column("true_return") - lo) / (hi - lo)
                if hi != lo
                else np.full(len(r.metrics), np.nan)
            )
            # episode i is acted with models fitted on the labels of rounds < i
            x = np.r_[0.0, r.column("labels")[:-1]]
            ax_curve.plot(x, y, color=f"C{i}", lw=0.6, alpha=0.5)
            curves_x.append(x)
            curves_y.append(y)
        ax_curve.plot(
            sw.mean_curve(curves_x),
            sw.mean_curve(curves_y),
            color=f"C{i}",
            lw=2,
            label=name.split("/")[0],
        )
    ax_bar.set_xticks(range(len(groups)), [n.split("/")[0] for n in groups])
    ax_bar.axhline(1.0, color="k", ls="--", lw=1, label="oracle (hidden reward, same world model)")
    ax_bar.axhline(0.0, color="gray", lw=1)
    ax_bar.set_ylabel("normalised score (evaluation)")
    ax_bar.set_title("learning from preferences alone: final score (dots: seeds)")
    ax_bar.legend(loc="best")
    ax_curve.axhline(1.0, color="k", ls="--", lw=1)
    ax_curve.set_xlabel("labels the episode's models were fitted on (preferences + unacceptable)")
    ax_curve.set_ylabel("normalised true return of the training episode")
    ax_curve.set_title("training episodes against labels (thin: seeds, thick: mean)")
    ax_curve.legend()
    fig.tight_layout()
    return fig


def main() -> None:
    p = sw.parser(__doc__, TASKS)
    p.add_argument(
        "--oracle-mode",
        action="store_true",
        help="also run oracle mode (reward_model=oracle constraints=oracle) per task and seed",
    )
    p.add_argument(
        "--stem",
        default=STEM,
        help=f"output names, docs/STEM.md/.json/.png (default {STEM}; another keeps a "
        "run over some tasks beside the full table)",
    )
    args = p.parse_args()
    started = time.monotonic()
    sweep = sw.make_sweep(args)
    tasks = sw.task_list(args)
    vs = variants(tasks, args.oracle_mode)
    records = sweep.run(vs)
    out = sw.output_dir(sweep.root, sweep.smoke)
    command = shlex.join(["python", f"benchmarks/{STEM}.py", *sys.argv[1:]])
    path = out / f"{args.stem}.json"
    path.write_text(
        json.dumps(
            {
                "what": "Experiment 1: learning from preferences alone, per task and seed",
                "command": command,
                "cpu": sw.cpu_name(),
                "runs": json_records(records, sweep),
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {path}")
    sw.publish(
        out,
        args.stem,
        title="Experiment 1: learning from preferences alone",
        intro=(
            "Normalised score (R - R_random) / (R_oracle - R_random) of the final agent, whose "
            "reward is learned from synthetic preferences only; the oracle plans with the hidden "
            "reward and unacceptable rule on the same world model (equal environment steps). "
            f"Mean ± sd over seeds {list(sweep.seeds)}. Christiano et al. 2017 needed ~700 "
            "labels and millions of environment steps on MuJoCo."
        ),
        budget=sw.budget_text(sweep, tasks),
        table=table(records),
        commands=[
            command,
            *(sweep.command_text(v) for v in vs),
        ],
        figure=figure(records),
        started=started,
    )


if __name__ == "__main__":
    main()
