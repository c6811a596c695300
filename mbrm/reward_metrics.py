"""Held-out tests of a learned reward: preference accuracy and rank agreement.

Leike et al. 2018, Sec. 5.9: a reward model is checked against feedback and
ground truth it was not trained on before anyone trusts the agent it trains.
Both functions read only ``predict``, so any reward model with that method can
be tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from scipy.stats import spearmanr

from mbrm.feedback.segments import Preference
from mbrm.preference_pairs import PreferencePair

if TYPE_CHECKING:
    from mbrm.tasks import Task


class RewardPredictor(Protocol):
    """A learned reward: mean and std over members of r(s_t, a_t, s_{t+1}), each [...]."""

    def predict(
        self, states: np.ndarray, actions: np.ndarray, next_states: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class UndefinedMetric(ValueError):
    """The data leave a metric undefined (all ties, a constant reward): not a bad input."""


def preference_accuracy(model: RewardPredictor, pairs: Sequence[PreferencePair]) -> float:
    """Fraction of strict (left/right) preferences whose order the ensemble-mean return agrees with.

    The return is the sum of the ``predict`` means over the segment, the
    quantity a planner maximises. Ties and "cannot tell" are not counted; an
    exact predicted tie counts as wrong.
    """
    correct, total = 0, 0
    for left, right, pref in pairs:
        pref = Preference(pref)
        if pref not in (Preference.LEFT, Preference.RIGHT):
            continue
        r_left = model.predict(left.states[:-1], left.actions, left.states[1:])[0].sum()
        r_right = model.predict(right.states[:-1], right.actions, right.states[1:])[0].sum()
        says_left = bool(r_left > r_right)
        says_right = bool(r_right > r_left)
        correct += says_left if pref is Preference.LEFT else says_right
        total += 1
    if total == 0:
        raise UndefinedMetric(
            "preference_accuracy needs at least one strict (left/right) preference"
        )
    return correct / total


def reward_spearman(
    model: RewardPredictor,
    task: Task,
    states: np.ndarray,
    actions: np.ndarray,
    next_states: np.ndarray,
) -> float:
    """Spearman rank correlation of the learned mean reward with ``task.true_reward(s, a, s')``.

    states [N, S], actions [N, A], next_states [N, S]: held-out transitions. Leike
    et al. 2018, Sec. 5.9: testing the reward model against held-out ground truth.
    """
    states, actions, next_states = (
        np.asarray(x, dtype=np.float64) for x in (states, actions, next_states)
    )
    if (
        states.ndim != 2
        or states.shape != next_states.shape
        or actions.shape[:1] != states.shape[:1]
    ):
        raise ValueError(
            f"reward_spearman expects states [N, S], actions [N, A], next_states [N, S]; "
            f"got {states.shape}, {actions.shape}, {next_states.shape}"
        )
    if states.shape[0] < 3:
        raise ValueError(f"reward_spearman needs at least 3 transitions, got {states.shape[0]}")
    true = task.true_reward(states, actions, next_states)
    if np.ptp(true) == 0:
        raise UndefinedMetric(
            "the true reward is constant on these transitions; Spearman is undefined"
        )
    pred = model.predict(states, actions, next_states)[0].cpu().numpy()
    if np.ptp(pred) == 0:
        raise UndefinedMetric(
            "the learned reward is constant on these transitions; Spearman is undefined"
        )
    return float(spearmanr(pred, true).statistic)
