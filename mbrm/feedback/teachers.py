"""Synthetic teachers: answer feedback queries from a task's hidden objective.

A teacher judges a segment by its *states*, real or imagined alike: the true
reward and the unacceptable flag are evaluated on whatever states the segment
holds, exactly as a person looking at its rendering would (Leike et al. 2018,
Sec. 5.2). :class:`PreferenceTeacher` follows the simulated teachers of B-Pref
(Lee et al. 2021, Sec. 3, "Teachers"): rationality, myopia, mistakes, skipping
and equal answers, each a separate knob; with the defaults it is the perfectly
rational "oracle". :class:`UnacceptableTeacher` labels unacceptable states with
configurable false-negative and false-positive rates.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from mbrm.feedback.segments import Preference, Segment

if TYPE_CHECKING:
    from mbrm.tasks import Task


def _check_states(task: Task, segment: Segment) -> None:
    if segment.states.shape[1] != task.state_dim or segment.actions.shape[1] != task.action_dim:
        raise ValueError(
            f"{task.name}: segment has states [.., {segment.states.shape[1]}] and actions "
            f"[.., {segment.actions.shape[1]}]; the task has "
            f"S={task.state_dim}, A={task.action_dim}"
        )
    if not (np.isfinite(segment.states).all() and np.isfinite(segment.actions).all()):
        raise ValueError(
            f"{task.name}: segment ({segment.source.value}) has non-finite states or actions; "
            "a teacher cannot judge it"
        )


def _probability(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    return value


class _Seeded:
    """The random generator of a teacher, whose state a checkpoint carries."""

    _rng: np.random.Generator

    def rng_state(self) -> dict[str, Any]:
        """The generator state (checkpointed so a resumed run continues the same noise)."""
        return self._rng.bit_generator.state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state


class PreferenceTeacher(_Seeded):
    """B-Pref simulated teacher for pairwise segment preferences (Lee et al. 2021, Sec. 3).

    Per-step true rewards ``r_t = task.true_reward(s_t, a_t, s_{t+1})`` are taken
    on the segment's own states. For a query (left, right) of lengths T_l, T_r:

    1. **skip** (``skip_threshold``, 0 disables as in B-Pref): if both segments'
       *mean per-step* true reward ``sum_t r_t / T`` is below ``skip_threshold``,
       answer ``Preference.CANNOT_TELL`` (neither segment shows the task being
       done). B-Pref states the threshold on segment returns as a fraction of the
       agent's average return; here it is in reward units per step so it does not
       depend on segment length. Any non-zero value, negative included, is a level.
    2. **choice** on *discounted* returns ``R = sum_t gamma^(T-1-t) r_t`` (myopia:
       the last step has weight 1, earlier steps are discounted, as in B-Pref):
       ``beta < 0``: perfectly rational, the larger R wins (exactly equal R gives
       EQUAL); ``beta >= 0``: Boltzmann, ``P(left) = sigmoid(beta (R_l - R_r))``
       (``beta = 0`` is a coin flip).
    3. **mistake**: with probability ``eps_mistake`` the answer is flipped
       (left <-> right).
    4. **equal** (``equal_threshold``): if the mean per-step undiscounted return
       gap ``|sum r_l / T_l - sum r_r / T_r|`` is below ``equal_threshold``, answer
       EQUAL. As in B-Pref this is applied after the mistake, so equal answers are
       never flipped.

    Every call draws exactly two uniforms from the teacher's own generator, so a
    seed gives the same answers whatever branches earlier queries took.
    """

    def __init__(
        self,
        task: Task,
        *,
        beta: float = -1.0,
        gamma: float = 1.0,
        eps_mistake: float = 0.0,
        skip_threshold: float = 0.0,
        equal_threshold: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not np.isfinite(beta):
            raise ValueError(f"beta must be finite, got {beta}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if not np.isfinite(skip_threshold):
            raise ValueError(f"skip_threshold must be finite, got {skip_threshold}")
        if not (np.isfinite(equal_threshold) and equal_threshold >= 0):
            raise ValueError(f"equal_threshold must be finite and >= 0, got {equal_threshold}")
        self.task = task
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.eps_mistake = _probability("eps_mistake", eps_mistake)
        self.skip_threshold = float(skip_threshold)
        self.equal_threshold = float(equal_threshold)
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    def rewards(self, segment: Segment) -> np.ndarray:
        """Hidden per-step true rewards [T] of the segment's own (possibly imagined) states."""
        _check_states(self.task, segment)
        s = segment.states
        return self.task.true_reward(s[:-1], segment.actions, s[1:])

    def _discounted(self, r: np.ndarray) -> float:
        weights = self.gamma ** np.arange(len(r) - 1, -1, -1, dtype=np.float64)  # [T]
        return float(weights @ r)

    def answer(self, left: Segment, right: Segment) -> Preference:
        """The teacher's answer to "which segment is better, left or right?"."""
        u_choice, u_mistake = self._rng.random(2)
        r_left, r_right = self.rewards(left), self.rewards(right)
        mean_left, mean_right = r_left.mean(), r_right.mean()

        if self.skip_threshold != 0 and max(mean_left, mean_right) < self.skip_threshold:
            return Preference.CANNOT_TELL

        gap = self._discounted(r_left) - self._discounted(r_right)
        if self.beta < 0:
            if gap == 0:
                return Preference.EQUAL
            choice = Preference.LEFT if gap > 0 else Preference.RIGHT
        else:
            # sigmoid(beta * gap) computed without overflow for any gap.
            z = self.beta * gap
            p_left = 1.0 / (1.0 + np.exp(-z)) if z >= 0 else np.exp(z) / (1.0 + np.exp(z))
            choice = Preference.LEFT if u_choice < p_left else Preference.RIGHT

        if u_mistake < self.eps_mistake:
            choice = Preference.RIGHT if choice is Preference.LEFT else Preference.LEFT

        if abs(mean_left - mean_right) < self.equal_threshold:
            return Preference.EQUAL
        return choice

    def answer_many(self, pairs: Iterable[tuple[Segment, Segment]]) -> list[Preference]:
        """Answers to several queries, in order (same as calling :meth:`answer` on each)."""
        return [self.answer(left, right) for left, right in pairs]

    def describe(self) -> dict[str, Any]:
        """Who answered: stored with every label this teacher gives."""
        return {
            "kind": "synthetic_preference",
            "task": self.task.name,
            "beta": self.beta,
            "gamma": self.gamma,
            "eps_mistake": self.eps_mistake,
            "skip_threshold": self.skip_threshold,
            "equal_threshold": self.equal_threshold,
            "seed": self.seed,
        }


