"""Parsing the configured constraint entries: one parser per kind.

The entries come as plain containers (e.g. from ``OmegaConf.to_container``):
either a list of entry dicts, each with a ``name``, or a dict keyed by entry
name (the layout of ``configs/constraints/*.yaml``, which Hydra can override per
key: ``constraints.entries.speed.upper=[3.0]``, add:
``+constraints.entries.slow={kind:action_box,low:-0.5,high:0.5}``, remove:
``~constraints.entries.speed`` or set it to ``null``).

Each parser validates one entry and returns it ready to evaluate, or, for a
learned entry, a :class:`~constraints.entries.LearnedEntrySpec` that a classifier
backs later. A problem is a :class:`~constraints.sets.ConfigError` whose one-line
message names the entry, the field and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from constraints.entries import (
    ActionBoxEntry,
    ActionPolytopeEntry,
    HardEntry,
    LearnedEntrySpec,
    LinearEntry,
    StateBoundsEntry,
)
from constraints.sets import ConfigError, lp_feasible
from mbrm.tasks import StateLayout

ParsedEntry = LearnedEntrySpec | HardEntry
ActionBounds = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class RawEntry:
    """One configured entry and what its fields are checked against."""

    name: str
    fields: Mapping[str, Any]  # as configured, `name` and `kind` included
    layout: StateLayout
    action_dim: int
    action_bounds: ActionBounds | None  # the task's actuator range (low [A], high [A])

    def fail(self, problem: str) -> ConfigError:
        return ConfigError(f"constraint entry {self.name!r}: {problem}")

    def allow(self, *keys: str) -> None:
        """Refuse fields other than ``keys`` (besides ``name`` and ``kind``)."""
        unknown = set(self.fields) - set(keys) - {"name", "kind"}
        if unknown:
            raise self.fail(
                f"unknown field(s) {sorted(unknown)} for kind {self.fields['kind']!r}; "
                f"valid: {sorted(keys)}"
            )

    def index(self, dim: Any) -> int:
        """The state column of a state name."""
        if not isinstance(dim, str) or dim not in self.layout.names:
            raise self.fail(f"unknown state name {dim!r}; valid names: {list(self.layout.names)}")
        return self.layout.index(dim)

    def vector(self, key: str, n: int, fill: float | None = None) -> np.ndarray:
        """A float vector [n]; a scalar broadcasts, None (or a None item) means ``fill``."""
        val = self.fields.get(key)
        if val is None:
            if fill is None:
                raise self.fail(f"missing field `{key}`")
            return np.full(n, fill)
        if np.isscalar(val):
            val = [val] * n
        vals = [fill if v is None else v for v in val]
        try:
            arr = np.asarray(vals, dtype=np.float64)
        except (TypeError, ValueError):
            raise self.fail(f"`{key}` must be numbers, got {val!r}") from None
        if arr.shape != (n,):
            raise self.fail(f"`{key}` has {arr.size} values, expected {n}")
        if np.isnan(arr).any():
            raise self.fail(f"`{key}` contains NaN")
        return arr

    def matrix(self, key: str, cols: int) -> np.ndarray:
        """A finite float matrix [M, cols] with M >= 1; one row may be given flat."""
        val = self.fields.get(key)
        try:
            arr = np.asarray(val, dtype=np.float64)
        except (TypeError, ValueError):
            raise self.fail(f"`{key}` must be a matrix of numbers, got {val!r}") from None
        if arr.ndim == 1 and arr.size == cols:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != cols:
            raise self.fail(f"`{key}` has shape {arr.shape}, expected [M, {cols}]")
        if not np.isfinite(arr).all():
            raise self.fail(f"`{key}` must be finite")
        return arr

    def inequalities(self, cols: int) -> tuple[np.ndarray, np.ndarray]:
        """``A`` [M, cols] and a finite ``b`` [M]."""
        A = self.matrix("A", cols)
        b = self.vector("b", A.shape[0])
        if not np.isfinite(b).all():
            raise self.fail("`b` must be finite")
        return A, b


# --------------------------------------------------------------------------- one parser per kind


def parse_learned(e: RawEntry) -> LearnedEntrySpec:
    """The side-constraint classifier, with a calibrated (``alpha``) or fixed ``threshold``."""
    e.allow("threshold", "alpha", "pessimism", "dtype", "inputs")
    threshold, alpha = e.fields.get("threshold"), e.fields.get("alpha")
    if threshold is not None and alpha is not None:
        raise e.fail("give `alpha` (calibrated threshold) or a fixed `threshold`, not both")
    if threshold is not None and not 0.0 < float(threshold) < 1.0:
        raise e.fail(f"threshold {threshold} is outside (0, 1)")
    if alpha is not None and not 0.0 < float(alpha) < 1.0:
        raise e.fail(f"alpha {alpha} is outside (0, 1)")
    pessimism = float(e.fields.get("pessimism", 0.0))
    if not pessimism >= 0.0:
        raise e.fail(f"pessimism {pessimism} must be >= 0")
    dtype = e.fields.get("dtype", "float32")
    if dtype not in ("float32", "bfloat16"):
        raise e.fail(f"dtype {dtype!r} must be 'float32' or 'bfloat16'")
    inputs = e.fields.get("inputs")
    if inputs is not None:
        if isinstance(inputs, str) or not isinstance(inputs, Sequence) or not inputs:
            raise e.fail(f"`inputs` must list at least one state name, got {inputs!r}")
        for d in inputs:
            e.index(d)
    return LearnedEntrySpec(
        e.name,
        None if threshold is None else float(threshold),
        None if alpha is None else float(alpha),
        pessimism,
        dtype,
        None if inputs is None else tuple(inputs),
    )


def parse_state_bounds(e: RawEntry) -> StateBoundsEntry:
    """``lower <= s'[dims] <= upper``; a missing side is unbounded."""
    e.allow("dims", "lower", "upper")
    dims = e.fields.get("dims")
    if isinstance(dims, str):
        dims = [dims]
    if not dims:
        raise e.fail("`dims` must list at least one state name")
    idx = tuple(e.index(d) for d in dims)
    if "lower" not in e.fields and "upper" not in e.fields:
        raise e.fail("give `lower`, `upper` or both")
    lower = e.vector("lower", len(idx), -math.inf)
    upper = e.vector("upper", len(idx), math.inf)
    bad = np.flatnonzero(lower > upper)
    if bad.size:
        i = int(bad[0])
        raise e.fail(f"contradictory bounds on {dims[i]!r}: lower {lower[i]} > upper {upper[i]}")
    return StateBoundsEntry(e.name, tuple(dims), idx, lower, upper)


