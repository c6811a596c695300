"""Planners over imagined futures: constraint-aware CEM / iCEM and continuous-action MCTS.

Imports torch and numpy only, never ``mbrm`` or ``constraints``.
"""

from planners.base import (
    CandidateScores,
    Imagination,
    ImaginedBatch,
    Planner,
    PlanResult,
    rank,
    score_candidates,
    warm_start,
)
from planners.cem import CEMPlanner, coloured_noise, truncated_normal
from planners.mcts import MCTSPlanner

__all__ = [
    "CEMPlanner",
    "CandidateScores",
    "Imagination",
    "ImaginedBatch",
    "MCTSPlanner",
    "PlanResult",
    "Planner",
    "coloured_noise",
    "rank",
    "score_candidates",
    "truncated_normal",
    "warm_start",
]
