"""The acting agent: plan over imagined futures, reject unacceptable ones, act.

One call of :meth:`Agent.act` follows Leike et al. 2018, Sec. 5.6: the planner
searches action sequences in the world model's imagination, scored by the reward
model and rejected when any imagined step is judged unacceptable by the
constraint set; an optional QP safety filter (Dalal et al. 2018) then projects
the first action onto the configured linear constraints. When no candidate is
acceptable the least risky one is taken (or a configured safe action) and the
event is recorded, so the loop can ask for feedback about it.

The agent never reads the task's hidden ``true_reward`` or ``unacceptable``;
tests make both raise while it acts.

Devices: MuJoCo runs on the CPU and the planner on its device. The real state
crosses to the device once per step; the plan result (the action, the plan and the
top imagined futures the loop records) comes back once per step, and the plan stays
on the device to warm-start the next step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from constraints.qp_filter import QPFilter
from mbrm.device import to_host
from mbrm.imagination import ModelImagination, as_tensor_state
from planners.base import PlanResult, imagine, score_candidates, warm_start


@dataclass
class ActInfo:
    """What happened in one ``act`` call (logged per step by the loop)."""

    plan: PlanResult
    seconds: float
    no_safe_plan: bool
    used_safe_action: bool
    filter_status: str | None = None
    filter_changed: bool = False
    replanned: bool = True  # False: the rest of an earlier plan, re-checked and followed


@dataclass
class Agent:
    """Planner + imagination (+ QP filter), with the warm start carried between steps.

    safe_action: [A] taken instead of the least risky plan when no plan is acceptable;
                 None takes the least risky candidate (the default).
    """

    planner: Any  # CEMPlanner | MCTSPlanner: plan(state, imagination, generator, previous_plan)
    imagination: ModelImagination
    qp_filter: QPFilter | None = None
    safe_action: np.ndarray | None = None
    _previous: torch.Tensor | None = field(default=None, init=False, repr=False)
    _age: int = field(default=0, init=False, repr=False)  # steps since the planner ran

    def reset(self) -> None:
        """Forget the warm start and any plan being followed (call at each episode start)."""
        self._previous = None
        self._age = 0

    def adopt(self, plan: torch.Tensor) -> None:
        """Go on from ``plan`` [H, A], chosen this step in place of the planner's own (a
        reviewer signed it off, :mod:`mbrm.plan_review`): it is followed or warm-starts
        the next search exactly as the planner's plan would have been."""
        self._previous = plan.to(self.planner.device)
        self._age = 1

    def _follow(self, state: torch.Tensor) -> PlanResult | None:
        """The rest of the plan being followed, re-imagined from the real ``state``.

        Plan reuse (``planner.replan_every`` = k): between planner calls the agent follows
        its last plan open-loop, as receding-horizon control with a k-step execution
        interval does, but every step the remaining actions (shifted as a warm start is,
        the freed last step filled by ``planner.warm_start_fill``) are imagined once more from the state actually reached
        and checked like any candidate: the plan is followed only while it stays feasible
        (Leike et al. 2018, Sec. 5.2: rejection, not penalty); otherwise the planner runs.
        One sequence is imagined instead of a whole search.
        """
        settings = self.planner.settings
        if self._previous is None or self._age >= settings.replan_every:
            return None
        planner = self.planner
        rest = warm_start(  # [H, A]: the plan shifted one step, as the next search would start
            self._previous,
            horizon=settings.horizon,
            low=planner.low,
            high=planner.high,
            fill=settings.warm_start_fill,
        )
        batch = imagine(self.imagination, state, rest[None])
        scores = score_candidates(
            batch, risk_aversion=settings.risk_aversion, reject_above=settings.reject_above
        )
        if not bool(scores.feasible[0]):
            return None
        return PlanResult(
            action=rest[0].clone(),
            plan=rest,
            score=float(scores.score[0]),
            risk=float(scores.risk[0]),
            feasible=True,
            no_safe_plan=False,
            n_candidates=1,
            n_rejected=0,
            n_nan=0,
            rejected_by={},
            n_calls=1,
            top_states=batch.states,
            top_actions=rest[None],
            top_scores=scores.score,
            top_feasible=scores.feasible,
            history=(),
        )

    def act(self, state: np.ndarray, generator: torch.Generator) -> tuple[np.ndarray, ActInfo]:
        """Choose the action for ``state`` [S]; returns the action [A] and what happened
        (the plan result on the CPU)."""
        t0 = time.perf_counter()
        s = as_tensor_state(state, self.planner.device)  # to the planner's device, once
        with torch.no_grad():
            result = self._follow(s)
            replanned = result is None
            if result is None:
                result = self.planner.plan(
                    s, self.imagination, generator=generator, previous_plan=self._previous
                )
        self._age = 1 if replanned else self._age + 1
        self._previous = result.plan  # the next warm start, where the planner is
        result = to_host(result)  # and back, once
        action = result.action.double().numpy()
        used_safe = False
        if result.no_safe_plan and self.safe_action is not None:
            action = np.asarray(self.safe_action, dtype=np.float64)
            used_safe = True
        info = ActInfo(result, 0.0, bool(result.no_safe_plan), used_safe, replanned=replanned)
        action = self.filtered(s, action, info)
        info.seconds = time.perf_counter() - t0
        return action, info

    def filtered(self, state: torch.Tensor, action: np.ndarray, info: ActInfo) -> np.ndarray:
        """``action`` [A] through the QP filter, if there is one (its outcome goes to
        ``info``), checked finite; ``state`` [S] on the planner's device."""
        if self.qp_filter is not None:
            planned = torch.as_tensor(action, dtype=torch.float32, device="cpu")
            out = self.qp_filter(state, planned)
            info.filter_status, info.filter_changed = out.status, bool(out.changed)
            action = np.asarray(out.action, dtype=np.float64)
        if not np.isfinite(action).all():
            raise FloatingPointError(f"the agent produced a non-finite action {action}")
        return action
