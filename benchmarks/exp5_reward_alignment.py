"""Experiment 5: reward alignment -- learned against true reward on held-out states.

For every task of experiment 1 (whose runs are reused, or started when missing) the
final reward ensemble of seed k is evaluated on transitions it never trained on: the
replay buffer of seed (k+1) mod n's run of the same task, visited by another agent.
Measured: Spearman and Pearson correlation between the ensemble's mean prediction
(standardised units) and the hidden true reward ``task.true_reward(s, a, s')``, with
the same figures on the model's own replay (its training distribution) beside them;
one scatter per task.

Anchor: Leike et al. 2018, Sec. 6 (held-out evaluation of the reward model to
establish trust) and the reward-model fit analysis of Ibarz, Leike et al. 2018.

Budget: the runs are experiment 1's (~40 min on a 2-core CPU when none exist); the
evaluation itself loads 3 x n checkpoints and scores up to 3,000 transitions each
(under a minute).

    python benchmarks/exp5_reward_alignment.py [--tasks ...] [--seeds 0,1,2] [--smoke]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import exp1_preferences
import matplotlib.pyplot as plt
import numpy as np
import sweep as sw
import torch
from scipy.stats import pearsonr, spearmanr

from mbrm.replay import ReplayBuffer
from mbrm.rundir import REPLAY

STEM = "exp5_reward_alignment"
MAX_TRANSITIONS = 3000


@dataclass(frozen=True)
class Alignment:
    task: str
    model_seed: int
    data_seed: int
    true: np.ndarray  # [N] hidden reward of the held-out transitions
    predicted: np.ndarray  # [N] ensemble mean, standardised
    own_spearman: float  # on the model's own replay

    @property
    def spearman(self) -> float:
        return float(spearmanr(self.predicted, self.true).statistic)

    @property
    def pearson(self) -> float:
        return float(pearsonr(self.predicted, self.true).statistic)


@dataclass(frozen=True)
class FittedRun:
    """A finished run's task, final reward ensemble and replay (cut to its checkpoint)."""

    task: Any
    reward_model: Any
    replay: ReplayBuffer


def load_run(run_dir: Path) -> FittedRun:
    """The run's final reward ensemble, read as ``mbrm report`` reads it."""
    from mbrm.run import FinishedRun

    run = FinishedRun(run_dir)
    reward_model = run.reward_model()
    if reward_model is None or not reward_model.fitted:
        raise RuntimeError(f"{run_dir}: the run has no fitted reward ensemble to evaluate")
    return FittedRun(run.task, reward_model, run.replay())


def score(run: FittedRun, s: np.ndarray, a: np.ndarray, s2: np.ndarray, rng: np.random.Generator):
    """(true, predicted) rewards of up to MAX_TRANSITIONS transitions drawn from (s, a, s2)."""
    pick = rng.choice(len(s), min(len(s), MAX_TRANSITIONS), replace=False)
    s, a, s2 = s[pick], a[pick], s2[pick]
    return run.task.true_reward(s, a, s2), predicted_rewards(run, s, a, s2)


def predicted_rewards(run: FittedRun, s: np.ndarray, a: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """The run's reward ensemble mean (standardised units) on transitions (s, a, s2)."""
    mean, _ = run.reward_model.predict(
        torch.as_tensor(s, dtype=torch.float32),
        torch.as_tensor(a, dtype=torch.float32),
        torch.as_tensor(s2, dtype=torch.float32),
        dtype="float32",
    )
    return mean.numpy()


def align(records: list[sw.RunRecord]) -> list[Alignment]:
    out = []
    for recs in sw.by_variant(records).values():
        for i, rec in enumerate(recs):
            other = recs[(i + 1) % len(recs)]
            run = load_run(rec.run_dir)
            rng = np.random.default_rng([rec.seed, other.seed])
            own_true, own_pred = score(run, *run.replay.arrays(), rng)
            held = ReplayBuffer.load(other.run_dir / REPLAY).arrays()
            true, pred = score(run, *held, rng)
            out.append(
                Alignment(
                    task=rec.summary["task"],
                    model_seed=rec.seed,
                    data_seed=other.seed,
                    true=true,
                    predicted=pred,
                    own_spearman=float(spearmanr(own_pred, own_true).statistic),
                )
            )
    return out


def table(results: list[Alignment]) -> str:
    rows = []
    for task in dict.fromkeys(r.task for r in results):
        rs = [r for r in results if r.task == task]
        rows.append(
            [
                task,
                ", ".join(f"{r.model_seed} on {r.data_seed}" for r in rs),
                sw.mean_sd([r.spearman for r in rs]),
                sw.per_seed([r.spearman for r in rs]),
                sw.mean_sd([r.pearson for r in rs]),
                sw.mean_sd([r.own_spearman for r in rs]),
                sw.mean_sd([len(r.true) for r in rs], ".0f"),
            ]
        )
    header = [
        "task",
        "model seed on data seed",
        "Spearman, held-out transitions",
        "per seed",
        "Pearson, held-out",
        "Spearman, own replay",
        "transitions per model",
    ]
    return sw.markdown_table(header, rows)


def figure(results: list[Alignment]):
    tasks = list(dict.fromkeys(r.task for r in results))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rs = [r for r in results if r.task == task]
        for i, r in enumerate(rs):
            ax.scatter(
                r.true,
                r.predicted,
                s=3,
                alpha=0.3,
                color=f"C{i}",
                label=f"model {r.model_seed} on seed {r.data_seed}: ρ={r.spearman:.2f}",
            )
        ax.set_title(f"{task}: Spearman {np.mean([r.spearman for r in rs]):.3f} (mean)")
        ax.set_xlabel("true reward (hidden)")
        ax.set_ylabel("learned reward (standardised)")
        ax.legend(fontsize=8, markerscale=4)
    fig.tight_layout()
    return fig


def main() -> None:
    args = sw.parser(__doc__, exp1_preferences.TASKS).parse_args()
    started = time.monotonic()
    sweep = sw.make_sweep(args, min_seeds=2)
    tasks = sw.task_list(args)
    vs = exp1_preferences.variants(tasks)
    records = sweep.run(vs)
    results = align(records)
    sw.publish(
        sw.output_dir(sweep.root, sweep.smoke),
        STEM,
        title="Experiment 5: reward alignment on held-out states",
        intro=(
            "Learned (ensemble mean, standardised) against hidden true reward of the final "
            "reward model of each of experiment 1's runs, on the replay buffer of the next "
            "seed's run of the same task -- transitions it never trained on -- and on its own "
            f"replay. Seeds {list(sweep.seeds)}. Anchor: Leike et al. 2018, Sec. 6."
        ),
        budget=sw.budget_text(sweep, tasks) + "; the runs of experiment 1",
        table=table(results),
        commands=[f"python benchmarks/{STEM}.py", *(sweep.command_text(v) for v in vs)],
        figure=figure(results),
        started=started,
    )


if __name__ == "__main__":
    main()
