"""A task: its environment, its state layout, its hidden objective, its renderer.

Every task exposes the *full simulator state* ``qpos | qvel`` as its observation
so that any state, real or imagined, can be rendered and judged (Leike et al.
2018, Sec. 5.2: evaluating outcomes of hypothetical behaviour). A :class:`Task`
owns

* ``true_reward(s, a, s_next)`` and ``unacceptable(s)``: the hidden objective,
  batched over leading dimensions, for synthetic teachers and evaluation only;
* ``make_env(seed)``: its gymnasium environment (registered as ``task.gym_id``,
  :mod:`mbrm.tasks.envs`), which returns gymnasium's reward as usual (the agent's
  code drops it) and never terminates on failure (failure is an outcome the
  teacher labels, not a termination rule the agent is told about);
* ``layout``: names and roles of the state dimensions, derived from the MuJoCo
  model (:mod:`mbrm.tasks.layout`);
* ``render(states)``: frames of any state sequence.

The task-specific parts (physics quantities, the hidden rules, XML and reset
hooks) live in one module per task beside this one, or in a user's package or
task file (:mod:`mbrm.tasks.task_file`).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.utils import seeding

from mbrm.tasks.envs import base_class, full_state_class
from mbrm.tasks.layout import StateLayout, derive_layout


def _check_shapes(s: np.ndarray, a: np.ndarray, s_next: np.ndarray) -> None:
    if s.shape != s_next.shape or s.shape[:-1] != a.shape[:-1]:
        raise ValueError(
            f"true_reward expects s [..., S], a [..., A], s_next [..., S] with the same "
            f"leading dimensions; got {s.shape}, {a.shape}, {s_next.shape}"
        )


def gym_id_of(name: str) -> str:
    """The gymnasium id of a task: ``reacher_keepout`` -> ``mbrm/ReacherKeepout-v0``."""
    return "mbrm/" + "".join(w[:1].upper() + w[1:] for w in name.split("_")) + "-v0"


@dataclass(frozen=True, eq=False)
class Task:
    """A named control task with a hidden objective. See the module docstring.

    name:               registry name, ``[a-z][a-z0-9_]*``; the gymnasium id is derived
                        from it (:func:`gym_id_of`)
    env_id:             the gymnasium MuJoCo env it is built on (``"Reacher-v5"``), or
                        None for a bare MuJoCo model in ``xml``
    episode_length:     steps per episode (the registered ``max_episode_steps``)
    reward_fn:          ``(s, a, s_next, dt) -> [...]``, batched numpy, hidden
    unacceptable_fn:    ``(s) -> bool [...]``, batched numpy, hidden
    env_kwargs:         keyword arguments of the env (gymnasium's, or
                        :class:`~mbrm.tasks.envs.MujocoXmlEnv`'s ``frame_skip``, ...)
    excluded_inputs:    state names that are not network inputs; None: the unbounded
                        root positions (:func:`~mbrm.tasks.layout.unbounded_root_positions`)
    reset_fn:           called with the env at the end of every reset
    xml:                a MuJoCo XML path, or a function that writes one and returns its
                        path (called when an env is made)
    """

    name: str
    env_id: str | None
    description: str
    unacceptable_description: str
    episode_length: int
    reward_fn: Callable[..., np.ndarray] = field(repr=False)
    unacceptable_fn: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    excluded_inputs: tuple[str, ...] | None = None
    reset_fn: Callable[[Any], None] | None = field(default=None, repr=False)
    xml: str | Callable[[], str] | None = field(default=None, repr=False)
    # (name, names of the state dimensions it reads, torch function states [..., S] -> [...]);
    # typed loosely because Hydra's instantiate turns a Task argument into a config node
    derived_features: tuple[Any, ...] = field(default=(), repr=False)

    # ---- environments

    @property
    def gym_id(self) -> str:
        """The id this task is registered under with gymnasium (``mbrm/...-v0``)."""
        return gym_id_of(self.name)

    def build_env(self, **kwargs: Any) -> gym.Env:
        """A new environment object, without gymnasium's wrappers (the registered entry
        point); ``kwargs`` go to the env class beside the task's ``env_kwargs``."""
        kw = {**self.env_kwargs, **kwargs}
        if self.xml is not None:
            kw["xml_file"] = self.xml if isinstance(self.xml, str) else self.xml()
        if self.env_id is None:
            kw["reward_fn"] = self.reward_fn
        return full_state_class(base_class(self.env_id))(reset_hook=self.reset_fn, **kw)

    def make_raw_env(self, render_mode: str | None = None, **render_kw: Any) -> gym.Env:
        """``gymnasium.make(task.gym_id)``: with gymnasium's wrappers and its time limit."""
        return gym.make(
            self.gym_id,
            max_episode_steps=self.episode_length,
            render_mode=render_mode,
            **render_kw,
        )

    def make_env(self, seed: int, render_mode: str | None = None, **render_kw: Any) -> gym.Env:
        """The agent's environment: the registered env as ``gymnasium.make`` builds it,
        without its wrappers; it truncates itself after ``episode_length`` steps.

        The first ``reset()`` without an explicit seed uses ``seed``, and the action
        space is seeded with it.
        """
        env = gym.make(
            self.gym_id,
            max_episode_steps=self.episode_length,
            disable_env_checker=True,
            render_mode=render_mode,
            episode_length=self.episode_length,
            **render_kw,
        ).unwrapped
        assert env.spec is not None
        env.spec = dataclasses.replace(env.spec, max_episode_steps=self.episode_length)
        # so that the caller's first reset() draws what reset(seed=seed) would
        env.np_random, _ = seeding.np_random(seed)
        env.action_space.seed(seed)
        return env

    # ---- layout

    @functools.cached_property
    def _model(self) -> mujoco.MjModel:
        env = self.build_env()
        model = env.unwrapped.model
        self.__dict__["_frame_skip"] = env.unwrapped.frame_skip
        env.close()
        return model

    @functools.cached_property
    def layout(self) -> StateLayout:
        """Names and roles of the state dimensions, derived from the MuJoCo model."""
        return derive_layout(
            self._model,
            self.__dict__["_frame_skip"],
            excluded=self.excluded_inputs,
            derived_features=self.derived_features,
        )

    @functools.cached_property
    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(low [A], high [A]) of the agent's actions: ``[-1, 1]`` per actuator, which the
        environment maps onto the actuator control range (:class:`~mbrm.tasks.envs.FullState`)."""
        n = self._model.nu
        return -np.ones(n), np.ones(n)

    @property
    def state_dim(self) -> int:
        return self.layout.dim

    @property
    def action_dim(self) -> int:
        return len(self.action_bounds[0])

    # ---- hidden objective (teachers and evaluation only)

    def true_reward(self, s: np.ndarray, a: np.ndarray, s_next: np.ndarray) -> np.ndarray:
        """Hidden true reward r(s, a, s'), batched over leading dimensions."""
        s, a, s_next = (np.asarray(x, dtype=np.float64) for x in (s, a, s_next))
        _check_shapes(s, a, s_next)
        return self.reward_fn(s, a, s_next, self.layout.dt)

    def unacceptable(self, s: np.ndarray) -> np.ndarray:
        """Hidden boolean flag per state: is this state an unacceptable outcome?"""
        s = np.asarray(s, dtype=np.float64)
        if s.shape[-1] != self.state_dim:
            raise ValueError(f"{self.name}: expected states [..., {self.state_dim}], got {s.shape}")
        return np.asarray(self.unacceptable_fn(s), dtype=bool)

    # ---- rendering

    def render(self, states: np.ndarray, width: int = 240, height: int = 240) -> np.ndarray:
        """Frames uint8 [T, height, width, 3] for states [T, S], real or imagined.

        Uses gymnasium's own renderer and camera, so a state set by hand renders
        exactly as the real environment in that state.
        """
        states = np.asarray(states, dtype=np.float64)
        if states.ndim == 1:
            states = states[None]
        if states.ndim != 2 or states.shape[1] != self.state_dim:
            raise ValueError(
                f"{self.name}: render expects states [T, {self.state_dim}], got {states.shape}"
            )
        if not np.isfinite(states).all():
            raise ValueError(f"{self.name}: cannot render non-finite states")
        # an OpenGL context belongs to the thread that made it current: one env per thread
        env = self._render_env(width, height, threading.get_ident())
        u = env.unwrapped
        nq = self.layout.nq
        frames = []
        for s in states:
            u.set_state(s[:nq], s[nq:])
            frames.append(env.render())
        return np.stack(frames)

    @functools.lru_cache(maxsize=16)  # noqa: B019 - tasks are module-level singletons
    def _render_env(self, width: int, height: int, thread: int) -> gym.Env:
        env = self.make_raw_env(render_mode="rgb_array", width=width, height=height)
        env.reset(seed=0)
        return env
