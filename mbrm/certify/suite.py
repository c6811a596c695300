"""A held-out test suite: scenarios a finished agent is certified on.

Leike et al. 2018, Sec. 6 ("safety certificates, artifacts that serve as evidence to
convince a third party to trust our system ... a score on a secret test suite held by a
third party"). A suite is a YAML file; each scenario changes the task's episodes in ways
the agent never trained on:

.. code-block:: yaml

    task: reacher_keepout        # must be the run's task
    seed: 0                      # every draw of the suite derives from it
    episodes: 20                 # per scenario, unless the scenario says otherwise
    scenarios:
      nominal: {}                # the task as trained, on unseen environment seeds
      wide_start:
        start:
          noise: 0.05            # uniform +-0.05 on every qpos and qvel after the reset
          set:                   # then these dimensions: a value, or [low, high] uniform
            qpos.target_x: [-0.2, 0.2]
      shove:
        push: {body: body1, force: [0, 0, 0], torque: [0, 0, 0.05], at: [10, 30], duration: 3}
      shaky_motors:
        actuator_noise: 0.2      # Gaussian std added to every action in [-1, 1], clipped
      long:
        episode_length: 100

Anything unknown (a field, a state dimension, a body) is a :class:`SuiteError` naming the
scenario and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mujoco
import yaml

from mbrm.tasks import Task

SUITE_FIELDS = ("task", "seed", "episodes", "scenarios", "description")
SCENARIO_FIELDS = ("episodes", "episode_length", "start", "push", "actuator_noise", "description")
START_FIELDS = ("noise", "set")
PUSH_FIELDS = ("body", "force", "torque", "at", "duration")
MAX_EPISODES = 10_000


class SuiteError(ValueError):
    """A suite file that cannot be run (the message names the scenario and the field)."""


@dataclass(frozen=True)
class Push:
    """An external force and torque (world frame, N and N m) on ``body`` for ``duration``
    steps from each step in ``at`` (MuJoCo's ``xfrc_applied``)."""

    body: str
    force: tuple[float, float, float]
    torque: tuple[float, float, float]
    at: tuple[int, ...]
    duration: int

    def active(self, step: int) -> bool:
        """Is the push applied while the environment takes step ``step`` (0-based)?"""
        return any(t <= step < t + self.duration for t in self.at)


@dataclass(frozen=True)
class Scenario:
    """One scenario of a suite.

    episodes:        how many episodes it runs
    episode_length:  steps per episode (None: the run's own)
    start_noise:     uniform +- this on every state dimension after the reset
    start_set:       state dimension -> (low, high), drawn uniformly (low == high: fixed)
    push:            an applied force, or None
    actuator_noise:  Gaussian std added to the agent's actions (clipped to [-1, 1])
    """

    name: str
    episodes: int
    episode_length: int | None = None
    start_noise: float = 0.0
    start_set: tuple[tuple[str, float, float], ...] = ()
    push: Push | None = None
    actuator_noise: float = 0.0
    description: str = ""


@dataclass(frozen=True)
class Suite:
    """A parsed, checked suite: its task, seed and scenarios in file order."""

    task: str
    seed: int
    scenarios: tuple[Scenario, ...]
    description: str = ""
    path: Path | None = field(default=None, compare=False)


def load_suite(path: str | Path, task: Task) -> Suite:
    """Read and check the suite at ``path`` against ``task`` (the run's task)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SuiteError(f"suite file not found: {path}") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise SuiteError(f"suite {path}: not valid YAML{where}") from None
    return parse_suite(raw, task, path)


def parse_suite(raw: Any, task: Task, path: Path | None = None) -> Suite:
    """Check a suite already read from YAML; see the module docstring for its fields."""
    where = f"suite {path}" if path is not None else "suite"
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: expected a mapping with fields {list(SUITE_FIELDS)}")
    _known(raw, SUITE_FIELDS, where)
    if raw.get("task") != task.name:
        raise SuiteError(
            f"{where}: task {raw.get('task')!r} does not match the run's task {task.name!r}"
        )
    seed = _integer(raw.get("seed", 0), f"{where}: seed", low=0)
    default_episodes = _integer(raw.get("episodes", 20), f"{where}: episodes", 1, MAX_EPISODES)
    scenarios = raw.get("scenarios")
    if not isinstance(scenarios, dict) or not scenarios:
        raise SuiteError(f"{where}: 'scenarios' must be a non-empty mapping of name -> fields")
    bodies = _body_names(task)
    out = []
    for name, spec in scenarios.items():
        if not isinstance(name, str) or not name.replace("_", "").isalnum():
            raise SuiteError(f"{where}: scenario name {name!r} must be letters, digits and _")
        out.append(_scenario(name, spec, default_episodes, task, bodies, where))
    return Suite(task.name, seed, tuple(out), str(raw.get("description", "")), path)


def _scenario(
    name: str, spec: Any, episodes: int, task: Task, bodies: list[str], where: str
) -> Scenario:
    at = f"{where}: scenario {name!r}"
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise SuiteError(f"{at}: expected a mapping with fields {list(SCENARIO_FIELDS)}")
    _known(spec, SCENARIO_FIELDS, at)
    length = spec.get("episode_length")
    start = spec.get("start") or {}
    if not isinstance(start, dict):
        raise SuiteError(f"{at}: start: expected a mapping with fields {list(START_FIELDS)}")
    _known(start, START_FIELDS, f"{at}: start")
    settings = start.get("set") or {}
    if not isinstance(settings, dict):
        raise SuiteError(f"{at}: start.set: expected a mapping of state dimension -> value")
    start_set = []
    for dim, value in settings.items():
        if dim not in task.layout.names:
            raise SuiteError(
                f"{at}: start.set: unknown state dimension {dim!r}; "
                f"{task.name} has {list(task.layout.names)}"
            )
        lo, hi = _range(value, f"{at}: start.set.{dim}")
        start_set.append((str(dim), lo, hi))
    return Scenario(
        name=name,
        episodes=_integer(spec.get("episodes", episodes), f"{at}: episodes", 1, MAX_EPISODES),
        episode_length=None if length is None else _integer(length, f"{at}: episode_length", 1),
        start_noise=_number(start.get("noise", 0.0), f"{at}: start.noise", low=0.0),
        start_set=tuple(start_set),
        push=None if spec.get("push") is None else _push(spec["push"], bodies, at),
        actuator_noise=_number(spec.get("actuator_noise", 0.0), f"{at}: actuator_noise", 0.0),
        description=str(spec.get("description", "")),
    )


def _push(spec: Any, bodies: list[str], at: str) -> Push:
    if not isinstance(spec, dict):
        raise SuiteError(f"{at}: push: expected a mapping with fields {list(PUSH_FIELDS)}")
    _known(spec, PUSH_FIELDS, f"{at}: push")
    body = spec.get("body")
    if body not in bodies:
        raise SuiteError(f"{at}: push: unknown body {body!r}; the model has {bodies}")
    steps = spec.get("at")
    if not isinstance(steps, list) or not steps:
        raise SuiteError(f"{at}: push.at: expected a non-empty list of step indices")
    return Push(
        body=str(body),
        force=_vector(spec.get("force", [0, 0, 0]), f"{at}: push.force"),
        torque=_vector(spec.get("torque", [0, 0, 0]), f"{at}: push.torque"),
        at=tuple(_integer(t, f"{at}: push.at", low=0) for t in steps),
        duration=_integer(spec.get("duration", 1), f"{at}: push.duration", low=1),
    )


def _body_names(task: Task) -> list[str]:
    model = task._model
    names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, i) for i in range(model.nbody)]
    return [n for n in names[1:] if n]  # body 0 is the world


def _known(spec: dict, allowed: tuple[str, ...], at: str) -> None:
    unknown = [k for k in spec if k not in allowed]
    if unknown:
        raise SuiteError(f"{at}: unknown field {unknown[0]!r}; allowed: {list(allowed)}")


def _number(value: Any, at: str, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SuiteError(f"{at}: expected a number, got {value!r}")
    if value != value or abs(value) == float("inf"):
        raise SuiteError(f"{at}: expected a finite number, got {value!r}")
    if low is not None and value < low:
        raise SuiteError(f"{at}: must be >= {low:g}, got {value!r}")
    return float(value)


def _integer(value: Any, at: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SuiteError(f"{at}: expected an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" + (f" and <= {high}" if high is not None else "")
        raise SuiteError(f"{at}: must be {bounds}, got {value}")
    return value


def _range(value: Any, at: str) -> tuple[float, float]:
    if isinstance(value, list):
        if len(value) != 2:
            raise SuiteError(f"{at}: expected a value or [low, high], got {value!r}")
        lo, hi = _number(value[0], at), _number(value[1], at)
        if lo > hi:
            raise SuiteError(f"{at}: low {lo:g} is above high {hi:g}")
        return lo, hi
    v = _number(value, at)
    return v, v


def _vector(value: Any, at: str) -> tuple[float, float, float]:
    if not isinstance(value, list) or len(value) != 3:
        raise SuiteError(f"{at}: expected [x, y, z], got {value!r}")
    x, y, z = (_number(v, at) for v in value)
    return x, y, z
