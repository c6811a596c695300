"""Segments: the unit of behaviour a teacher gives feedback on.

A segment is a short piece of a trajectory, ``states [T+1, S]`` and
``actions [T, A]``, with where it came from (Leike et al. 2018, Sec. 5.2:
feedback on real behaviour, on imagined rollouts of a learned model, or on
synthesised hypotheticals made to be informative).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np


class SegmentSource(StrEnum):
    """Where a segment's states came from."""

    REAL = "real"  # the replay buffer: the agent was there
    IMAGINED = "imagined"  # a world-model rollout of a candidate plan
    SYNTHESISED = "synthesised"  # optimised to be informative (ReQueST-style)


class Preference(StrEnum):
    """Answer to a pairwise query over (left, right)."""

    LEFT = "left"
    RIGHT = "right"
    EQUAL = "equal"
    CANNOT_TELL = "cannot_tell"

    @property
    def target(self) -> float | None:
        """Bradley-Terry target P(left > right); None for 'cannot tell' (excluded)."""
        return {"left": 1.0, "right": 0.0, "equal": 0.5, "cannot_tell": None}[self.value]


@dataclass(frozen=True, eq=False)
class Segment:
    """states [T+1, S], actions [T, A] (float64), a source, and free-form metadata."""

    states: np.ndarray
    actions: np.ndarray
    source: SegmentSource = SegmentSource.REAL
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = np.asarray(self.states, dtype=np.float64)
        a = np.asarray(self.actions, dtype=np.float64)
        if s.ndim != 2 or a.ndim != 2:
            raise ValueError(
                f"segment needs states [T+1, S] and actions [T, A]; got {s.shape} and {a.shape}"
            )
        if s.shape[0] != a.shape[0] + 1:
            raise ValueError(
                f"segment has {s.shape[0]} states for {a.shape[0]} actions; expected T+1 states"
            )
        if a.shape[0] < 1:
            raise ValueError("segment must have at least one action")
        object.__setattr__(self, "states", s)
        object.__setattr__(self, "actions", a)
        object.__setattr__(self, "source", SegmentSource(self.source))

    @property
    def length(self) -> int:
        """T, the number of transitions."""
        return self.actions.shape[0]


class FeedbackKind(StrEnum):
    """What a query asks (Leike et al. 2018, Sec. 5.2 and 5.6)."""

    PREFERENCE = "preference"  # which of two segments is better: a Preference
    UNACCEPTABLE = "unacceptable"  # which states of one segment are unacceptable


@dataclass(frozen=True, eq=False)
class UnacceptableLabel:
    """Per-state answer to "is this state unacceptable?" for one segment.

    ``flags [T+1]`` is True where a state is unacceptable. ``known [T+1]`` is True
    where the teacher actually judged the state: a teacher who only marks the
    *first* unacceptable step says nothing about the states after it (the agent
    may recover or not), so those states are unknown rather than acceptable and
    must not become negative training examples for the classifier.
    """

    flags: np.ndarray  # [T+1] bool
    known: np.ndarray | None = None  # [T+1] bool; None means every state was judged

    def __post_init__(self) -> None:
        flags = _as_bool_vector(self.flags, "flags")
        known = np.ones_like(flags) if self.known is None else _as_bool_vector(self.known, "known")
        if known.shape != flags.shape:
            raise ValueError(
                f"unacceptable label has {flags.shape[0]} flags but {known.shape[0]} known marks"
            )
        if np.any(flags & ~known):
            raise ValueError("unacceptable label flags a state it marks as not judged")
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "known", known)

    @classmethod
    def from_first_step(cls, step: int | None, n_states: int) -> UnacceptableLabel:
        """States before ``step`` acceptable, ``step`` unacceptable, later states unknown.

        ``step=None`` means the teacher saw no unacceptable state in the segment.
        """
        if n_states < 1:
            raise ValueError(f"a segment has at least one state; got n_states={n_states}")
        flags = np.zeros(n_states, dtype=bool)
        known = np.ones(n_states, dtype=bool)
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, int | np.integer):
                raise TypeError(f"first unacceptable step must be an int or None; got {step!r}")
            if not 0 <= step < n_states:
                raise ValueError(
                    f"first unacceptable step {step} is outside the segment's states "
                    f"0..{n_states - 1}"
                )
            flags[step] = True
            known[step + 1 :] = False
        return cls(flags, known)

    @property
    def n_states(self) -> int:
        """T+1, the number of states the label covers."""
        return int(self.flags.shape[0])

    @property
    def first_step(self) -> int | None:
        """Index of the first state flagged unacceptable, or None."""
        hits = np.flatnonzero(self.flags)
        return int(hits[0]) if hits.size else None


def _as_bool_vector(x: Any, name: str) -> np.ndarray:
    """A 1-D bool array; integer 0/1 is accepted, anything else is an error, not a cast."""
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"unacceptable label {name} must be 1-D [T+1]; got shape {a.shape}")
    if a.dtype != np.bool_:
        if a.size and not (np.issubdtype(a.dtype, np.integer) and np.isin(a, (0, 1)).all()):
            raise ValueError(
                f"unacceptable label {name} must be bool (or 0/1); got dtype {a.dtype}"
            )
        a = a.astype(bool)
    return a.copy()


@dataclass(frozen=True)
class Labeller:
    """Who gave a label: a synthetic teacher with its parameters, or a named person."""

    kind: str  # "teacher" or "person"
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("teacher", "person"):
            raise ValueError(f"labeller kind must be 'teacher' or 'person'; got {self.kind!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"labeller needs a non-empty name; got {self.name!r}")
        if self.kind == "person" and self.params:
            raise ValueError("a person labeller has no parameters")
        object.__setattr__(self, "params", dict(self.params))

    @classmethod
    def teacher(cls, name: str, **params: Any) -> Labeller:
        """A synthetic teacher, e.g. ``Labeller.teacher("bpref", beta=1.0, gamma=0.9)``."""
        return cls("teacher", name, params)

    @classmethod
    def person(cls, name: str) -> Labeller:
        """A person, identified by the name they label under."""
        return cls("person", name)

    @property
    def key(self) -> str:
        """``kind:name``, the key used to count labels by who gave them."""
        return f"{self.kind}:{self.name}"
