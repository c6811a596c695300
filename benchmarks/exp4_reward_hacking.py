"""Experiment 4: reward hacking with a frozen reward model.

Two arms: the reward ensemble refitted on new preferences every episode (online
feedback, the default) against one frozen after iteration K
(``experiment.frozen_reward_after=K``; iterations count the random episodes too, and
the first fit happens after the last random one). K defaults to the number of random
episodes + 1: the frozen model has seen the labels of the random episodes and of the
first two acting episodes, then the planner optimises it for the rest of the run.

Measured per training episode: the true return (hidden reward, ``metrics.csv``) and
the predicted return, the run's final reward model summed over the episode's
transitions (``replay.npz``; standardised units). One model scores every episode of
a run: in the frozen arm it is the very model the planner optimised, in the online
arm the last refit (the model the planner used at each episode re-standardises its
output at every refit, so its own sums are not comparable across episodes). Shown in
one plot, mean over seeds (thick) with every seed (thin). Reward hacking shows as a
predicted return that keeps rising while the true return does not; the table gives
both changes from the first to the last third of the episodes after the freeze,
their Spearman correlation over those episodes, and the final score.

Anchor: Leike et al. 2018, Sec. 4.3 and 5.2 (online feedback against reward
hacking); Ibarz, Leike et al. 2018 showed an agent exploiting a reward model trained
offline (its predicted reward rising as its true score fell) and online training
preventing it.

Budget (2-core CPU, 3 seeds): reacher_keepout runs the demo's schedule (4 random + 20
acting episodes of 50 steps and 10 evaluation episodes with the agent, a random policy
and the oracle); ~14 min an arm at ``--jobs 2``. 2 arms: ~28 min, ~14 min when
experiment 1's demo runs exist (measured: 15.7 min for the frozen arm at ``--jobs 1``
beside another experiment), plus ~10 s to score every episode with the final models.

    python benchmarks/exp4_reward_hacking.py [--freeze-after K] [--tasks reacher_keepout] [--smoke]
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import sweep as sw
from exp5_reward_alignment import load_run, predicted_rewards
from scipy.stats import spearmanr

TASKS = ("reacher_keepout",)
STEM = "exp4_reward_hacking"


def default_freeze_after(sweep: sw.Sweep, task: str) -> int:
    """Random episodes + 1 of the composed configuration (see the module docstring)."""
    cfg = sweep.compose(sw.task_variant(task, "demo"))
    return int(cfg.experiment.explore_episodes) + 1


def variants(tasks: list[str], freeze: dict[str, int]) -> list[sw.Variant]:
    out = []
    for task in tasks:
        out.append(sw.task_variant(task, "demo", label="online feedback"))
        k = freeze[task]
        out.append(
            sw.task_variant(
                task,
                f"frozen_after_{k}",
                f"experiment.frozen_reward_after={k}",
                label=f"reward model frozen after iteration {k}",
            )
        )
    return out


def final_model_returns(record: sw.RunRecord) -> np.ndarray:
    """Per training episode (metrics row): the run's final reward model summed over the
    episode's transitions, one scale for the whole run."""
    run = load_run(record.run_dir)  # its replay is the run's, cut to the checkpoint
    replay = run.replay
    episode = replay.episode[: len(replay)]  # oldest first: the buffer never wrapped
    reward = predicted_rewards(run, *replay.arrays())
    sums = np.bincount(episode, weights=reward.astype(np.float64))
    if len(sums) != len(record.metrics):
        raise RuntimeError(
            f"{record.run_dir}: {len(sums)} episodes in replay.npz, "
            f"{len(record.metrics)} rows in metrics.csv"
        )
    return sums


def predicted(record: sw.RunRecord, cache: dict[Path, np.ndarray]) -> np.ndarray:
    if record.run_dir not in cache:
        cache[record.run_dir] = final_model_returns(record)
    return cache[record.run_dir]


