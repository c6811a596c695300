"""Types shared by every planner: what imagination returns and what a plan is.

Planners see the world only through an :class:`Imagination` callable that turns
a start state and candidate action sequences into an :class:`ImaginedBatch`.
This keeps them independent of the world model, reward model and constraint
sets (and testable on analytic objectives), as in mctx where the model is passed
in, never subclassed.

This module imports torch only; it must never import ``mbrm`` or ``constraints``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass(frozen=True)
class ImaginedBatch:
    """Imagined futures of N candidate action sequences, P particles each.

    states:          [N, P, H+1, S]  predicted states, states[:, :, 0] is the start state
    reward_mean:     [N, P, H]       reward-ensemble mean of r(s_t, a_t)
    reward_std:      [N, P, H]       reward-ensemble std (epistemic uncertainty)
    p_unacceptable:  [N, P, H]       combined probability that s_{t+1} is unacceptable
    violations:      optional per-constraint probabilities, name -> [N, P, H]; used
                     to say which constraint rejected a plan
    """

    states: torch.Tensor
    reward_mean: torch.Tensor
    reward_std: torch.Tensor
    p_unacceptable: torch.Tensor
    violations: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        N, P, H1, _ = self.states.shape
        want = (N, P, H1 - 1)
        for name in ("reward_mean", "reward_std", "p_unacceptable"):
            got = tuple(getattr(self, name).shape)
            if got != want:
                raise ValueError(f"ImaginedBatch.{name} has shape {got}, expected {want}")
        for name, v in self.violations.items():
            if tuple(v.shape) != want:
                raise ValueError(
                    f"ImaginedBatch.violations[{name!r}] has shape {tuple(v.shape)}, "
                    f"expected {want}"
                )


class Imagination(Protocol):
    """Turns a start state [S] and actions [N, H, A] into an ImaginedBatch."""

    def __call__(self, state: torch.Tensor, actions: torch.Tensor) -> ImaginedBatch: ...
