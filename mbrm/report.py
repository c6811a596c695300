"""``report.md`` for a run directory, with plots people would rather look at than read.

Plots (Leike et al. 2018, Sec. 6 and Fig. 4-5):

* true vs predicted return over training -- a widening gap is reward hacking;
* learned vs true reward on held-out states -- reward alignment;
* labels used by segment source; unacceptable outcomes and blocked plans over time;
* the side-constraint classifier's confusion matrix and recall on the agent's states.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no metrics.csv: is it a training run directory?")
    with open(path) as f:
        return list(csv.DictReader(f))


def _col(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])


def _alignment(run_dir: Path, ax_scatter, ax_confusion) -> dict[str, float]:
    """Load the run's models and compare them with the hidden truth on its own states."""
    import torch
    from scipy.stats import spearmanr

    from mbrm.run import FinishedRun

    run = FinishedRun(run_dir)
    task, reward_model, classifier = run.task, run.reward_model(), run.classifier()
    s, a, s2 = run.replay().arrays()
    rng = np.random.default_rng(0)
    pick = rng.choice(len(s), min(len(s), 3000), replace=False)
    out: dict[str, float] = {}
    true_r = task.true_reward(s[pick], a[pick], s2[pick])
    if reward_model is not None and reward_model.fitted:
        pred, _ = reward_model.predict(
            torch.as_tensor(s[pick], dtype=torch.float32),
            torch.as_tensor(a[pick], dtype=torch.float32),
            torch.as_tensor(s2[pick], dtype=torch.float32),
        )
        pred = pred.numpy()
        rho = float(spearmanr(pred, true_r).statistic)
        ax_scatter.scatter(true_r, pred, s=4, alpha=0.4)
        ax_scatter.set_title(f"learned vs true reward (Spearman {rho:.3f})")
        out["spearman"] = rho
    ax_scatter.set_xlabel("true reward (hidden)")
    ax_scatter.set_ylabel("learned reward (standardised)")
    if classifier is not None and classifier.threshold is not None:
        flags = task.unacceptable(s)
        ev = classifier.evaluate(s, flags)
        cm = np.array([[ev["tn"], ev["fp"]], [ev["fn"], ev["tp"]]])
        ax_confusion.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax_confusion.text(j, i, str(int(v)), ha="center", va="center")
        ax_confusion.set_xticks([0, 1], ["acceptable", "unacceptable"])
        ax_confusion.set_yticks([0, 1], ["acceptable", "unacceptable"])
        ax_confusion.set_xlabel("classifier says")
        ax_confusion.set_ylabel("truth (hidden)")
        ax_confusion.set_title(f"classifier on visited states (recall {ev['recall']:.2f})")
        out.update(recall=float(ev["recall"]), threshold=float(ev["threshold"]))
    else:
        ax_confusion.set_axis_off()
    return out


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and ``report.png`` in ``run_dir``; returns the report's path."""
    run_dir = Path(run_dir)
    rows = _read_metrics(run_dir)
    summary = (
        json.loads((run_dir / "summary.json").read_text())
        if (run_dir / "summary.json").exists()
        else {}
    )
    it = _col(rows, "iteration")
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    ax = axes[0, 0]
    ax.plot(it, _col(rows, "true_return"), "o-", label="true return (hidden)")
    if any(r.get("predicted_return") for r in rows):
        ax2 = ax.twinx()
        ax2.plot(
            it, _col(rows, "predicted_return"), "s--", color="tab:orange", label="predicted return"
        )
        ax2.set_ylabel("predicted return (standardised units)")
        ax2.legend(loc="lower right")
    ax.set_title("true vs predicted return (a gap means reward hacking)")
    ax.set_xlabel("iteration (episode)")
    ax.legend(loc="upper left")
    ax = axes[0, 1]
    ax.bar(it, _col(rows, "unacceptable_steps"), color="tab:red", label="unacceptable steps")
    ax.plot(it, _col(rows, "no_safe_plan"), "k^-", label="no_safe_plan events")
    ax.set_title("unacceptable outcomes and no-safe-plan events")
    ax.set_xlabel("iteration (episode)")
    ax.legend()
    ax = axes[0, 2]
    sources = sorted(
        {k[len("labels_") :] for r in rows for k in r if k.startswith("labels_") and r[k]}
    )
    bottom = np.zeros(len(rows))
    for src in sources:
        v = np.nan_to_num(_col(rows, f"labels_{src}"))
        ax.bar(it, v, bottom=bottom, label=src)
        bottom += v
    ax.set_title("labels used, by segment source (cumulative)")
    ax.set_xlabel("iteration (episode)")
    ax.legend()
    ax = axes[1, 0]
    for key in ("reward_accuracy", "reward_spearman", "classifier_recall"):
        if any(r.get(key) for r in rows):
            ax.plot(it, _col(rows, key), "o-", label=key)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("held-out model quality")
    ax.set_xlabel("iteration (episode)")
    ax.legend()
    try:
        align = _alignment(run_dir, axes[1, 1], axes[1, 2])
    except (FileNotFoundError, ValueError) as e:
        axes[1, 1].text(0.5, 0.5, f"models unavailable:\n{e}", ha="center", va="center", wrap=True)
        axes[1, 2].set_axis_off()
        align = {}
    fig.tight_layout()
    fig.savefig(run_dir / "report.png", dpi=90)
    plt.close(fig)

    lines = [f"# mbrm run report: {summary.get('task', '?')} seed {summary.get('seed', '?')}", ""]
    if summary:
        lines += [
            "| figure | value |",
            "|---|---|",
            f"| environment steps | {summary['env_steps']} |",
            f"| true return, evaluation (mean of episodes) | {summary['eval_return']:.2f} |",
            f"| random policy / oracle (same world model) | {summary['random_return']:.2f} / {summary['oracle_return']:.2f} |",
            f"| normalised score | {summary['normalised_score']:.3f} |",
            f"| unacceptable steps: evaluation / training / random policy | {summary['eval_unacceptable_steps']} / {summary['train_unacceptable_steps']} / {summary['random_unacceptable_steps']} |",
            f"| labels by kind | {json.dumps(summary['labels'])} |",
            f"| labels by source | {json.dumps(summary['labels_by_source'])} |",
            f"| planning seconds per step | {summary['plan_seconds_per_step']:.3f} |",
        ]
    if align:
        lines += [
            f"| reward Spearman on visited states | {align.get('spearman', float('nan')):.3f} |"
        ]
        if "recall" in align:
            lines += [
                f"| classifier recall on visited states (threshold {align['threshold']:.3f}) | {align['recall']:.3f} |"
            ]
    lines += [
        "",
        "![report](report.png)",
        "",
        "Per-episode figures: `metrics.csv`. Labels: `feedback.sqlite`.",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
