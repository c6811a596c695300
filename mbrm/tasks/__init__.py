"""Task registry: gymnasium MuJoCo environments with a hidden objective.

One module per task holds its named physics quantities, its hidden
``true_reward`` and ``unacceptable`` rules and its :class:`Task`; the shared
parts (state layout, the agent's environment, rendering) are in
:mod:`mbrm.tasks.base`, and quantities shared by several tasks in
:mod:`mbrm.tasks.physics`. See :mod:`mbrm.tasks.base` for what a task exposes.
"""

from __future__ import annotations

from mbrm.tasks import half_cheetah_safe, hopper_safe, inverted_pendulum, reacher_keepout
from mbrm.tasks.base import AgentEnv, StateLayout, Task
from mbrm.tasks.half_cheetah_safe import CHEETAH_FLIP_ANGLE, CHEETAH_SPEED_LIMIT
from mbrm.tasks.hopper_safe import (
    HOPPER_ANGLE_MAX,
    HOPPER_SPEED_LIMIT,
    HOPPER_STATE_MAX,
    HOPPER_Z_MIN,
)
from mbrm.tasks.inverted_pendulum import (
    PENDULUM_MAX_ANGLE,
    PENDULUM_RAIL_LIMIT,
    cart_position,
    pole_angle,
)
from mbrm.tasks.physics import forward_velocity, torso_angle, torso_height
from mbrm.tasks.reacher_keepout import (
    KEEPOUT_CENTER,
    KEEPOUT_RADIUS,
    KEEPOUT_TARGET_MARGIN,
    REACHER_DERIVED,
    REACHER_LINK0,
    REACHER_LINK1,
    REACHER_POSE,
    REACHER_POSE_AND_TARGET,
    fingertip_position,
    reacher_target_position,
)

TASKS: dict[str, Task] = {
    m.TASK.name: m.TASK
    for m in (inverted_pendulum, reacher_keepout, half_cheetah_safe, hopper_safe)
}


def get_task(name: str) -> Task:
    """Look a task up by name, with an error that lists the registered tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}") from None


__all__ = [
    "CHEETAH_FLIP_ANGLE",
    "CHEETAH_SPEED_LIMIT",
    "HOPPER_ANGLE_MAX",
    "HOPPER_SPEED_LIMIT",
    "HOPPER_STATE_MAX",
    "HOPPER_Z_MIN",
    "KEEPOUT_CENTER",
    "KEEPOUT_RADIUS",
    "KEEPOUT_TARGET_MARGIN",
    "PENDULUM_MAX_ANGLE",
    "PENDULUM_RAIL_LIMIT",
    "REACHER_DERIVED",
    "REACHER_LINK0",
    "REACHER_LINK1",
    "REACHER_POSE",
    "REACHER_POSE_AND_TARGET",
    "TASKS",
    "AgentEnv",
    "StateLayout",
    "Task",
    "cart_position",
    "fingertip_position",
    "forward_velocity",
    "get_task",
    "pole_angle",
    "reacher_target_position",
    "torso_angle",
    "torso_height",
]
