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
from planners.base import PlanResult


@dataclass
class ActInfo:
    """What happened in one ``act`` call (logged per step by the loop)."""

    plan: PlanResult
    seconds: float
    no_safe_plan: bool
    used_safe_action: bool
    filter_status: str | None = None
    filter_changed: bool = False


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

    def reset(self) -> None:
        """Forget the warm start (call at the start of each episode)."""
        self._previous = None

    def act(self, state: np.ndarray, generator: torch.Generator) -> tuple[np.ndarray, ActInfo]:
        """Choose the action for ``state`` [S]; returns the action [A] and what happened
        (the plan result on the CPU)."""
        t0 = time.perf_counter()
        s = as_tensor_state(state, self.planner.device)  # to the planner's device, once
        with torch.no_grad():
            result = self.planner.plan(
                s, self.imagination, generator=generator, previous_plan=self._previous
            )
        self._previous = result.plan  # the next warm start, where the planner is
        result = to_host(result)  # and back, once
        action = result.action.double().numpy()
        used_safe = False
        if result.no_safe_plan and self.safe_action is not None:
            action = np.asarray(self.safe_action, dtype=np.float64)
            used_safe = True
        info = ActInfo(result, 0.0, bool(result.no_safe_plan), used_safe)
        if self.qp_filter is not None:
            planned = torch.as_tensor(action, dtype=torch.float32, device="cpu")
            filtered = self.qp_filter(s, planned)
            info.filter_status, info.filter_changed = filtered.status, bool(filtered.changed)
            action = np.asarray(filtered.action, dtype=np.float64)
        if not np.isfinite(action).all():
            raise FloatingPointError(f"the agent produced a non-finite action {action}")
        info.seconds = time.perf_counter() - t0
        return action, info
