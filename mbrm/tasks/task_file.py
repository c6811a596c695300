"""A task defined in a YAML file, outside mbrm: ``load_task_file(path)``.

The file names the environment and points at the hidden rules in Python::

    name: walker_speed                        # registry name; gymnasium id mbrm/WalkerSpeed-v0
    env: Walker2d-v5                          # a gymnasium MuJoCo id (or `xml:` alone)
    episode_length: 1000                      # default: the gymnasium env's own
    reward: walker_speed:true_reward          # (s, a, s_next, dt) -> [...], batched numpy
    unacceptable: walker_speed:unacceptable   # (s) -> bool [...], batched numpy

Optional keys: ``xml`` (a MuJoCo XML file; with ``env``, that env's class on this
model; alone, a bare model in :class:`~mbrm.tasks.envs.MujocoXmlEnv`), ``env_kwargs``
(keyword arguments of the env), ``excluded_inputs`` (state names the networks do not
read, instead of the derived unbounded root positions), ``reset`` (a function of the
env, called after every reset), ``description`` and ``unacceptable_description``
(shown to a person labelling). Functions are ``module:function`` paths; a module is
looked up next to the file first, then on ``sys.path``. Relative paths are relative
to the file. Every problem is a :class:`TaskFileError` naming the file and the key.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import yaml

from mbrm.tasks.base import Task
from mbrm.tasks.envs import base_class
from mbrm.tasks.registry import TaskDefinitionError, register_task

# key -> (required, what it holds)
KEYS: dict[str, tuple[bool, str]] = {
    "name": (True, "the task's registry name"),
    "env": (False, "a gymnasium MuJoCo id, e.g. Walker2d-v5"),
    "xml": (False, "a MuJoCo XML file"),
    "episode_length": (False, "steps per episode"),
    "reward": (True, "module:function of (s, a, s_next, dt)"),
    "unacceptable": (True, "module:function of (s)"),
    "env_kwargs": (False, "keyword arguments of the env"),
    "excluded_inputs": (False, "state names that are not network inputs"),
    "reset": (False, "module:function of the env, after every reset"),
    "description": (False, "what the task asks for"),
    "unacceptable_description": (False, "what an unacceptable outcome is"),
}
_LOADED: dict[Path, Task] = {}


class TaskFileError(TaskDefinitionError):
    """A malformed task file (the message names the file and the key)."""


def load_task_file(path: str | Path) -> Task:
    """Read, check and register the task of a YAML task file; returns the task.

    Loading the same file again returns the task registered the first time.
    """
    file = Path(path).expanduser().resolve()
    if file in _LOADED:
        return _LOADED[file]
    if not file.is_file():
        raise TaskFileError(f"task file {path} does not exist")
    try:
        spec = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        raise TaskFileError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    task = _task(spec, file, str(path))
    try:
        task.layout  # noqa: B018 - builds the model once: a bad XML or state name fails here
        register_task(task)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise TaskFileError(f"{path}: {str(msg).splitlines()[0]}") from None
    _LOADED[file] = task
    return task


def _task(spec: Any, file: Path, shown: str) -> Task:
    if not isinstance(spec, dict):
        raise TaskFileError(f"{shown}: a task file is a mapping of keys ({', '.join(KEYS)})")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise TaskFileError(f"{shown}: unknown key {unknown[0]!r}; valid keys: {', '.join(KEYS)}")
    missing = [k for k, (required, _) in KEYS.items() if required and k not in spec]
    if missing:
        raise TaskFileError(f"{shown}: missing key {missing[0]!r} ({KEYS[missing[0]][1]})")

    def text(key: str, default: str | None = None) -> str | None:
        value = spec.get(key, default)
        if value is not None and not isinstance(value, str):
            raise TaskFileError(f"{shown}: {key} must be a string, got {value!r}")
        return value

    env_id, xml = text("env"), text("xml")
    if env_id is None and xml is None:
        raise TaskFileError(f"{shown}: give env (a gymnasium id) or xml (a MuJoCo XML file)")
    if env_id is not None:
        try:
            base_class(env_id)
        except (gym.error.Error, ValueError) as e:
            raise TaskFileError(f"{shown}: env: {str(e).splitlines()[0]}") from None
    if xml is not None:
        xml_path = (file.parent / xml).resolve()
        if not xml_path.is_file():
            raise TaskFileError(f"{shown}: xml: {xml_path} does not exist")
        xml = str(xml_path)
    length = spec.get("episode_length")
    if length is None and env_id is not None:
        length = gym.spec(env_id).max_episode_steps
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise TaskFileError(f"{shown}: episode_length must be an integer >= 1, got {length!r}")
    env_kwargs = spec.get("env_kwargs") or {}
    if not isinstance(env_kwargs, dict):
        raise TaskFileError(f"{shown}: env_kwargs must be a mapping, got {env_kwargs!r}")
    excluded = spec.get("excluded_inputs")
    if excluded is not None and not (
        isinstance(excluded, list) and all(isinstance(n, str) for n in excluded)
    ):
        raise TaskFileError(f"{shown}: excluded_inputs must be a list of state names")
    reset = spec.get("reset")
    return Task(
        name=text("name") or "",
        env_id=env_id,
        description=text("description", "") or "",
        unacceptable_description=text("unacceptable_description", "") or "",
        episode_length=length,
        reward_fn=resolve(spec["reward"], file.parent, f"{shown}: reward", arity=4),
        unacceptable_fn=resolve(spec["unacceptable"], file.parent, f"{shown}: unacceptable"),
        env_kwargs=env_kwargs,
        excluded_inputs=None if excluded is None else tuple(excluded),
        reset_fn=None if reset is None else resolve(reset, file.parent, f"{shown}: reset"),
        xml=xml,
    )


def resolve(path: Any, where: Path, what: str, arity: int = 1) -> Callable[..., Any]:
    """The function a ``module:function`` path names, looked up next to ``where`` first;
    it must accept ``arity`` positional arguments."""
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise TaskFileError(f"{what}: {path!r} is not a path of the form module:function")
    module_name, attr = path.split(":")
    sys.path.insert(0, str(where))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise TaskFileError(f"{what}: cannot import {module_name!r} ({e})") from None
    finally:
        sys.path.remove(str(where))
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise TaskFileError(f"{what}: module {module_name!r} has no {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise TaskFileError(f"{what}: {path} is not a function")
    try:
        inspect.signature(fn).bind(*range(arity))
    except TypeError:
        raise TaskFileError(f"{what}: {path} must take {arity} positional argument(s)") from None
    except ValueError:  # no signature to read (a builtin): trust it
        pass
    return fn