def after_freeze(
    record: sw.RunRecord, k: int, cache: dict[Path, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted (final model) returns of the episodes after iteration k."""
    keep = record.column("iteration") > k
    return record.column("true_return")[keep], predicted(record, cache)[keep]


def thirds_change(x: np.ndarray) -> float:
    """Mean of the last third minus mean of the first third (NaN-aware)."""
    n = max(1, len(x) // 3)
    if len(x) < 2:
        return float("nan")
    return float(np.nanmean(x[-n:]) - np.nanmean(x[:n]))


def table(
    records: list[sw.RunRecord], freeze: dict[str, int], cache: dict[Path, np.ndarray]
) -> str:
    rows = []
    for recs in sw.by_variant(records).values():
        k = freeze[recs[0].summary["task"]]
        d_true, d_pred, rho = [], [], []
        for r in recs:
            t, p = after_freeze(r, k, cache)
            d_true.append(thirds_change(t))
            d_pred.append(thirds_change(p))
            ok = np.isfinite(t) & np.isfinite(p)
            rho.append(float(spearmanr(t[ok], p[ok]).statistic) if ok.sum() > 2 else np.nan)
        s = [r.summary for r in recs]
        rows.append(
            [
                recs[0].summary["task"],
                recs[0].variant.title,
                sw.mean_sd(d_true, ".2f"),
                sw.mean_sd(d_pred, ".2f"),
                sw.mean_sd(rho),
                sw.per_seed(rho),
                sw.mean_sd([x["eval_return"] for x in s], ".2f"),
                sw.mean_sd([x["normalised_score"] for x in s]),
                sw.mean_sd([x["train_unacceptable_steps"] for x in s], ".1f"),
            ]
        )
    header = [
        "task",
        "reward model",
        f"change of true return (episodes after iteration {sorted(set(freeze.values()))})",
        "change of predicted return (final model)",
        "Spearman(true, predicted) over those episodes",
        "per seed",
        "eval return",
        "normalised score",
        "unacceptable steps, training",
    ]
    return sw.markdown_table(header, rows)


def figure(
    records: list[sw.RunRecord],
    freeze: dict[str, int],
    tasks: list[str],
    cache: dict[Path, np.ndarray],
):
    """One panel per task: true return (left axis, solid) and predicted return of the
    run's final reward model (right axis, dashed) per episode; thick: mean over seeds,
    thin: seeds."""
    groups = sw.by_variant(records)
    fig, axes = plt.subplots(1, len(tasks), figsize=(8 * len(tasks), 5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        ax_pred = ax.twinx()
        arms = [recs for recs in groups.values() if recs[0].summary["task"] == task]
        for i, recs in enumerate(arms):
            label = recs[0].variant.title
            for key, axis, style in (
                ("true_return", ax, "-"),
                ("predicted_return", ax_pred, "--"),
            ):
                curves = [
                    r.column(key) if key == "true_return" else predicted(r, cache) for r in recs
                ]
                for r, c in zip(recs, curves, strict=True):
                    axis.plot(r.column("iteration"), c, style, color=f"C{i}", lw=0.6, alpha=0.4)
                it = sw.mean_curve([r.column("iteration") for r in recs])
                what = "true" if key == "true_return" else "predicted"
                axis.plot(
                    it, sw.mean_curve(curves), style, color=f"C{i}", lw=2, label=f"{what}: {label}"
                )
        ax.axvline(freeze[task], color="gray", ls=":", lw=1)
        ax.set_xlabel("iteration (episode; the reward model is frozen after the dotted line)")
        ax.set_ylabel("true return (hidden reward), solid")
        ax_pred.set_ylabel("predicted return, run's final reward model (standardised), dashed")
        ax.set_title(f"{task}: true vs predicted return, online vs frozen reward model")
        lines = ax.get_legend_handles_labels()
        more = ax_pred.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def main() -> None:
    p = sw.parser(__doc__, TASKS)
    p.add_argument(
        "--freeze-after",
        type=int,
        default=None,
        help="experiment.frozen_reward_after (default: random episodes + 1)",
    )
    args = p.parse_args()
    started = time.monotonic()
    sweep = sw.make_sweep(args)
    tasks = sw.task_list(args)
    freeze = {}
    for task in tasks:
        first_fit = (
            int(sweep.compose(sw.task_variant(task, "demo")).experiment.explore_episodes) - 1
        )
        k = default_freeze_after(sweep, task) if args.freeze_after is None else args.freeze_after
        if k < first_fit:
            raise SystemExit(
                f"--freeze-after {k}: the reward model is first fitted after iteration "
                f"{first_fit} on {task}, so it would never be fitted at all"
            )
        freeze[task] = k
    vs = variants(tasks, freeze)
    records = sweep.run(vs)
    cache: dict[Path, np.ndarray] = {}
    option = "" if args.freeze_after is None else f" --freeze-after {args.freeze_after}"
    sw.publish(
        sw.output_dir(sweep.root, sweep.smoke),
        STEM,
        title="Experiment 4: reward hacking with a frozen reward model",
        intro=(
            "True and predicted return over training with the reward model refitted online and "
            f"frozen after iteration K ({freeze}). The predicted return of every episode of a "
            "run is its final reward model's sum over the episode (in the frozen arm, the model "
            "the planner optimised; one scale per run). Changes are the mean of the last third minus "
            "the mean of the first third of the episodes after K. "
            f"Mean ± sd over seeds {list(sweep.seeds)}. Anchor: Leike et al. 2018, Sec. 4.3; "
            "Ibarz, Leike et al. 2018."
        ),
        budget=sw.budget_text(sweep, tasks),
        table=table(records, freeze, cache),
        commands=[f"python benchmarks/{STEM}.py{option}", *(sweep.command_text(v) for v in vs)],
        figure=figure(records, freeze, tasks, cache),
        started=started,
    )


if __name__ == "__main__":
    main()
