"""The red team against reward hacking and near misses (Leike et al. 2018, Sec. 5.8).

Two arms of experiment 4's frozen reward model (``experiment.frozen_reward_after=K``,
K = random episodes + 1), at the same number of synthesised hypotheticals a round:

- **without**: the demo's synthesis objectives (uncertainty, novelty, min_reward);
- **red team**: the same plus ``reward_hacking`` (the futures the reward ensemble scores
  highest where its members disagree) and ``near_miss`` (the smallest change of the
  agent's own plan after which the classifier's pessimistic estimate crosses its cut
  while its calibrated mean does not). The round's hypotheticals are split over five
  objectives instead of three, so both arms ask the same number of questions.

Measured per run:

- experiment 4's gap: Spearman of the true and the predicted return (the run's final
  reward model) over the training episodes after the freeze, and the final score;
- the classifier's false-negative rate **near the boundary** on held-out states: states
  of the other seeds' replay buffers (both arms), each moved by Gaussian noise of
  ``NEAR_SCALE`` x the pool's per-dimension standard deviation; a moved state counts as
  near the boundary when the hidden rule judges it otherwise than the state it came
  from (so it lies within one such step of the unacceptable set). The rate is the
  fraction of the near-boundary unacceptable states the final calibrated classifier
  lets pass. Both arms of a seed are scored on the same states.

Budget (2-core CPU, seeds 0-2): reacher_keepout runs the demo's schedule (4 random + 20
acting episodes of 50 steps, 10 evaluation episodes); the frozen-without arm is
experiment 4's frozen arm, reused when that has run.

    python benchmarks/exp_red_team.py [--seeds 0,1,2] [--jobs 2] [--smoke]
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import sweep as sw
from exp4_reward_hacking import after_freeze, default_freeze_after
from scipy.stats import spearmanr

TASKS = ("reacher_keepout",)
STEM = "exp_red_team"
RED_TEAM = "[uncertainty,novelty,min_reward,reward_hacking,near_miss]"
NEAR_SCALE = 0.1  # of the pool's per-dimension std: one small step from a real state
NEAR_DRAWS = 4  # moved copies of every pool state


def variants(task: str, k: int) -> list[sw.Variant]:
    frozen = f"experiment.frozen_reward_after={k}"
    return [
        sw.task_variant(task, f"frozen_after_{k}", frozen, label="without (frozen reward model)"),
        sw.task_variant(
            task,
            f"frozen_after_{k}_red_team",
            frozen,
            f"experiment.solicit.synthesis_objectives={RED_TEAM}",
            label="red team (frozen reward model)",
        ),
    ]


def near_boundary_states(
    task, pool: np.ndarray, rng: np.random.Generator, scale: float = NEAR_SCALE
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out states within one small step of the unacceptable set.

    Every pool state [N, S] is moved ``NEAR_DRAWS`` times by Gaussian noise of ``scale``
    x the pool's per-dimension std; the moved states whose hidden judgement differs from
    their origin's are returned with that judgement: (states [M, S], unacceptable [M]).
    """
    std = pool.std(0)
    origin = np.repeat(pool, NEAR_DRAWS, axis=0)
    moved = origin + rng.normal(size=origin.shape) * scale * std
    before = np.asarray(task.unacceptable(origin), dtype=bool)
    after = np.asarray(task.unacceptable(moved), dtype=bool)
    near = before != after
    return moved[near], after[near]


def near_false_negative_rate(classifier, states: np.ndarray, flags: np.ndarray) -> float:
    """The fraction of the unacceptable ``states`` the calibrated classifier lets pass."""
    if classifier is None or classifier.threshold is None or not flags.any():
        return float("nan")
    return float(classifier.evaluate(states[flags], flags[flags])["false_negative_rate"])