def parse_linear(e: RawEntry) -> LinearEntry:
    """``A x <= b`` over ``over`` = state (``dims``, default all), action, or both."""
    e.allow("over", "dims", "A", "b")
    over = e.fields.get("over", "state")
    if over not in ("state", "action", "both"):
        raise e.fail(f"`over` must be 'state', 'action' or 'both', got {over!r}")
    dims = e.fields.get("dims")
    if over == "action":
        if dims is not None:
            raise e.fail("`dims` names state columns; it makes no sense with over: action")
        idx: tuple[int, ...] = ()
    elif dims is None:
        idx = tuple(range(e.layout.dim))
    else:
        idx = tuple(e.index(d) for d in ([dims] if isinstance(dims, str) else dims))
    A, b = e.inequalities(len(idx) + (e.action_dim if over != "state" else 0))
    if over == "state" or e.action_bounds is None:
        lo = hi = None
    else:  # state columns free, action columns inside the actuator range
        lo = np.r_[np.full(len(idx), -np.inf), e.action_bounds[0]]
        hi = np.r_[np.full(len(idx), np.inf), e.action_bounds[1]]
    if not lp_feasible(A, b, lo, hi):
        raise e.fail(f"empty polytope: no {over} satisfies A x <= b")
    return LinearEntry(e.name, over, idx, A, b)


def parse_action_box(e: RawEntry) -> ActionBoxEntry:
    """``low <= a <= high``; without either, the task's actuator range."""
    e.allow("low", "high")
    if ("low" in e.fields) != ("high" in e.fields):
        raise e.fail("give both `low` and `high`, or neither (the actuator range)")
    if "low" not in e.fields:
        if e.action_bounds is None:
            raise e.fail("no `low`/`high` given and no actuator range (action_bounds) known")
        low, high = e.action_bounds
    else:
        low, high = e.vector("low", e.action_dim), e.vector("high", e.action_dim)
    bad = np.flatnonzero(low > high)
    if bad.size:
        i = int(bad[0])
        raise e.fail(f"contradictory bounds on a{i}: low {low[i]} > high {high[i]}")
    return ActionBoxEntry(e.name, np.array(low, dtype=np.float64), np.array(high, dtype=np.float64))


def parse_action_polytope(e: RawEntry) -> ActionPolytopeEntry:
    """``A a <= b``."""
    e.allow("A", "b")
    A, b = e.inequalities(e.action_dim)
    if not lp_feasible(A, b, None, None):
        raise e.fail("empty polytope: no action satisfies A a <= b")
    return ActionPolytopeEntry(e.name, A, b)


PARSERS: dict[str, Callable[[RawEntry], ParsedEntry]] = {
    "learned": parse_learned,
    "state_bounds": parse_state_bounds,
    "linear": parse_linear,
    "action_box": parse_action_box,
    "action_polytope": parse_action_polytope,
}
KINDS = tuple(PARSERS)


# --------------------------------------------------------------------------- the whole list


def parse_entries(
    entries: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any] | None],
    *,
    layout: StateLayout,
    action_dim: int,
    action_bounds: ActionBounds | None,
) -> tuple[ParsedEntry, ...]:
    """Every configured entry, parsed and validated, in the configured order."""
    out = []
    for fields in as_entry_list(entries):
        e = RawEntry(fields["name"], fields, layout, int(action_dim), action_bounds)
        kind = fields.get("kind")
        if kind not in PARSERS:
            raise e.fail(f"unknown kind {kind!r}; valid kinds: {list(KINDS)}")
        out.append(PARSERS[kind](e))
    return tuple(out)


def parse_action_bounds(
    action_bounds: tuple[Any, Any] | None, action_dim: int
) -> ActionBounds | None:
    """The actuator range as float64 vectors (low [A], high [A])."""
    if action_bounds is None:
        return None
    lo, hi = (np.asarray(x, dtype=np.float64).reshape(-1) for x in action_bounds)
    if lo.shape != (action_dim,) or hi.shape != (action_dim,):
        raise ConfigError(
            f"action_bounds have shapes {lo.shape}, {hi.shape}; expected ({action_dim},)"
        )
    return lo, hi


def as_entry_list(
    entries: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any] | None],
) -> list[dict[str, Any]]:
    """The entries as a list of dicts with a ``name``; ``None`` values of a mapping dropped."""
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
