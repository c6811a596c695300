"""Constraint sets: the side-constraints a user configures, one named entry each.

A :class:`ConstraintSet` combines entries of five kinds (Leike et al. 2018,
Sec. 4.4 and 5.7: side-constraints that block unacceptable outcomes rather than
penalise them):

* ``learned``         the side-constraint classifier with its calibrated threshold;
* ``state_bounds``    lower/upper bounds on named state dimensions;
* ``linear``          ``A x <= b`` over the state, the action, or both (``x = [s'; a]``);
* ``action_box``      ``low <= a <= high`` (defaults to the task's actuator range);
* ``action_polytope`` ``A a <= b``.

Per-step alignment
    Step ``t`` of a plan takes ``s_t`` to ``s_{t+1}`` with action ``a_t``. Entries
    on states judge the *next* state ``s_{t+1}`` (``states[..., 1:, :]``), action
    entries judge ``a_t``, and ``linear`` entries over both judge ``(s_{t+1}, a_t)``.
    Every entry returns one value per step: ``[..., H]``.

Normalisation contract with the planners
    A planner rejects a step whose ``p_unacceptable`` exceeds 0.5. Each entry
    therefore reports a violation probability whose 0.5 crossing is exactly its
    own decision boundary:

    * hard entries report 0.0 (satisfied, boundary included) or 1.0 (violated);
    * a ``learned`` entry with threshold ``tau`` reports
      ``sigmoid(logit(p) - logit(tau))``, a monotone logit shift that maps ``tau``
      to 0.5 (``p = p_mean + kappa * p_std``, clamped to [0, 1]). The classifier
      flags ``p >= tau``, so a tie is a violation: it reports 0.5 + 1 ulp, and the
      side of 0.5 always follows ``p >= tau`` exactly (float rounding cannot move
      it). ``tau = 0`` or ``1`` (a calibrated score can be exactly 0 or 1 in
      float32) reports the limits of the shift, 1.0 where ``p >= tau``, else 0.0;
    * the combined ``p_unacceptable`` is the maximum over entries, and the per-entry
      values (name -> ``[..., H]``) are returned too, so a rejection names its entry.

    NaN is never turned into a number: a NaN state value read by an entry makes
    that entry's value NaN, and the maximum propagates it (planners treat NaN as
    infeasible).

Configuration
    ``ConstraintSet.from_config`` takes plain Python containers (e.g. from
    ``OmegaConf.to_container``): either a list of entry dicts, each with a ``name``,
    or a dict keyed by entry name (the layout of ``configs/constraints/*.yaml``,
    which Hydra can override per key: ``constraints.entries.speed.upper=[3.0]``,
    add: ``+constraints.entries.slow={kind:action_box,low:-0.5,high:0.5}``,
    remove: ``~constraints.entries.speed`` or set it to ``null``). Every entry is
    validated at construction; an error names the entry and the problem.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.optimize
import torch

from mbrm.tasks import StateLayout

KINDS = ("learned", "state_bounds", "linear", "action_box", "action_polytope")
_JUST_ABOVE_HALF = float(np.nextafter(np.float32(0.5), np.float32(1.0)))  # 0.5 + 1 ulp


class ConfigError(ValueError):
    """A constraint-set configuration problem, raised at start-up."""


@runtime_checkable
class Classifier(Protocol):
    """What a ``learned`` entry needs from the side-constraint classifier."""

    threshold: float | None  # calibrated decision threshold on p; None until calibrated

    def predict(
        self, states: torch.Tensor, dtype: str = "float32"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """states [..., S] -> (p_mean [...], p_std [...]) of being unacceptable."""
        ...


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True, eq=False)
class LearnedEntry:
    """The learned classifier; see the module docstring for its reported value."""

    name: str
    classifier: Classifier
    threshold: float | None = None  # fixed override of classifier.threshold
    alpha: float | None = None  # target miss rate (recall 1 - alpha) used for calibration
    kappa: float = 0.0  # pessimism: judge p_mean + kappa * p_std
    dtype: str = "float32"  # classifier inference dtype

    uses_states = True
    uses_actions = False

    def tau(self) -> float:
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
        tau = self.tau()
        p_mean, p_std = self.classifier.predict(next_states, dtype=self.dtype)
        p = p_mean.float() + self.kappa * p_std.float() if self.kappa else p_mean.float()
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
        A = torch.as_tensor(self.A, dtype=actions.dtype, device=actions.device)
        b = torch.as_tensor(self.b, dtype=actions.dtype, device=actions.device)
        lhs = actions @ A.T  # [..., M]
        return _hard((lhs > b).any(-1), lhs)


Entry = LearnedEntry | StateBoundsEntry | LinearEntry | ActionBoxEntry | ActionPolytopeEntry


def _hard(violated: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """0/1 violation, NaN wherever a value the entry read is NaN."""
    out = violated.to(values.dtype)
    return torch.where(torch.isnan(values).any(-1), torch.nan, out)


def _cat_broadcast(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate on the last axis after broadcasting the leading axes."""
    lead = torch.broadcast_shapes(*[p.shape[:-1] for p in parts])
    return torch.cat([p.expand(*lead, p.shape[-1]) for p in parts], dim=-1)


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

    @classmethod
    def from_config(
        cls,
        entries: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any] | None],
        *,
        layout: StateLayout,
        action_dim: int,
        classifier: Classifier | None = None,
        action_bounds: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> ConstraintSet:
        """Build and validate a set from plain containers.

        entries:        a list of dicts with ``name`` and ``kind``, or a dict keyed by
                        name (a ``None`` value disables that entry)
        layout:         the task's state layout (names of state dimensions)
        action_dim:     A
        classifier:     needed by ``learned`` entries
        action_bounds:  the task's actuator range (low [A], high [A]); the default of
                        ``action_box`` and part of the action-feasibility check
        """
        if action_bounds is not None:
            lo, hi = (np.asarray(x, dtype=np.float64).reshape(-1) for x in action_bounds)
            if lo.shape != (action_dim,) or hi.shape != (action_dim,):
                raise ConfigError(
                    f"action_bounds have shapes {lo.shape}, {hi.shape}; expected ({action_dim},)"
                )
            action_bounds = (lo, hi)
        built = [
            _build_entry(raw, layout, action_dim, classifier, action_bounds)
            for raw in _as_entry_list(entries)
        ]
        names = [e.name for e in built]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"constraint entries {dupes} are defined more than once")
        out = cls(tuple(built), layout.dim, int(action_dim), action_bounds)
        out._check_actions_feasible()
        return out

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
        """The hard entries as inequalities (``learned`` entries are not linear: left out)."""
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

    def _check_actions_feasible(self) -> None:
        """All action entries together (and the actuator range) must leave some action."""
        rows = self.linear_rows()
        if np.any(rows.low > rows.high):
            i = int(np.argmax(rows.low > rows.high))
            raise ConfigError(
                f"no action satisfies both {rows.low_names[i]} and {rows.high_names[i]}"
            )
        if rows.G.shape[0] and not _lp_feasible(rows.G, rows.h, rows.low, rows.high):
            who = sorted({n.split("[")[0] for n in (*rows.action_names, *rows.low_names) if n})
            raise ConfigError(f"the action constraints {who} together admit no action")


