"""A scenario's environment: the task's own, with its start state, pushes and actuator
noise changed as the suite says (:mod:`mbrm.certify.suite`).

The agent sees what it always sees (the state after each step); it is not told which
scenario it is in. Every draw comes from the generator the wrapper is given, so an
episode is fixed by its seeds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from mbrm.certify.suite import Scenario
from mbrm.tasks import Task


class PerturbedEnv(gym.Wrapper):
    """``env`` (a task's environment) under ``scenario``; ``rng`` draws the start state
    and the actuator noise."""

    def __init__(self, env: gym.Env, task: Task, scenario: Scenario, rng: np.random.Generator):
        super().__init__(env)
        self.task, self.scenario, self.rng = task, scenario, rng
        self._dims = [(task.layout.index(d), lo, hi) for d, lo, hi in scenario.start_set]
        u: Any = env.unwrapped
        push = scenario.push
        self._body = (
            None
            if push is None
            else mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_BODY, push.body)
        )
        self._wrench = None if push is None else np.array([*push.force, *push.torque])
        self._t = 0

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        s, info = self.env.reset(**kwargs)
        self._t = 0
        sc = self.scenario
        if sc.start_noise > 0 or self._dims:
            s = np.array(s, dtype=np.float64)
            if sc.start_noise > 0:
                s += self.rng.uniform(-sc.start_noise, sc.start_noise, s.shape)
            for i, lo, hi in self._dims:
                s[i] = lo if lo == hi else self.rng.uniform(lo, hi)
            u: Any = self.env.unwrapped
            nq = self.task.layout.nq
            u.set_state(s[:nq], s[nq:])
            s = u._get_obs()
        return s, info

    def step(self, action: np.ndarray) -> Any:
        a = np.asarray(action, dtype=np.float64)
        if self.scenario.actuator_noise > 0:
            noise = self.rng.normal(0.0, self.scenario.actuator_noise, a.shape)
            a = np.clip(a + noise, -1.0, 1.0)
        u: Any = self.env.unwrapped
        if self._body is not None:
            push = self.scenario.push
            assert push is not None
            u.data.xfrc_applied[self._body] = self._wrench if push.active(self._t) else 0.0
        out = self.env.step(a)
        self._t += 1
        return out


def scenario_task(task: Task, scenario: Scenario, run_length: int) -> Task:
    """The task with the scenario's episode length (the run's own when it sets none)."""
    return dataclasses.replace(task, episode_length=scenario.episode_length or run_length)


def make_scenario_env(
    task: Task, scenario: Scenario, rng: np.random.Generator, seed: int
) -> PerturbedEnv:
    """``task.make_env(seed)`` under ``scenario``."""
    return PerturbedEnv(task.make_env(seed), task, scenario, rng)