class UnacceptableTeacher(_Seeded):
    """Labels unacceptable states with the task's hidden ``unacceptable`` flag.

    Each state's true flag is corrupted independently: a truly unacceptable state
    is missed with probability ``false_negative_rate``, an acceptable one is
    flagged with probability ``false_positive_rate`` (Saunders et al. 2018 use a
    human labeller; these rates model their slips).
    """

    def __init__(
        self,
        task: Task,
        *,
        false_negative_rate: float = 0.0,
        false_positive_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.task = task
        self.false_negative_rate = _probability("false_negative_rate", false_negative_rate)
        self.false_positive_rate = _probability("false_positive_rate", false_positive_rate)
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    def label(self, segment: Segment) -> np.ndarray:
        """Per-state flags bool [T+1]: True where the teacher calls the state unacceptable."""
        _check_states(self.task, segment)
        truth = self.task.unacceptable(segment.states)  # [T+1]
        u = self._rng.random(truth.shape)  # one draw per state, whatever its truth
        missed = truth & (u < self.false_negative_rate)
        false_alarm = ~truth & (u < self.false_positive_rate)
        return (truth & ~missed) | false_alarm

    def first_unacceptable(self, segment: Segment) -> int | None:
        """Index of the first state the teacher flags, or None; draws fresh label noise."""
        flags = self.label(segment)
        hits = np.flatnonzero(flags)
        return int(hits[0]) if hits.size else None

    def describe(self) -> dict[str, Any]:
        """Who labelled: stored with every label this teacher gives."""
        return {
            "kind": "synthetic_unacceptable",
            "task": self.task.name,
            "false_negative_rate": self.false_negative_rate,
            "false_positive_rate": self.false_positive_rate,
            "seed": self.seed,
        }