# --------------------------------------------------------------------------- configuration


_FIELDS = {
    "learned": {"threshold", "alpha", "kappa", "dtype", "inputs"},
    "state_bounds": {"dims", "lower", "upper"},
    "linear": {"over", "dims", "A", "b"},
    "action_box": {"low", "high"},
    "action_polytope": {"A", "b"},
}


def _as_entry_list(
    entries: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any] | None],
) -> list[dict[str, Any]]:
    if isinstance(entries, Mapping):
        out = []
        for key, raw in entries.items():
            if raw is None:  # disabled from the command line
                continue
            if not isinstance(raw, Mapping):
                raise ConfigError(f"constraint entry {key!r} must be a mapping, got {raw!r}")
            if "name" in raw and raw["name"] != key:
                raise ConfigError(f"constraint entry {key!r} has a different name {raw['name']!r}")
            out.append({"name": key, **raw})
        return out
    if isinstance(entries, str) or not isinstance(entries, Sequence):
        raise ConfigError(f"constraint entries must be a list or a mapping, got {entries!r}")
    out = []
    for i, raw in enumerate(entries):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str) or not raw["name"]:
            raise ConfigError(f"constraint entry #{i} needs a mapping with a `name`, got {raw!r}")
        out.append(dict(raw))
    return out


