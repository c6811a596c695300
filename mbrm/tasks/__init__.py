"""Task registry: gymnasium MuJoCo environments with a hidden objective.

One module per task holds its named physics quantities, its hidden
``true_reward`` and ``unacceptable`` rules and its :class:`Task`; the shared
parts are :mod:`mbrm.tasks.base` (the task: environments, rendering),
:mod:`mbrm.tasks.layout` (the state layout, derived from the MuJoCo model),
:mod:`mbrm.tasks.envs` (the gymnasium environments) and :mod:`mbrm.tasks.physics`
(quantities shared by several tasks). Importing this package registers the
built-in tasks with mbrm and with gymnasium (``mbrm/ReacherKeepout-v0``, ...);
a user adds one with :func:`register_task` or a YAML file
(:func:`load_task_file`).
"""

from __future__ import annotations

from mbrm.tasks import half_cheetah_safe, hopper_safe, inverted_pendulum, reacher_keepout
from mbrm.tasks.base import Task, gym_id_of
from mbrm.tasks.envs import FullState, MujocoXmlEnv
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
from mbrm.tasks.layout import StateLayout, derive_layout
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
from mbrm.tasks.registry import (
    TASKS,
    TaskDefinitionError,
    get_task,
    import_task_module,
    register_task,
)
from mbrm.tasks.task_file import TaskFileError, load_task_file

for _module in (inverted_pendulum, reacher_keepout, half_cheetah_safe, hopper_safe):
    register_task(_module.TASK)


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
    "FullState",
    "MujocoXmlEnv",
    "StateLayout",
    "Task",
    "TaskDefinitionError",
    "TaskFileError",
    "cart_position",
    "derive_layout",
    "fingertip_position",
    "forward_velocity",
    "get_task",
    "gym_id_of",
    "import_task_module",
    "load_task_file",
    "pole_angle",
    "reacher_target_position",
    "register_task",
    "torso_angle",
    "torso_height",
]
