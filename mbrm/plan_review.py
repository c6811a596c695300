"""Plan review: the agent's own plans, signed off or rejected before they are executed.

Leike et al. 2018, Sec. 6 (*Design*): "split our policy into two parts: a plan
generator and a plan executor. The plan generator produces a human-readable plan of
the current course of action ... This plan can then optionally be reviewed and signed
off by the user." A model-based agent already has its plan: the imagined futures the
planner ranked best. At the moments the settings choose (no safe plan, an uncertain
plan, the start of an episode, every k steps) the agent pauses and hands its top few
plans to a reviewer, each with the predicted reward ± uncertainty and the risk of every
imagined step and the constraint entries it comes close to. The reviewer signs one off
(it is executed) or rejects them all, marking in each the frame from which it becomes
unacceptable. Every judged plan is stored as an unacceptable-state label on an imagined
segment (it counts against the label budget like any other); after a rejection the
agent replans with the classifier refitted on those labels, or takes its fallback.

The synthetic reviewer judges the imagined states with the task's hidden rule, as a
person watching the rendered plan would, and gets a plan's verdict wrong with a
B-Pref-style ``mistake`` probability (Lee et al. 2021).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from mbrm.agent import ActInfo, Agent
from mbrm.feedback.segments import (
    FeedbackKind,
    Labeller,
    Segment,
    SegmentSource,
    UnacceptableLabel,
)
from mbrm.feedback.store import FeedbackStore
from mbrm.imagination import as_tensor_state
from mbrm.settings import PlanReviewSettings
from mbrm.tasks import Task
from planners.base import imagine

ACQUISITION = "plan_review"  # the stored queries' acquisition and the segments' objective


@dataclass(frozen=True)
class ProposedPlan:
    """One plan as a reviewer sees it (the first particle's imagined states).

    states:       [H+1, S] imagined states, states[0] the real current state
    actions:      [H, A]
    reward_mean:  [H] predicted reward per step (mean over particles)
    reward_std:   [H] the reward ensemble's std per step (mean over particles)
    risk:         [H] p_unacceptable of each imagined step (max over particles)
    near:         constraint entry -> its highest per-step probability on the plan,
                  for the entries at or above the settings' ``near``
    feasible:     the planner's rejection rule let it pass
    """

    states: np.ndarray
    actions: np.ndarray
    reward_mean: np.ndarray
    reward_std: np.ndarray
    risk: np.ndarray
    near: dict[str, float]
    feasible: bool


@dataclass(frozen=True)
class Verdict:
    """A review's outcome.

    signed:  index of the plan signed off (it is executed); None: all rejected
    marks:   per shown plan, the first state (index into its states) the reviewer
             marked unacceptable; None where it saw none
    """

    signed: int | None
    marks: tuple[int | None, ...]


class PlanReviewer(Protocol):
    """Signs off one of the agent's plans or rejects them all."""

    def review(self, plans: Sequence[ProposedPlan]) -> Verdict: ...

    def describe(self) -> dict[str, Any]:
        """Who reviewed: stored with every label a review gives."""
        ...

    def rng_state(self) -> Any: ...

    def set_rng_state(self, state: Any) -> None: ...


class SyntheticPlanReviewer:
    """The hidden rule on the imagined states, with a chance of a wrong verdict per plan.

    A plan is unacceptable from its first state the rule flags. With probability
    ``mistake`` the verdict on a plan is flipped: an unacceptable plan passes, an
    acceptable one is marked from a uniformly drawn imagined frame. The best-ranked plan
    that passes is signed off.
    """

    def __init__(self, task: Task, *, mistake: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= mistake <= 1.0:
            raise ValueError(f"mistake must be in [0, 1], got {mistake}")
        self.task, self.mistake, self.seed = task, float(mistake), int(seed)
        self._rng = np.random.default_rng(self.seed)

    def review(self, plans: Sequence[ProposedPlan]) -> Verdict:
        marks: list[int | None] = []
        for plan in plans:
            hits = np.flatnonzero(self.task.unacceptable(plan.states))
            mark = int(hits[0]) if hits.size else None
            if self._rng.random() < self.mistake:
                mark = None if mark is not None else int(self._rng.integers(1, len(plan.states)))
            marks.append(mark)
        signed = next((i for i, m in enumerate(marks) if m is None), None)
        return Verdict(signed, tuple(marks))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "synthetic_plan_reviewer",
            "task": self.task.name,
            "mistake": self.mistake,
            "seed": self.seed,
        }

    def rng_state(self) -> Any:
        return self._rng.bit_generator.state

    def set_rng_state(self, state: Any) -> None:
        self._rng.bit_generator.state = state


def propose(
    agent: Agent, state: np.ndarray, info: ActInfo, k: int, near: float
) -> list[ProposedPlan]:
    """The ``k`` best plans of ``info`` re-imagined from ``state`` for review: per step
    the reward mean ± std and the risk, and the constraint entries they come close to."""
    plan = info.plan
    actions = plan.top_actions[:k].to(agent.planner.device, torch.float32)  # [k, H, A]
    with torch.no_grad():
        batch = imagine(agent.imagination, as_tensor_state(state, agent.planner.device), actions)
    out = []
    for i in range(actions.shape[0]):
        close = {
            name: float(v[i].max())
            for name, v in batch.violations.items()
            if float(v[i].max()) >= near
        }
        out.append(
            ProposedPlan(
                states=batch.states[i, 0].double().cpu().numpy(),
                actions=actions[i].double().cpu().numpy(),
                reward_mean=batch.reward_mean[i].mean(0).double().cpu().numpy(),
                reward_std=batch.reward_std[i].mean(0).double().cpu().numpy(),
                risk=batch.p_unacceptable[i].max(0).values.double().cpu().numpy(),
                near=close,
                feasible=bool(plan.top_feasible[i]),
            )
        )
    return out


@dataclass
class ReviewCounts:
    """Per episode: reviews held, plans signed off, rounds rejected, labels they gave."""

    reviews: int = 0
    signed_off: int = 0
    rejected: int = 0
    labels: int = 0

    def as_metrics(self) -> dict[str, int]:
        return {
            "plan_reviews": self.reviews,
            "plan_reviews_signed_off": self.signed_off,
            "plan_reviews_rejected": self.rejected,
            "plan_review_labels": self.labels,
        }


class ReviewedAgent:
    """An :class:`Agent` whose plans a reviewer signs off at the configured moments.

    store, loop_round:  where a review's labels go (unacceptable-state labels on the
                        shown plans, acquisition ``plan_review``)
    label_budget:       no review once the store holds this many labels
    refit:              after a rejection with ``on_reject=replan``: refit the classifier
                        on every label and return the agent on the refitted models
    """

    def __init__(
        self,
        agent: Agent,
        settings: PlanReviewSettings,
        reviewer: PlanReviewer,
        store: FeedbackStore,
        *,
        loop_round: int,
        label_budget: int,
        refit: Callable[[], Agent],
    ) -> None:
        self.agent, self.settings, self.reviewer = agent, settings, reviewer
        self.store, self.loop_round, self.label_budget = store, loop_round, label_budget
        self.refit = refit
        self.counts = ReviewCounts()
        self._t = 0

    def reset(self) -> None:
        """Start of an episode, or a fresh start after the experimenter's reset (the
        loop makes one ReviewedAgent an episode, so ``max_per_episode`` spans both)."""
        self.agent.reset()
        self._t = 0

    def _due(self, t: int, info: ActInfo) -> bool:
        when = self.settings.when
        return (
            ("no_safe_plan" in when and info.no_safe_plan)
            or ("episode_start" in when and t == 0)
            or ("every" in when and t % self.settings.every == 0)
        )

    def _uncertain(self, chosen: ProposedPlan) -> bool:
        s = self.settings
        return float(chosen.reward_std.mean()) > s.reward_std_above or (
            float(chosen.risk.max()) > s.risk_above
        )

    def act(self, state: np.ndarray, generator: torch.Generator) -> tuple[np.ndarray, ActInfo]:
        action, info = self.agent.act(state, generator)
        t, self._t = self._t, self._t + 1
        s = self.settings
        if self.counts.reviews >= s.max_per_episode:
            return action, info
        due = self._due(t, info)
        if not due and "uncertain" not in s.when:
            return action, info
        plans = propose(self.agent, state, info, s.plans, s.near)
        if not (due or self._uncertain(plans[0])):
            return action, info
        if self.store.count_labels() >= self.label_budget:
            return action, info
        verdict = self.reviewer.review(plans)
        self._store(plans, verdict)
        self.counts.reviews += 1
        if verdict.signed is not None:
            self.counts.signed_off += 1
            if verdict.signed != 0:  # the reviewer chose another plan: execute that one
                self.agent.adopt(info.plan.top_actions[verdict.signed])
                action = self._executed(state, plans[verdict.signed].actions[0], info)
            return action, info
        self.counts.rejected += 1
        if s.on_reject == "replan":
            self.agent = self.refit()  # the classifier refitted on the marks just given
            self.agent.reset()  # the rejected plan is not followed
            return self.agent.act(state, generator)
        if self.agent.safe_action is not None:
            return self._executed(state, self.agent.safe_action, info), info
        least = int(np.argmin([p.risk.max() for p in plans]))
        return self._executed(state, plans[least].actions[0], info), info

    def _executed(self, state: np.ndarray, action: np.ndarray, info: ActInfo) -> np.ndarray:
        """What the agent does with ``action`` instead of its own: the QP filter still
        applies."""
        s = as_tensor_state(state, self.agent.planner.device)
        return self.agent.filtered(s, np.asarray(action, dtype=np.float64).copy(), info)

    def _store(self, plans: Sequence[ProposedPlan], verdict: Verdict) -> None:
        who = Labeller.teacher(ACQUISITION, **self.reviewer.describe())
        for plan, mark in zip(plans, verdict.marks, strict=True):
            segment = Segment(
                plan.states, plan.actions, SegmentSource.IMAGINED, {"objective": ACQUISITION}
            )
            self.store.add_labelled_query(
                FeedbackKind.UNACCEPTABLE,
                (self.store.add_segment(segment),),
                UnacceptableLabel.from_first_step(mark, len(plan.states)),
                who,
                acquisition=ACQUISITION,
                loop_round=self.loop_round,
            )
            self.counts.labels += 1


def reviewed(
    agent: Agent,
    settings: Any,
    reviewer: PlanReviewer | None,
    store: FeedbackStore,
    *,
    loop_round: int,
    refit: Callable[[], Agent],
) -> Agent | ReviewedAgent:
    """``agent`` with its plans reviewed at the moments ``settings.plan_review`` names (a
    run's :class:`mbrm.settings.LoopSettings`); ``agent`` itself when it names none."""
    if not settings.plan_review.enabled or reviewer is None:
        return agent
    return ReviewedAgent(
        agent,
        settings.plan_review,
        reviewer,
        store,
        loop_round=loop_round,
        label_budget=settings.solicit.label_budget,
        refit=refit,
    )
