"""Segments: the unit of behaviour a teacher gives feedback on.

A segment is a short piece of a trajectory, ``states [T+1, S]`` and
``actions [T, A]``, with where it came from (Leike et al. 2018, Sec. 5.2:
feedback on real behaviour, on imagined rollouts of a learned model, or on
synthesised hypotheticals made to be informative).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np


class SegmentSource(str, Enum):
    """Where a segment's states came from."""

    REAL = "real"  # the replay buffer: the agent was there
    IMAGINED = "imagined"  # a world-model rollout of a candidate plan
    SYNTHESISED = "synthesised"  # optimised to be informative (ReQueST-style)


class Preference(str, Enum):
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
