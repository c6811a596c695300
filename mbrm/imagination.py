"""Imagination: the world model, the reward ensemble and the constraint set as one callable.

Implements the planners' :class:`planners.base.Imagination` protocol (Leike et
al. 2018, Sec. 5.6 "model-based RL with the reward model inside planning"):
imagined states come from the world model's trajectory sampling, each step is
scored by the current reward model and judged by every side-constraint.

The reward is a callable ``(s_t, a_t, s_{t+1}) -> (mean, std)`` so that a learned
ensemble (reading ``s_t`` or ``s_{t+1}`` with ``a_t``) and oracle mode (the task's hidden reward,
which needs ``s_{t+1}``) plug in the same way.

Devices: everything is computed where the world model's states are. The hidden
reward and rule are numpy functions of the task: oracle mode copies the imagined
states to the CPU once per call and the answer back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from constraints.sets import ConstraintSet
from mbrm.tasks import Task
from mbrm.world_model import WorldModel
from planners.base import ImaginedBatch

RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def learned_reward(model, dtype: str = "float32") -> RewardFn:
    """Adapter for a reward ensemble with ``predict(states, actions, dtype) -> (mean, std)``."""

    def reward(s: torch.Tensor, a: torch.Tensor, s_next: torch.Tensor):
        return model.predict(s, a, s_next, dtype=dtype)

    return reward


def hidden_reward(task: Task) -> RewardFn:
    """The task's hidden true reward, with zero uncertainty.

    Only for oracle mode and the reference agent that scores are normalised against.
    """

    def reward(s: torch.Tensor, a: torch.Tensor, s_next: torch.Tensor):
        host = (x.double().cpu().numpy() for x in (s, a, s_next))
        mean = torch.as_tensor(task.true_reward(*host), dtype=torch.float32, device=s.device)
        return mean, torch.zeros_like(mean)

    return reward


class HiddenRuleClassifier:
    """The task's hidden ``unacceptable`` rule as 0/1 probabilities (oracle mode and the
    reference agent back the learned constraint entries with it)."""

    threshold = 0.5

    def __init__(self, task: Task) -> None:
        self.task = task

    def predict(
        self, states: torch.Tensor, dtype: str = "float32"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        flags = self.task.unacceptable(states.double().cpu().numpy())
        p = torch.as_tensor(flags, dtype=torch.float32, device=states.device)
        return p, torch.zeros_like(p)


@dataclass
class ModelImagination:
    """Planner-facing imagination over a learned world model.

    particles:    P trajectory-sampling particles per candidate
    propagation:  ts1 | tsinf | expectation (PETS Sec. 5)
    dtype:        inference dtype of the world model
    generator:    randomness of the particles (advances with every call)
    penalty:      None (default): unacceptable steps are reported to the planner, which
                  rejects such plans. A number: the baseline of penalising instead of
                  rejecting; each step's reward mean is lowered by ``penalty * p_unacceptable``
                  and nothing is reported as unacceptable (the reward is standardised, so
                  the penalty is in units of the reward's per-step standard deviation).
    """

    world_model: WorldModel
    reward: RewardFn
    constraints: ConstraintSet | None
    particles: int
    generator: torch.Generator
    propagation: str = "ts1"
    dtype: str = "float32"
    penalty: float | None = None

    def __call__(self, state: torch.Tensor, actions: torch.Tensor) -> ImaginedBatch:
        """state [S], actions [N, H, A] -> ImaginedBatch with states [N, P, H+1, S]."""
        states = self.world_model.rollout(
            state,
            actions,
            particles=self.particles,
            generator=self.generator,
            propagation=self.propagation,
            dtype=self.dtype,
        )  # [N, P, H+1, S]
        N, P, H1, _ = states.shape
        acts = actions.float().unsqueeze(1).expand(N, P, H1 - 1, actions.shape[-1])  # [N, P, H, A]
        mean, std = self.reward(states[:, :, :-1], acts, states[:, :, 1:])  # [N, P, H]
        if self.constraints is not None and len(self.constraints):
            ev = self.constraints.evaluate(states, acts)
            p_unacc, violations = ev.p_unacceptable, ev.violations
        else:
            p_unacc, violations = torch.zeros(N, P, H1 - 1, device=states.device), {}
        mean = mean.float()
        if self.penalty is not None:
            mean = mean - self.penalty * p_unacc
            p_unacc, violations = torch.zeros_like(p_unacc), {}
        return ImaginedBatch(states, mean, std.float(), p_unacc, violations)


def as_tensor_state(state: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """A real state [S] (float64 from MuJoCo) as the float32 tensor planners use, on
    ``device`` (one copy: the state crosses to the device once per planning step)."""
    return torch.as_tensor(np.asarray(state), dtype=torch.float32, device=device)
