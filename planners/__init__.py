"""Planners over imagined futures: constraint-aware CEM / iCEM and continuous-action MCTS.

Each planner is built from its settings and the task's action box::

    planner = make_planner(CEMSettings(horizon=12, population=100), low, high)

``PLANNERS`` maps a config's ``planner.kind`` to its settings class and planner.
Imports torch, numpy and the standard library only, never ``mbrm`` or ``constraints``.
"""

from collections.abc import Callable

import torch
from numpy.typing import ArrayLike

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
from planners.settings import CEMSettings, MCTSSettings, PlannerSettings

PLANNERS: dict[str, tuple[type[PlannerSettings], Callable[..., Planner]]] = {
    "cem": (CEMSettings, CEMPlanner),
    "mcts": (MCTSSettings, MCTSPlanner),
}


def make_planner(
    settings: PlannerSettings,
    action_low: ArrayLike,
    action_high: ArrayLike,
    device: torch.device | str = "cpu",
) -> Planner:
    """The planner ``settings.kind`` names, over the box ``[action_low, action_high]``,
    planning on ``device``."""
    if not isinstance(settings, PlannerSettings):
        raise TypeError(f"make_planner needs planner settings, got {type(settings).__name__}")
    settings_type, build = PLANNERS[settings.kind]
    if not isinstance(settings, settings_type):
        raise TypeError(
            f"planner.kind {settings.kind!r} needs {settings_type.__name__}, "
            f"got {type(settings).__name__}"
        )
    return build(settings, action_low, action_high, device)


__all__ = [
    "PLANNERS",
    "CEMPlanner",
    "CEMSettings",
    "CandidateScores",
    "Imagination",
    "ImaginedBatch",
    "MCTSPlanner",
    "MCTSSettings",
    "PlanResult",
    "Planner",
    "PlannerSettings",
    "coloured_noise",
    "make_planner",
    "rank",
    "score_candidates",
    "truncated_normal",
    "warm_start",
]