def score_runs(records: list[sw.RunRecord], k: int) -> list[dict]:
    """One record per run: the gap after the freeze and the near-boundary miss rate."""
    from mbrm.replay import ReplayBuffer
    from mbrm.run import FinishedRun
    from mbrm.rundir import REPLAY

    replays = {r.run_dir: ReplayBuffer.load(r.run_dir / REPLAY).arrays()[2] for r in records}
    cache: dict[Path, np.ndarray] = {}
    out = []
    for r in records:
        pool = np.concatenate([replays[o.run_dir] for o in records if o.seed != r.seed])
        run = FinishedRun(r.run_dir)
        classifier = run.classifier()
        # the same held-out states for both arms of a seed
        states, flags = near_boundary_states(run.task, pool, np.random.default_rng(r.seed))
        t, p = after_freeze(r, k, cache)
        ok = np.isfinite(t) & np.isfinite(p)
        rho = float(spearmanr(t[ok], p[ok]).statistic) if ok.sum() > 2 else float("nan")
        labels = r.summary["labels"]
        out.append(
            {
                "task": r.summary["task"],
                "arm": r.variant.title,
                "seed": r.seed,
                "frozen_after": k,
                "spearman_after_freeze": rho,
                "near_boundary_false_negative_rate": near_false_negative_rate(
                    classifier, states, flags
                ),
                "near_boundary_unacceptable_states": int(flags.sum()),
                # unacceptable states among the labels at the end (the classifier's positives)
                "classifier_positives": float(r.column("classifier_positives")[-1]),
                "classifier_calibrated": classifier.threshold is not None,
                "normalised_score": r.summary["normalised_score"],
                "eval_return": r.summary["eval_return"],
                "eval_unacceptable_steps": r.summary.get("eval_unacceptable_steps"),
                "train_unacceptable_steps": r.summary["train_unacceptable_steps"],
                "preference_labels": labels.get("preference", 0),
                "unacceptable_labels": labels.get("unacceptable", 0),
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
                sw.mean_sd(col("spearman_after_freeze")),
                sw.per_seed(col("spearman_after_freeze")),
                sw.mean_sd(col("near_boundary_false_negative_rate")),
                sw.per_seed(col("near_boundary_false_negative_rate")),
                sw.mean_sd(col("near_boundary_unacceptable_states"), ".0f"),
                sw.per_seed(col("classifier_positives"), ".0f"),
                sw.mean_sd(col("normalised_score")),
                sw.mean_sd(col("train_unacceptable_steps"), ".1f"),
                sw.mean_sd(col("preference_labels"), ".0f")
                + " / "
                + sw.mean_sd(col("unacceptable_labels"), ".0f"),
            ]
        )
    header = [
        "task",
        "arm",
        "Spearman(true, predicted) after the freeze",
        "per seed",
        "classifier false-negative rate near the boundary",
        "per seed",
        "near-boundary unacceptable states",
        "labelled unacceptable states, per seed",
        "normalised score",
        "unacceptable steps, training",
        "labels: preference / unacceptable",
    ]
    return sw.markdown_table(header, body)


def figure(rows: list[dict]):
    """Per arm, seed dots and means: the Spearman after the freeze and the miss rate."""
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in (
        (axes[0], "spearman_after_freeze", "Spearman(true, predicted return) after the freeze"),
        (axes[1], "near_boundary_false_negative_rate", "classifier misses near the boundary"),
    ):
        for i, arm in enumerate(arms):
            v = [np.nan if r[key] is None else r[key] for r in rows if r["arm"] == arm]
            ax.scatter(np.full(len(v), i), v, color=f"C{i}")
            if np.isfinite(v).any():
                ax.bar(i, np.nanmean(v), color=f"C{i}", alpha=0.4)
        ax.set_xticks(range(len(arms)), arms, fontsize=8)
        ax.set_title(title)
    fig.tight_layout()
    return fig


def main() -> None:
    p = sw.parser(__doc__, TASKS)
    args = p.parse_args()
    started = time.monotonic()
    sweep = sw.make_sweep(args, min_seeds=2)  # held-out states come from the other seeds
    rows: list[dict] = []
    vs: list[sw.Variant] = []
    for task in sw.task_list(args):
        k = default_freeze_after(sweep, task)
        task_vs = variants(task, k)
        vs += task_vs
        rows += score_runs(sweep.run(task_vs), k)
    out = sw.output_dir(sweep.root, sweep.smoke)
    command = shlex.join(["python", f"benchmarks/{STEM}.py", *sys.argv[1:]])
    sw.write_records(
        out,
        STEM,
        "The red team (reward_hacking, near_miss) against without, frozen reward model",
        command,
        rows,
        near_scale=NEAR_SCALE,
    )
    sw.publish(
        out,
        STEM,
        title="The red team: reward hacking and near misses (Sec. 5.8)",
        intro=(
            "Experiment 4's frozen reward model with and without the red team's synthesis "
            "objectives, at the same number of hypotheticals a round. The false-negative rate "
            f"is on held-out states within one step of {NEAR_SCALE} x the per-dimension std of "
            "the unacceptable set (other seeds' replays, moved). "
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
