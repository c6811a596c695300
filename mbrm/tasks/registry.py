"""The task registry: mbrm's names and gymnasium's ids, kept in step.

:func:`register_task` adds a :class:`~mbrm.tasks.base.Task` under its name and
registers its environment with gymnasium as ``task.gym_id`` (``mbrm/...-v0``,
``max_episode_steps`` = the task's episode length), so
``gymnasium.make("mbrm/ReacherKeepout-v0")`` builds the same env as
``task.make_env``. The built-in tasks register on ``import mbrm.tasks``; a user's
package calls :func:`register_task` on import, a YAML task file goes through
:func:`mbrm.tasks.load_task_file`.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import gymnasium as gym

from mbrm.tasks.base import Task

TASKS: dict[str, Task] = {}

# gymnasium loads the entry point by name when an env is made (no import cycle)
ENTRY_POINT = "mbrm.tasks.registry:make_task_env"
_NAME = re.compile(r"[a-z][a-z0-9_]*")


class TaskDefinitionError(ValueError):
    """A task that cannot be registered or loaded (the message names the problem)."""


def register_task(task: Task) -> Task:
    """Register ``task`` with mbrm and with gymnasium; returns it.

    Idempotent for the same task object; a different task under a registered name is
    refused.
    """
    if not isinstance(task, Task):
        raise TaskDefinitionError(f"register_task expects a Task, got {type(task).__name__}")
    if not _NAME.fullmatch(task.name):
        raise TaskDefinitionError(
            f"task name {task.name!r} must be lower case letters, digits and '_', "
            "starting with a letter"
        )
    if task.env_id is None and task.xml is None:
        raise TaskDefinitionError(f"task {task.name!r} needs an env id or a MuJoCo XML file")
    if not (isinstance(task.episode_length, int) and task.episode_length >= 1):
        raise TaskDefinitionError(
            f"task {task.name!r}: episode_length must be an integer >= 1, "
            f"got {task.episode_length!r}"
        )
    current = TASKS.get(task.name)
    if current is not None and current is not task:
        raise TaskDefinitionError(f"a different task named {task.name!r} is already registered")
    spec = gym.registry.get(task.gym_id)
    if spec is not None and spec.entry_point != ENTRY_POINT:
        raise TaskDefinitionError(f"gymnasium id {task.gym_id} is taken by {spec.entry_point}")
    TASKS[task.name] = task
    if spec is None:
        gym.register(
            task.gym_id,
            entry_point=ENTRY_POINT,
            max_episode_steps=task.episode_length,
            kwargs={"task": task.name},
        )
    return task


def get_task(name: str) -> Task:
    """Look a task up by name, with an error that lists the registered tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}") from None


def make_task_env(task: str, **kwargs: Any) -> gym.Env:
    """gymnasium's entry point of every task: ``kwargs`` go to the env class."""
    return get_task(task).build_env(**kwargs)


def import_task_module(module: str) -> None:
    """Import a module that registers tasks (a user's package), with a one-line error."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise TaskDefinitionError(f"cannot import task module {module!r}: {e}") from None
