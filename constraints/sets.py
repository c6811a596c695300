"""Constraint sets: the side-constraints a user configures, one named entry each.

A :class:`ConstraintSet` combines entries of five kinds (Leike et al. 2018,
Sec. 5.6 and 5.7: side-constraints that block unacceptable outcomes rather than
penalise them); :mod:`constraints.entries` says what each kind judges and how
its value is normalised so that 0.5 is its decision boundary. The set's
``p_unacceptable`` is the maximum over entries, and the per-entry values
(name -> ``[..., H]``) come with it, so a rejection names its entry. The maximum
propagates NaN: a NaN read by any entry is never acceptable.

Sets are built from a parsed :class:`~constraints.spec.ConstraintSpec`
(``ConstraintSet.from_config`` is a shortcut through it). The hard entries are
also linear inequalities (:class:`LinearRows`) for the QP safety filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.optimize
import torch

from constraints.entries import (
    ActionBoxEntry,
    ActionPolytopeEntry,
    Entry,
    LearnedEntry,
    LinearEntry,
    StateBoundsEntry,
)

__all__ = ["ConfigError", "ConstraintEvaluation", "ConstraintSet", "LinearRows", "lp_feasible"]


class ConfigError(ValueError):
    """A constraint-set configuration problem, raised at start-up."""


# --------------------------------------------------------------------------- rows for the QP filter


@dataclass(frozen=True)
class LinearRows:
    """The hard entries as linear inequalities, for the QP safety filter.

    state rows:  C_s s' + C_a a <= d      C_s [M, S], C_a [M, A], d [M]
    action rows: G a <= h                 G [K, A], h [K]
    box:         low <= a <= high         [A] each (-inf/inf where unbounded)
    ``*_names`` say which entry (and which side or row) each inequality comes from.
    """

    C_s: np.ndarray
    C_a: np.ndarray
    d: np.ndarray
    state_names: tuple[str, ...]
    G: np.ndarray
    h: np.ndarray
    action_names: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray
    low_names: tuple[str, ...]
    high_names: tuple[str, ...]

    def check_actions_feasible(self) -> None:
        """Raise :class:`ConfigError` unless the action rows and box leave some action."""
        if np.any(self.low > self.high):
            i = int(np.argmax(self.low > self.high))
            raise ConfigError(
                f"no action satisfies both {self.low_names[i]} and {self.high_names[i]}"
            )
        if self.G.shape[0] and not lp_feasible(self.G, self.h, self.low, self.high):
            who = sorted({n.split("[")[0] for n in (*self.action_names, *self.low_names) if n})
            raise ConfigError(f"the action constraints {who} together admit no action")


def lp_feasible(
    A: np.ndarray, b: np.ndarray, low: np.ndarray | None, high: np.ndarray | None
) -> bool:
    """Is ``{x : A x <= b, low <= x <= high}`` non-empty? (a zero-objective LP)"""
    n = A.shape[1]
    lo = np.full(n, -np.inf) if low is None else low
    hi = np.full(n, np.inf) if high is None else high
    bounds = [
        (None if np.isinf(l) else l, None if np.isinf(h) else h)
        for l, h in zip(lo, hi, strict=True)
    ]
    res = scipy.optimize.linprog(np.zeros(n), A_ub=A, b_ub=b, bounds=bounds, method="highs")
    if res.status not in (0, 2):
        raise RuntimeError(f"feasibility LP failed: {res.message}")
    return res.status == 0


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ConstraintEvaluation:
    """Per-entry violation probabilities and their maximum.

    p_unacceptable: [..., H]  max over entries (zeros for an empty set)
    violations:     name -> [..., H], in the set's entry order
    """

    p_unacceptable: torch.Tensor
    violations: dict[str, torch.Tensor]

    def worst_entry(self) -> list[str]:
        """Name of the entry with the largest value at each step, flattened [prod(...) * H]."""
        if not self.violations:
            return []
        names = list(self.violations)
        # NaN ranks above every probability here (only for the ranking): it is the worst.
        stacked = torch.stack([v.nan_to_num(nan=2.0) for v in self.violations.values()], -1)
        return [names[i] for i in stacked.argmax(-1).flatten().tolist()]

    def rejecting(self, threshold: float = 0.5) -> list[str]:
        """Entries whose value exceeds ``threshold`` (or is NaN) at any evaluated step."""
        return [n for n, v in self.violations.items() if bool(((v > threshold) | v.isnan()).any())]


# --------------------------------------------------------------------------- the set


@dataclass(frozen=True, eq=False)
class ConstraintSet:
    """Named side-constraint entries; see the module docstring."""

    entries: tuple[Entry, ...]
    state_dim: int
    action_dim: int
    action_bounds: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    @property
    def learned(self) -> tuple[LearnedEntry, ...]:
        return tuple(e for e in self.entries if isinstance(e, LearnedEntry))

    def __len__(self) -> int:
        return len(self.entries)

    # ---- evaluation

    def evaluate(
        self, states: torch.Tensor | Any, actions: torch.Tensor | None = None
    ) -> ConstraintEvaluation:
        """Violation probabilities per entry and step.

        states:  [..., H+1, S] (or anything with ``.states``, e.g. an ImaginedBatch)
        actions: [..., H, A], broadcast against the states' leading dimensions.
        With ``actions=None`` the states are [..., S], each judged as an outcome;
        entries that read actions are then left out of ``violations``.
        """
        states = getattr(states, "states", states)
        if not isinstance(states, torch.Tensor):
            raise TypeError(f"states must be a torch.Tensor, got {type(states).__name__}")
        if states.shape[-1] != self.state_dim:
            raise ValueError(f"expected states [..., {self.state_dim}], got {tuple(states.shape)}")
        states = states.to(torch.promote_types(states.dtype, torch.float32))
        if actions is None:
            nxt, act, lead = states, None, states.shape[:-1]
            active = [e for e in self.entries if not e.uses_actions]
        else:
            if actions.ndim < 2 or actions.shape[-1] != self.action_dim:
                raise ValueError(
                    f"expected actions [..., H, {self.action_dim}], got {tuple(actions.shape)}"
                )
            H = actions.shape[-2]
            if states.ndim < 2 or states.shape[-2] != H + 1:
                raise ValueError(
                    f"states {tuple(states.shape)} must be [..., H+1, S] with H+1 = {H + 1} "
                    f"for actions {tuple(actions.shape)}"
                )
            nxt = states[..., 1:, :]  # [..., H, S]: step t judges s_{t+1}
            act = actions.to(states.dtype)  # [..., H, A]
            try:
                lead = torch.broadcast_shapes(nxt.shape[:-1], act.shape[:-1])
            except RuntimeError:
                raise ValueError(
                    f"states {tuple(states.shape)} and actions {tuple(actions.shape)} do not "
                    "broadcast"
                ) from None
            active = list(self.entries)
        violations = {e.name: e.evaluate(nxt, act).float().expand(lead) for e in active}
        if violations:
            p = torch.stack(list(violations.values()), 0).amax(0)  # amax propagates NaN
        else:
            p = torch.zeros(lead, dtype=torch.float32, device=states.device)
        return ConstraintEvaluation(p, violations)

    # ---- the QP filter's view

    def linear_rows(self) -> LinearRows:
        """The hard entries as inequalities (learned entries are not linear: left out)."""
        S, A = self.state_dim, self.action_dim
        cs, ca, d, sn, G, h, an = [], [], [], [], [], [], []
        low, high = np.full(A, -np.inf), np.full(A, np.inf)
        low_n, high_n = [""] * A, [""] * A

        def tighten(lo: np.ndarray, hi: np.ndarray, who: str) -> None:
            for i in range(A):
                if lo[i] > low[i]:
                    low[i], low_n[i] = lo[i], f"{who}[a{i} >= {lo[i]:g}]"
                if hi[i] < high[i]:
                    high[i], high_n[i] = hi[i], f"{who}[a{i} <= {hi[i]:g}]"

        for e in self.entries:
            if isinstance(e, StateBoundsEntry):
                for j, (dim, i) in enumerate(zip(e.dims, e.indices, strict=True)):
                    for sign, bound, op in ((1.0, e.upper[j], "<="), (-1.0, e.lower[j], ">=")):
                        if np.isfinite(bound):
                            row = np.zeros(S)
                            row[i] = sign
                            cs.append(row)
                            ca.append(np.zeros(A))
                            d.append(sign * bound)
                            sn.append(f"{e.name}[{dim} {op} {bound:g}]")
            elif isinstance(e, LinearEntry) and e.uses_states:
                k = len(e.indices)
                for r in range(e.A.shape[0]):
                    row = np.zeros(S)
                    row[list(e.indices)] = e.A[r, :k]
                    cs.append(row)
                    ca.append(e.A[r, k:] if e.uses_actions else np.zeros(A))
                    d.append(e.b[r])
                    sn.append(f"{e.name}[row {r}]")
            elif isinstance(e, LinearEntry | ActionPolytopeEntry):
                for r in range(e.A.shape[0]):
                    G.append(e.A[r])
                    h.append(e.b[r])
                    an.append(f"{e.name}[row {r}]")
            elif isinstance(e, ActionBoxEntry):
                tighten(e.low, e.high, e.name)
        if self.action_bounds is not None:
            tighten(*self.action_bounds, "actuator_range")
        return LinearRows(
            C_s=np.asarray(cs, dtype=np.float64).reshape(-1, S),
            C_a=np.asarray(ca, dtype=np.float64).reshape(-1, A),
            d=np.asarray(d, dtype=np.float64),
            state_names=tuple(sn),
            G=np.asarray(G, dtype=np.float64).reshape(-1, A),
            h=np.asarray(h, dtype=np.float64),
            action_names=tuple(an),
            low=low,
            high=high,
            low_names=tuple(low_n),
            high_names=tuple(high_n),
        )