def _build_entry(
    raw: dict[str, Any],
    layout: StateLayout,
    action_dim: int,
    classifier: Classifier | None,
    action_bounds: tuple[np.ndarray, np.ndarray] | None,
) -> Entry:
    name = raw["name"]

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"constraint entry {name!r}: {problem}")

    kind = raw.get("kind")
    if kind not in _FIELDS:
        raise fail(f"unknown kind {kind!r}; valid kinds: {list(KINDS)}")
    unknown = set(raw) - _FIELDS[kind] - {"name", "kind"}
    if unknown:
        raise fail(
            f"unknown field(s) {sorted(unknown)} for kind {kind!r}; valid: {sorted(_FIELDS[kind])}"
        )

    def index(dim: Any) -> int:
        if not isinstance(dim, str) or dim not in layout.names:
            raise fail(f"unknown state name {dim!r}; valid names: {list(layout.names)}")
        return layout.index(dim)

    def vector(key: str, n: int, fill: float | None = None) -> np.ndarray:
        """A float vector of length n; a scalar broadcasts, None means `fill`."""
        val = raw.get(key)
        if val is None:
            if fill is None:
                raise fail(f"missing field `{key}`")
            return np.full(n, fill)
        if np.isscalar(val):
            val = [val] * n
        vals = [fill if v is None else v for v in val]
        try:
            arr = np.asarray(vals, dtype=np.float64)
        except (TypeError, ValueError):
            raise fail(f"`{key}` must be numbers, got {val!r}") from None
        if arr.shape != (n,):
            raise fail(f"`{key}` has {arr.size} values, expected {n}")
        if np.isnan(arr).any():
            raise fail(f"`{key}` contains NaN")
        return arr

    def matrix(key: str, cols: int) -> np.ndarray:
        try:
            arr = np.asarray(raw.get(key), dtype=np.float64)
        except (TypeError, ValueError):
            raise fail(f"`{key}` must be a matrix of numbers, got {raw.get(key)!r}") from None
        if arr.ndim == 1 and arr.size == cols:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != cols:
            raise fail(f"`{key}` has shape {arr.shape}, expected [M, {cols}]")
        if not np.isfinite(arr).all():
            raise fail(f"`{key}` must be finite")
        return arr

    if kind == "learned":
        if classifier is None:
            raise fail("kind 'learned' needs a classifier, and none was given")
        if not isinstance(classifier, Classifier):
            raise fail(f"{type(classifier).__name__} lacks predict(states) and threshold")
        threshold, alpha = raw.get("threshold"), raw.get("alpha")
        if threshold is not None and alpha is not None:
            raise fail("give `alpha` (calibrated threshold) or a fixed `threshold`, not both")
        if threshold is not None and not 0.0 < float(threshold) < 1.0:
            raise fail(f"threshold {threshold} is outside (0, 1)")
        if alpha is not None and not 0.0 < float(alpha) < 1.0:
            raise fail(f"alpha {alpha} is outside (0, 1)")
        kappa = float(raw.get("kappa", 0.0))
        if not kappa >= 0.0:
            raise fail(f"kappa {kappa} must be >= 0")
        dtype = raw.get("dtype", "float32")
        if dtype not in ("float32", "bfloat16"):
            raise fail(f"dtype {dtype!r} must be 'float32' or 'bfloat16'")
        inputs = raw.get("inputs")
        if inputs is not None:  # read where the classifier is built; checked here
            if isinstance(inputs, str) or not isinstance(inputs, Sequence) or not inputs:
                raise fail(f"`inputs` must list at least one state name, got {inputs!r}")
            for d in inputs:
                index(d)
        return LearnedEntry(
            name,
            classifier,
            None if threshold is None else float(threshold),
            None if alpha is None else float(alpha),
            kappa,
            dtype,
        )

    if kind == "state_bounds":
        dims = raw.get("dims")
        if isinstance(dims, str):
            dims = [dims]
        if not dims:
            raise fail("`dims` must list at least one state name")
        idx = tuple(index(d) for d in dims)
        if "lower" not in raw and "upper" not in raw:
            raise fail("give `lower`, `upper` or both")
        lower = vector("lower", len(idx), -math.inf)
        upper = vector("upper", len(idx), math.inf)
        bad = np.flatnonzero(lower > upper)
        if bad.size:
            i = int(bad[0])
            raise fail(f"contradictory bounds on {dims[i]!r}: lower {lower[i]} > upper {upper[i]}")
        return StateBoundsEntry(name, tuple(dims), idx, lower, upper)

    if kind == "linear":
        over = raw.get("over", "state")
        if over not in ("state", "action", "both"):
            raise fail(f"`over` must be 'state', 'action' or 'both', got {over!r}")
        dims = raw.get("dims")
        if over == "action":
            if dims is not None:
                raise fail("`dims` names state columns; it makes no sense with over: action")
            idx: tuple[int, ...] = ()
        elif dims is None:
            idx = tuple(range(layout.dim))
        else:
            idx = tuple(index(d) for d in ([dims] if isinstance(dims, str) else dims))
        cols = len(idx) + (action_dim if over != "state" else 0)
        A = matrix("A", cols)
        b = vector("b", A.shape[0])
        if not np.isfinite(b).all():
            raise fail("`b` must be finite")
        if over == "state":
            lo = hi = None
        else:  # state columns free, action columns inside the actuator range
            lo = np.r_[np.full(len(idx), -np.inf), action_bounds[0]] if action_bounds else None
            hi = np.r_[np.full(len(idx), np.inf), action_bounds[1]] if action_bounds else None
        if not _lp_feasible(A, b, lo, hi):
            raise fail(f"empty polytope: no {over} satisfies A x <= b")
        return LinearEntry(name, over, idx, A, b)

    if kind == "action_box":
        if ("low" in raw) != ("high" in raw):
            raise fail("give both `low` and `high`, or neither (the actuator range)")
        if "low" not in raw:
            if action_bounds is None:
                raise fail("no `low`/`high` given and no actuator range (action_bounds) known")
            low, high = action_bounds
        else:
            low, high = vector("low", action_dim), vector("high", action_dim)
        bad = np.flatnonzero(low > high)
        if bad.size:
            i = int(bad[0])
            raise fail(f"contradictory bounds on a{i}: low {low[i]} > high {high[i]}")
        return ActionBoxEntry(
            name, np.array(low, dtype=np.float64), np.array(high, dtype=np.float64)
        )

    # action_polytope
    A = matrix("A", action_dim)
    b = vector("b", A.shape[0])
    if not np.isfinite(b).all():
        raise fail("`b` must be finite")
    if not _lp_feasible(A, b, None, None):
        raise fail("empty polytope: no action satisfies A a <= b")
    return ActionPolytopeEntry(name, A, b)


def _lp_feasible(
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
