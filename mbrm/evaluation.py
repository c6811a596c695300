"""Evaluation: held-out figures of the learned models, and the final comparison.

Nothing here reaches the agent: the hidden ``true_reward`` and ``unacceptable`` are
read to measure it (Leike et al. 2018, Sec. 5.1: the reward model is tested on
held-out data; Sec. 3.1: the true reward is hidden from the agent). The final
evaluation compares the learned agent with a random policy and with the reference
agent, which plans in the same world model with the hidden reward and rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mbrm.agent import Agent
from mbrm.episodes import Capture, RandomExplorer, run_episode
from mbrm.feedback.teachers import PreferenceTeacher
from mbrm.parts import RunParts
from mbrm.replay import ReplayBuffer
from mbrm.reward_metrics import UndefinedMetric, preference_accuracy, reward_spearman
from mbrm.tasks import Task
from mbrm.video import plan_interval

Transitions = tuple[np.ndarray, np.ndarray, np.ndarray]  # s [N, S], a [N, A], s' [N, S]

# The normalised score is defined only when the reference agent beats the random policy
# by more than this fraction of |random return|, and by more than SCORE_MARGIN_ABSOLUTE
# (returns near 0 make any fraction of them vanish). Below that the score's denominator
# is noise: a reference 0.2 below random turned -17.0 vs -11.7 into a "score" of 31.6.
SCORE_MARGIN_FRACTION = 0.05
SCORE_MARGIN_ABSOLUTE = 0.1


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
        pick = rng.choice(len(s), min(len(s), 2000), replace=False)
        # A reward that is mostly constant (the upright pendulum's) can make every sampled
        # pair a tie or every sampled step equal: the metric is then NaN, the run goes on.
        out["reward_accuracy"] = _defined(lambda: preference_accuracy(reward_model, pairs))
        out["reward_spearman"] = _defined(
            lambda: reward_spearman(reward_model, task, s[pick], a[pick], s2[pick])
        )
    if classifier is not None and classifier.threshold is not None:
        flags = task.unacceptable(s)
        if flags.any():
            ev = classifier.evaluate(s, flags)
            out["classifier_recall"] = ev["recall"]
            out["classifier_fnr"] = ev["false_negative_rate"]
    return out


def _defined(metric: Callable[[], float]) -> float:
    """The metric's value, or NaN where the data leave it undefined."""
    try:
        return metric()
    except UndefinedMetric:
        return float("nan")


def evaluation_seeds(seed: int, episodes: int) -> list[int]:
    """Environment seeds of the final evaluation (disjoint from the training episodes')."""
    return [10_000_000 + seed * 1000 + i for i in range(episodes)]


# The policies of the final comparison, in the order their rows are reported. An episode's
# generators are derived from its policy's index here, so the order is part of the seeding.
POLICIES = ("learned", "random", "reference")


def episode_generators(
    seed: int, policy: str, episode_seed: int
) -> tuple[torch.Generator, np.random.Generator]:
    """An evaluation episode's own generators (torch: planning and particles; numpy: the
    random policy), derived from the run's ``seed``, the ``policy`` and the environment's
    ``episode_seed`` alone: an episode's result does not depend on which episodes ran
    before it, or in which process."""
    if policy not in POLICIES:
        raise ValueError(f"unknown evaluation policy {policy!r}; expected one of {POLICIES}")
    key = [seed, POLICIES.index(policy), episode_seed]
    torch_seq, numpy_seq = np.random.SeedSequence(key).spawn(2)
    generator = torch.Generator().manual_seed(int(torch_seq.generate_state(1, np.uint64)[0]))
    return generator, np.random.default_rng(numpy_seq)


@dataclass(frozen=True)
class FinalEpisodes:
    """The episodes of the final comparison: ``self(policy, seed)`` runs one, on generators
    of its own (:func:`episode_generators`), so episodes may run in any order and process.

    parts:             the run's parts, models as trained
    classifier_ready:  the learned constraint entry is in the agent's set
    filmed:            seeds whose learned-agent episode is captured for videos
    """

    parts: RunParts
    classifier_ready: bool
    filmed: frozenset[int] = frozenset()

    def __call__(
        self, policy: str, seed: int, on_step: Callable[[], None] | None = None
    ) -> tuple[dict[str, Any], Capture | None]:
        """The episode's figures (:func:`mbrm.episodes.run_episode`) and, for a filmed
        learned-agent episode, its capture; ``on_step`` is called after every step."""
        parts = self.parts
        generator, rng = episode_generators(parts.seed, policy, seed)
        actor: Agent | RandomExplorer
        if policy == "random":
            actor = RandomExplorer(parts.task, parts.constraint_set(self.classifier_ready), rng)
        else:  # learned or reference (episode_generators refuses any other name)
            reference = policy == "reference"
            cset = (
                parts.reference_constraint_set()
                if reference
                else parts.constraint_set(self.classifier_ready)
            )
            actor = parts.agent(cset, generator, reference=reference)
        filmed = policy == "learned" and seed in self.filmed
        capture = Capture(plan_interval(parts.episode_length)) if filmed else None
        out = run_episode(
            parts.task,
            actor,
            seed=seed,
            length=parts.episode_length,
            generator=generator,
            reward_model=None if policy == "reference" else parts.reward_model,
            capture=capture,
            on_step=on_step,
        )
        return out, capture


def normalised_score(R: float, R_rand: float, R_ref: float) -> tuple[float, str | None]:
    """``(R - R_random) / (R_reference - R_random)``, or NaN and the reason it is undefined.

    Defined only when the reference agent beats the random policy by the margin above:
    otherwise the reference is no yardstick (it failed, or the episodes are too short for
    planning to beat chance) and a ratio over a tiny or negative gap means nothing.
    """
    margin = max(SCORE_MARGIN_FRACTION * abs(R_rand), SCORE_MARGIN_ABSOLUTE)
    gap = R_ref - R_rand
    if not gap > margin:  # NaN returns land here too
        note = (
            f"undefined: the reference agent ({R_ref:.2f}) does not beat the random policy "
            f"({R_rand:.2f}) by more than {margin:.2f} (the larger of {SCORE_MARGIN_FRACTION:.0%} "
            f"of the random return's size and {SCORE_MARGIN_ABSOLUTE:g})"
        )
        return float("nan"), note
    return (R - R_rand) / gap, None


def summarise(
    rows: dict[str, list[dict[str, Any]]], training: list[dict[str, Any]]
) -> dict[str, Any]:
    """The summary figures of a run from its evaluation episodes and training metrics.

    ``normalised_score`` is NaN when undefined (see :func:`normalised_score`), with a
    ``normalised_score_note`` saying why; the note is absent when the score is a number.
    """

    def mean(policy: str, k: str) -> float:
        return float(np.mean([r[k] for r in rows[policy]]))

    def total(policy: str) -> int:
        return int(sum(r["unacceptable_steps"] for r in rows[policy]))

    R, R_rand, R_ref = (mean(p, "true_return") for p in ("learned", "random", "reference"))
    score, note = normalised_score(R, R_rand, R_ref)
    return {
        "eval_return": R,
        "random_return": R_rand,
        "oracle_return": R_ref,
        "normalised_score": score,
        **({"normalised_score_note": note} if note is not None else {}),
        "eval_unacceptable_steps": total("learned"),
        "oracle_unacceptable_steps": total("reference"),
        "random_unacceptable_steps": total("random"),
        "train_unacceptable_steps": int(sum(m["unacceptable_steps"] for m in training)),
        "train_resets": int(sum(m.get("resets", 0) for m in training)),
        "plan_seconds_per_step": mean("learned", "plan_seconds"),
    }
