"""The five kinds of side-constraint entry, each judging one step of a plan.

Leike et al. (2018, Sec. 5.6 and 5.7) block unacceptable outcomes with
side-constraints rather than penalise them; each entry here is one such
constraint, with a name so that a rejection can say which one blocked a plan:

* :class:`LearnedEntry`         the side-constraint classifier with its calibrated threshold;
* :class:`StateBoundsEntry`     lower/upper bounds on named state dimensions;
* :class:`LinearEntry`          ``A x <= b`` over the state, the action, or both (``x = [s'; a]``);
* :class:`ActionBoxEntry`       ``low <= a <= high``;
* :class:`ActionPolytopeEntry`  ``A a <= b``.

Per-step alignment
    Step ``t`` of a plan takes ``s_t`` to ``s_{t+1}`` with action ``a_t``. Entries
    on states judge the *next* state ``s_{t+1}``, action entries judge ``a_t``, and
    ``linear`` entries over both judge ``(s_{t+1}, a_t)``. ``evaluate`` receives the
    next states ``[..., H, S]`` and the actions ``[..., H, A]`` and returns one value
    per step: ``[..., H]``.

Normalisation contract with the planners
    A planner rejects a step whose ``p_unacceptable`` exceeds 0.5. Each entry
    therefore reports a violation probability whose 0.5 crossing is exactly its
    own decision boundary:

    * hard entries report 0.0 (satisfied, boundary included) or 1.0 (violated);
    * a learned entry with threshold ``tau`` reports
      ``sigmoid(logit(p) - logit(tau))``, a monotone logit shift that maps ``tau``
      to 0.5 (``p = p_mean + pessimism * p_std``, clamped to [0, 1]). The classifier
      flags ``p >= tau``, so a tie is a violation: it reports 0.5 + 1 ulp, and the
      side of 0.5 always follows ``p >= tau`` exactly (float rounding cannot move
      it). ``tau = 0`` or ``1`` (a calibrated score can be exactly 0 or 1 in
      float32) reports the limits of the shift, 1.0 where ``p >= tau``, else 0.0.

    NaN is never turned into a number: a NaN value read by an entry makes that
    entry's value NaN (planners treat NaN as infeasible).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

_JUST_ABOVE_HALF = float(np.nextafter(np.float32(0.5), np.float32(1.0)))  # 0.5 + 1 ulp


@runtime_checkable
class Classifier(Protocol):
    """What a learned entry needs from the side-constraint classifier."""

    threshold: float | None  # calibrated decision threshold on p; None until calibrated

    def predict(
        self, states: torch.Tensor, dtype: str = "float32"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """states [..., S] -> (p_mean [...], p_std [...]) of being unacceptable."""
        ...


@dataclass(frozen=True)
class LearnedEntrySpec:
    """A configured learned entry before a classifier backs it.

    One classifier serves every learned entry of a set, so ``alpha`` and ``inputs``
    describe that classifier (its calibration and its input dimensions); the rest
    is how this entry reads the classifier's scores.
    """

    name: str
    threshold: float | None = None  # fixed override of the classifier's threshold
    alpha: float | None = None  # target miss rate (recall 1 - alpha) used for calibration
    pessimism: float = 0.0  # judge p_mean + pessimism * p_std
    dtype: str = "float32"  # classifier inference dtype
    inputs: tuple[str, ...] | None = None  # state names the classifier reads; None: all

    def bind(self, classifier: Classifier) -> LearnedEntry:
        """The entry, judging states with ``classifier``."""
        return LearnedEntry(
            self.name, classifier, self.threshold, self.alpha, self.pessimism, self.dtype
        )


@dataclass(frozen=True, eq=False)
class LearnedEntry:
    """The learned classifier; see the module docstring for its reported value."""

    name: str
    classifier: Classifier
    threshold: float | None = None  # fixed override of classifier.threshold
    alpha: float | None = None  # target miss rate (recall 1 - alpha) used for calibration
    pessimism: float = 0.0  # judge p_mean + pessimism * p_std
    dtype: str = "float32"  # classifier inference dtype

    uses_states = True
    uses_actions = False

    def tau(self) -> float:
        """The threshold in force: the fixed one, else the classifier's calibrated one."""
        tau = self.threshold if self.threshold is not None else self.classifier.threshold
        if tau is None:
            raise RuntimeError(
                f"constraint entry {self.name!r}: the classifier is not calibrated "
                "(threshold is None); calibrate it or give a fixed `threshold`"
            )
        if not 0.0 <= float(tau) <= 1.0:  # NaN fails too
            raise RuntimeError(f"constraint entry {self.name!r}: threshold {tau} is outside [0, 1]")
        return float(tau)

    def evaluate(self, next_states: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """next_states [..., H, S] -> violation probability [..., H]."""
        tau = self.tau()
        p_mean, p_std = self.classifier.predict(next_states, dtype=self.dtype)
        p = p_mean.float() + self.pessimism * p_std.float() if self.pessimism else p_mean.float()
        p = p.clamp(0.0, 1.0)  # [..., H]; clamp keeps NaN
        if 0.0 < tau < 1.0:
            # sigmoid(logit(p) - logit(tau)) in a form that is exact at p = 0 and p = 1.
            num = p * (1.0 - tau)
            q = num / (num + (1.0 - p) * tau)
        else:  # the shift's limits: tau = 0 flags everything, tau = 1 only p = 1
            q = (p >= tau).to(p.dtype)
        # A tie is a violation, as in the classifier's own rule (p >= tau); rounding
        # must not move a score across 0.5, so that comparison picks the side of 0.5.
        q = torch.where(p >= tau, q.clamp(min=_JUST_ABOVE_HALF), q.clamp(max=0.5))
        return torch.where(p.isnan(), p, q)


@dataclass(frozen=True, eq=False)
class StateBoundsEntry:
    """``lower <= s'[indices] <= upper`` (infinite where a side is unbounded)."""

    name: str
    dims: tuple[str, ...]
    indices: tuple[int, ...]
    lower: np.ndarray  # [D]
    upper: np.ndarray  # [D]

    uses_states = True
    uses_actions = False

    def evaluate(self, next_states: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """next_states [..., H, S] -> 0/1 violation [..., H]."""
        x = next_states[..., list(self.indices)]  # [..., D]
        lo = torch.as_tensor(self.lower, dtype=x.dtype, device=x.device)
        hi = torch.as_tensor(self.upper, dtype=x.dtype, device=x.device)
        return _hard(((x < lo) | (x > hi)).any(-1), x)


@dataclass(frozen=True, eq=False)
class LinearEntry:
    """``A x <= b`` with ``x = s'[indices]``, ``a``, or ``[s'[indices]; a]``."""

    name: str
    over: str  # "state" | "action" | "both"
    indices: tuple[int, ...]  # state columns of A (empty when over == "action")
    A: np.ndarray  # [M, len(indices) + (A if over != "state" else 0)]
    b: np.ndarray  # [M]

    @property
    def uses_states(self) -> bool:
        return self.over != "action"

    @property
    def uses_actions(self) -> bool:
        return self.over != "state"

    def evaluate(self, next_states: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """next_states [..., H, S], actions [..., H, A] -> 0/1 violation [..., H]."""
        x = _cat_broadcast(
            ([next_states[..., list(self.indices)]] if self.uses_states else [])
            + ([actions] if self.uses_actions else [])
        )  # [..., D]
        A = torch.as_tensor(self.A, dtype=x.dtype, device=x.device)
        b = torch.as_tensor(self.b, dtype=x.dtype, device=x.device)
        lhs = x @ A.T  # [..., M]
        return _hard((lhs > b).any(-1), lhs)


@dataclass(frozen=True, eq=False)
class ActionBoxEntry:
    """``low <= a <= high``."""

    name: str
    low: np.ndarray  # [A]
    high: np.ndarray  # [A]

    uses_states = False
    uses_actions = True

    def evaluate(self, next_states: torch.Tensor | None, actions: torch.Tensor) -> torch.Tensor:
        """actions [..., H, A] -> 0/1 violation [..., H]."""
        lo = torch.as_tensor(self.low, dtype=actions.dtype, device=actions.device)
        hi = torch.as_tensor(self.high, dtype=actions.dtype, device=actions.device)
        return _hard(((actions < lo) | (actions > hi)).any(-1), actions)


@dataclass(frozen=True, eq=False)
class ActionPolytopeEntry:
    """``A a <= b``."""

    name: str
    A: np.ndarray  # [M, A]
    b: np.ndarray  # [M]

    uses_states = False
    uses_actions = True

    def evaluate(self, next_states: torch.Tensor | None, actions: torch.Tensor) -> torch.Tensor:
        """actions [..., H, A] -> 0/1 violation [..., H]."""
        A = torch.as_tensor(self.A, dtype=actions.dtype, device=actions.device)
        b = torch.as_tensor(self.b, dtype=actions.dtype, device=actions.device)
        lhs = actions @ A.T  # [..., M]
        return _hard((lhs > b).any(-1), lhs)


HardEntry = StateBoundsEntry | LinearEntry | ActionBoxEntry | ActionPolytopeEntry
Entry = LearnedEntry | HardEntry


def _hard(violated: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """0/1 violation, NaN wherever a value the entry read is NaN."""
    out = violated.to(values.dtype)
    return torch.where(torch.isnan(values).any(-1), torch.nan, out)


def _cat_broadcast(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate on the last axis after broadcasting the leading axes."""
    lead = torch.broadcast_shapes(*[p.shape[:-1] for p in parts])
    return torch.cat([p.expand(*lead, p.shape[-1]) for p in parts], dim=-1)
