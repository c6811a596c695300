"""Evaluation: held-out figures of the learned models, and the final comparison.

Nothing here reaches the agent: the hidden ``true_reward`` and ``unacceptable`` are
read to measure it (Leike et al. 2018, Sec. 5.1: the reward model is tested on
held-out data; Sec. 3.1: the true reward is hidden from the agent). The final
evaluation compares the learned agent with a random policy and with the reference
agent, which plans in the same world model with the hidden reward and rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mbrm.feedback.teachers import PreferenceTeacher
from mbrm.replay import ReplayBuffer
from mbrm.reward_model import preference_accuracy, reward_spearman
from mbrm.tasks import Task

Transitions = tuple[np.ndarray, np.ndarray, np.ndarray]  # s [N, S], a [N, A], s' [N, S]


def model_metrics(
    task: Task,
    replay: ReplayBuffer,
    data: Transitions,
    *,
    reward_model: Any | None,
    classifier: Any | None,
    segment_length: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Held-out preference accuracy and Spearman of the reward model on the agent's own
    data, and the classifier's recall on every visited state.

    ``rng`` is this function's own generator, so switching metrics on or off does not
    change the run.
    """
    out: dict[str, Any] = {}
    s, a, s2 = data
    if reward_model is not None and reward_model.fitted and len(replay) > 50:
        segs = replay.sample_segments(200, segment_length, rng)
        oracle = PreferenceTeacher(task, seed=int(rng.integers(1 << 31)))
        pairs = [(x, y, oracle.answer(x, y)) for x, y in zip(segs[::2], segs[1::2], strict=False)]
        out["reward_accuracy"] = preference_accuracy(reward_model, pairs)
        pick = rng.choice(len(s), min(len(s), 2000), replace=False)
        out["reward_spearman"] = reward_spearman(reward_model, task, s[pick], a[pick], s2[pick])
    if classifier is not None and classifier.threshold is not None:
        flags = task.unacceptable(s)
        if flags.any():
            ev = classifier.evaluate(s, flags)
            out["classifier_recall"] = ev["recall"]
            out["classifier_fnr"] = ev["false_negative_rate"]
    return out


def evaluation_seeds(seed: int, episodes: int) -> list[int]:
    """Environment seeds of the final evaluation (disjoint from the training episodes')."""
    return [10_000_000 + seed * 1000 + i for i in range(episodes)]


def compare(
    episode: Callable[[str, int], dict[str, Any]], seeds: list[int], progress: bool
) -> dict[str, list[dict[str, Any]]]:
    """Run ``episode(policy, seed)`` for the learned agent, a random policy and the
    reference agent (hidden reward and rule), on the same environment seeds."""
    out: dict[str, list[dict[str, Any]]] = {}
    for policy, desc in (("learned", "evaluate"), ("random", None), ("reference", "oracle")):
        it = seeds if desc is None else tqdm(seeds, desc=desc, disable=not progress)
        out[policy] = [episode(policy, k) for k in it]
    return out


def summarise(
    rows: dict[str, list[dict[str, Any]]], training: list[dict[str, Any]]
) -> dict[str, Any]:
    """The summary figures of a run from its evaluation episodes and training metrics."""

    def mean(policy: str, k: str) -> float:
        return float(np.mean([r[k] for r in rows[policy]]))

    def total(policy: str) -> int:
        return int(sum(r["unacceptable_steps"] for r in rows[policy]))

    R, R_rand, R_ref = (mean(p, "true_return") for p in ("learned", "random", "reference"))
    return {
        "eval_return": R,
        "random_return": R_rand,
        "oracle_return": R_ref,
        "normalised_score": (R - R_rand) / (R_ref - R_rand) if R_ref != R_rand else float("nan"),
        "eval_unacceptable_steps": total("learned"),
        "oracle_unacceptable_steps": total("reference"),
        "random_unacceptable_steps": total("random"),
        "train_unacceptable_steps": int(sum(m["unacceptable_steps"] for m in training)),
        "plan_seconds_per_step": mean("learned", "plan_seconds"),
    }
