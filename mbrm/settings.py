"""The schedule and budgets of a training run (the ``experiment`` config group).

Also the typed schema of that group: every field here is a key of
``configs/experiment/*.yaml`` and its value range is checked on construction, each
refusal naming the key (``experiment.iterations must be an integer >= 0, got -1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mbrm.solicit import SolicitSettings

PROPAGATIONS = ("ts1", "tsinf", "expectation")
DTYPES = ("float32", "bfloat16")
CONSTRAINT_MODES = ("reject", "penalty")
# plan review (mbrm.plan_review): the moments a reviewer sees the plans, what a rejection does
TRIGGERS = ("no_safe_plan", "uncertain", "episode_start", "every")
ON_REJECT = ("replan", "fallback")


def _integer(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"experiment.{key} must be an integer >= {low}, got {value!r}")


def _number(key: str, value: Any, low: float, high: float, *, open_low: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        bounds = (
            f"{'(' if open_low else '['}{low:g}, {high:g}]"
            if math.isfinite(high)
            else (f"{'>' if open_low else '>='} {low:g}")
        )
        where = f"in {bounds}" if math.isfinite(high) else bounds
        raise ValueError(f"experiment.{key} must be a number {where}, got {value!r}")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"experiment.{key} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass
class PlanReviewSettings:
    """When the agent's plans go to a reviewer, and what follows a rejection.

    when:              moments of review, some of TRIGGERS (empty: never)
    every:             steps between reviews for ``every``
    reward_std_above:  ``uncertain``: the chosen plan's mean per-step reward std
                       (standardised units) above this ...
    risk_above:        ... or its pessimistic risk (max p_unacceptable) above this
    plans:             top plans shown at a review
    near:              an entry is shown as "come close to" when its per-step
                       probability reaches this somewhere on the plan
    on_reject:         replan (refit the classifier on the marks, plan again) | fallback
                       (the agent's no-safe-plan rule: its safe action, else the least
                       risky of the rejected plans)
    max_per_episode:   reviews per episode at most
    mistake:           the synthetic reviewer's chance of a wrong verdict on a plan
    """

    when: list[str] = field(default_factory=list)
    every: int = 25
    reward_std_above: float = 1.0
    risk_above: float = 0.25
    plans: int = 3
    near: float = 0.25
    on_reject: str = "replan"
    max_per_episode: int = 5
    mistake: float = 0.0

    def __post_init__(self) -> None:
        unknown = [w for w in self.when if w not in TRIGGERS]
        if unknown:
            raise ValueError(
                f"experiment.plan_review.when has unknown moments {unknown}; expected some of "
                f"{', '.join(TRIGGERS)}"
            )
        for name in ("every", "plans", "max_per_episode"):
            _integer(f"plan_review.{name}", getattr(self, name), 1)
        _number("plan_review.reward_std_above", self.reward_std_above, 0.0, math.inf)
        for name in ("risk_above", "near", "mistake"):
            _number(f"plan_review.{name}", getattr(self, name), 0.0, 1.0)
        _choice("plan_review.on_reject", self.on_reject, ON_REJECT)
        self.when = list(self.when)

    @property
    def enabled(self) -> bool:
        return bool(self.when)


@dataclass
class LoopSettings:
    """Schedule and budgets of a run (see ``configs/experiment``)."""

    iterations: int = 12  # acting episodes after exploration
    explore_episodes: int = 4  # random-action episodes first
    eval_episodes: int = 5  # evaluation episodes at the end
    video_episodes: int = 1  # of those, the learned agent's first N are filmed (RUN/videos/)
    # processes running the evaluation episodes, the run's own included; figures as with 1
    # (0: one per core; 1: the run's process alone)
    eval_workers: int = 1
    particles: int = 10  # trajectory-sampling particles per candidate
    propagation: str = "ts1"  # ts1 | tsinf | expectation (PETS Sec. 5)
    dtype: str = "float32"  # inference dtype while planning: float32 | bfloat16
    world_model_epochs: int = 40  # maximum world-model epochs per refit
    reward_epochs: int = 100  # reward-ensemble epochs per refit
    classifier_epochs: int = 100  # classifier epochs per refit
    calibration_fraction: float = 0.3  # of unacceptable labels held out for the threshold
    alpha: float = 0.05  # target miss rate of the calibrated classifier
    imagined_every: int = 5  # keep the planner's best imagined future every k steps (0: never)
    # stop updating the reward model after this iteration (iterations count exploration episodes)
    frozen_reward_after: int | None = None
    # the learned entry stays off while it flags more held-out acceptable states than this
    max_false_positive_rate: float = 0.3
    # reject: plans with an unacceptable imagined step are rejected; penalty: the baseline that
    # subtracts constraint_penalty * p_unacceptable from each step's reward instead
    constraint_mode: str = "reject"
    constraint_penalty: float = 10.0
    human_wait_seconds: float = 0.0  # human feedback: wait this long for the queue each round
    # the experimenter's reset: a training episode whose real state turns unacceptable goes on
    # from a fresh start state (the agent is not told; evaluation episodes never reset)
    reset_on_unacceptable: bool = False
    solicit: SolicitSettings = field(default_factory=SolicitSettings)
    plan_review: PlanReviewSettings = field(default_factory=PlanReviewSettings)

    def __post_init__(self) -> None:
        _integer("iterations", self.iterations, 0)
        _integer("explore_episodes", self.explore_episodes, 1)
        _integer("eval_episodes", self.eval_episodes, 1)
        _integer("eval_workers", self.eval_workers, 0)
        _integer("video_episodes", self.video_episodes, 0)
        if self.video_episodes > self.eval_episodes:
            raise ValueError(
                f"experiment.video_episodes={self.video_episodes} films more episodes than the "
                f"{self.eval_episodes} evaluation episodes (experiment.eval_episodes)"
            )
        _integer("particles", self.particles, 1)
        _choice("propagation", self.propagation, PROPAGATIONS)
        _choice("dtype", self.dtype, DTYPES)
        _integer("world_model_epochs", self.world_model_epochs, 1)
        _integer("reward_epochs", self.reward_epochs, 1)
        _integer("classifier_epochs", self.classifier_epochs, 1)
        _number("calibration_fraction", self.calibration_fraction, 0.0, 1.0, open_low=True)
        _number("alpha", self.alpha, 0.0, 1.0, open_low=True)
        _integer("imagined_every", self.imagined_every, 0)
        _number("max_false_positive_rate", self.max_false_positive_rate, 0.0, 1.0)
        _choice("constraint_mode", self.constraint_mode, CONSTRAINT_MODES)
        _number("constraint_penalty", self.constraint_penalty, 0.0, math.inf)
        _number("human_wait_seconds", self.human_wait_seconds, 0.0, math.inf)
        if not isinstance(self.reset_on_unacceptable, bool):
            raise ValueError(
                "experiment.reset_on_unacceptable must be true or false, got "
                f"{self.reset_on_unacceptable!r}"
            )
        if isinstance(self.solicit, dict):  # built from a plain mapping
            self.solicit = SolicitSettings(**self.solicit)
        if isinstance(self.plan_review, dict):
            self.plan_review = PlanReviewSettings(**self.plan_review)
        first_fit = self.explore_episodes - 1  # the reward model is first fitted here
        if self.frozen_reward_after is not None:
            _integer("frozen_reward_after", self.frozen_reward_after, 0)
            if self.frozen_reward_after < first_fit:
                raise ValueError(
                    f"experiment.frozen_reward_after={self.frozen_reward_after} freezes the reward "
                    f"model before its first fit (iteration {first_fit}, the last of "
                    f"{self.explore_episodes} exploration episodes; iterations count them): it "
                    "would never be trained"
                )
