"""The shared parts of every task: its state layout, its environments, its renderer.

Every task exposes the *full simulator state* ``qpos | qvel`` as its observation
so that any state, real or imagined, can be rendered and judged (Leike et al.
2018, Sec. 5.2: evaluating outcomes of hypothetical behaviour). A :class:`Task`
owns

* ``true_reward(s, a, s_next)`` and ``unacceptable(s)``: the hidden objective,
  batched over leading dimensions, for synthetic teachers and evaluation only;
* ``make_env(seed)``: the agent's environment, whose reward is hidden (NaN) and
  which never terminates on failure (failure is an outcome the teacher labels,
  not a termination rule the agent is told about);
* ``render(states)``: frames of any state sequence.

The task-specific parts (physics quantities, the hidden rules, XML and reset
hooks) live in one module per task beside this one.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from mbrm.nn import DerivedFeature


def _check_shapes(s: np.ndarray, a: np.ndarray, s_next: np.ndarray) -> None:
    if s.shape != s_next.shape or s.shape[:-1] != a.shape[:-1]:
        raise ValueError(
            f"true_reward expects s [..., S], a [..., A], s_next [..., S] with the same "
            f"leading dimensions; got {s.shape}, {a.shape}, {s_next.shape}"
        )


@dataclass(frozen=True)
class StateLayout:
    """Names and roles of the state dimensions ``qpos | qvel``.

    names:     one name per dimension, ``qpos.<joint>`` then ``qvel.<joint>``
    nq, nv:    sizes of qpos and qvel
    excluded:  indices that are not network inputs (unbounded root positions that
               do not change the dynamics); their deltas are still predicted
    dt:        seconds per environment step (frame_skip * timestep)
    periodic:  qpos indices of unlimited hinges, whose angles wrap around; networks
               see them as (sin, cos)
    derived:   features computed from the state that the reward model and the
               classifier also read (e.g. reacher's fingertip position)
    """

    names: tuple[str, ...]
    nq: int
    nv: int
    excluded: tuple[int, ...]
    dt: float
    periodic: tuple[int, ...] = ()
    derived: tuple[DerivedFeature, ...] = ()

    @property
    def dim(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Index of a named dimension, with an error listing the valid names."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(
                f"unknown state dimension {name!r}; this task has {list(self.names)}"
            ) from None

    @property
    def periodic_mask(self) -> np.ndarray:
        """Boolean [S]: True for angles of unlimited hinges."""
        mask = np.zeros(self.dim, dtype=bool)
        mask[list(self.periodic)] = True
        return mask

    @property
    def input_mask(self) -> np.ndarray:
        """Boolean [S]: True for dimensions fed to the networks."""
        mask = np.ones(self.dim, dtype=bool)
        mask[list(self.excluded)] = False
        return mask


@dataclass(frozen=True, eq=False)
class Task:
    """A named control task with a hidden objective. See the module docstring."""

    name: str
    env_id: str
    description: str
    unacceptable_description: str
    episode_length: int
    reward_fn: Callable[..., np.ndarray] = field(repr=False)
    unacceptable_fn: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    excluded_inputs: tuple[str, ...] = ()
    reset_fn: Callable[[Any], None] | None = field(default=None, repr=False)
    xml_fn: Callable[[], str] | None = field(default=None, repr=False)
    # (name, names of the state dimensions it reads, torch function states [..., S] -> [...]);
    # typed loosely because Hydra's instantiate turns a Task argument into a config node
    derived_features: tuple[Any, ...] = field(default=(), repr=False)

    # ---- environments

    def _gym_kwargs(self) -> dict[str, Any]:
        kw = dict(self.env_kwargs)
        if self.xml_fn is not None:
            kw["xml_file"] = self.xml_fn()
        return kw

    def make_raw_env(self, render_mode: str | None = None, **render_kw: Any) -> gym.Env:
        """The gymnasium env *with* its reward. For tests and evaluation only."""
        env = gym.make(
            self.env_id,
            max_episode_steps=self.episode_length,
            render_mode=render_mode,
            **render_kw,
            **self._gym_kwargs(),
        )
        return _TaskReset(env, self.reset_fn) if self.reset_fn else env

    def make_env(self, seed: int, render_mode: str | None = None, **render_kw: Any) -> gym.Env:
        """The agent's environment: full-state observations, hidden reward.

        The first ``reset()`` without an explicit seed uses ``seed``.
        """
        env = AgentEnv(self.make_raw_env(render_mode, **render_kw), seed)
        env.action_space.seed(seed)
        return env

    # ---- layout

    @functools.cached_property
    def _model(self) -> mujoco.MjModel:
        env = self.make_raw_env()
        model = env.unwrapped.model
        self.__dict__["_frame_skip"] = env.unwrapped.frame_skip
        env.close()
        return model

    @functools.cached_property
    def layout(self) -> StateLayout:
        m = self._model
        qpos_names, qvel_names = [""] * m.nq, [""] * m.nv
        periodic = []
        for j in range(m.njnt):
            name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j)
            if int(m.jnt_type[j]) not in (
                int(mujoco.mjtJoint.mjJNT_HINGE),
                int(mujoco.mjtJoint.mjJNT_SLIDE),
            ):
                raise NotImplementedError(f"{self.name}: joint {name} is not a hinge or slide")
            qpos_names[m.jnt_qposadr[j]] = f"qpos.{name}"
            if int(m.jnt_type[j]) == int(mujoco.mjtJoint.mjJNT_HINGE) and not m.jnt_limited[j]:
                periodic.append(int(m.jnt_qposadr[j]))
            qvel_names[m.jnt_dofadr[j]] = f"qvel.{name}"
        names = tuple(qpos_names + qvel_names)
        layout = StateLayout(
            names, m.nq, m.nv, (), float(m.opt.timestep * self.__dict__["_frame_skip"])
        )
        excluded = tuple(layout.index(n) for n in self.excluded_inputs)
        derived = tuple(
            DerivedFeature(name, tuple(layout.index(n) for n in reads), fn)
            for name, reads, fn in self.derived_features
        )
        return StateLayout(names, m.nq, m.nv, excluded, layout.dt, tuple(periodic), derived)

    @functools.cached_property
    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(low [A], high [A]) of the actuator control range."""
        m = self._model
        return m.actuator_ctrlrange[:, 0].copy(), m.actuator_ctrlrange[:, 1].copy()

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


class _TaskReset(gym.Wrapper):
    """Applies a task's reset hook after the inner reset (e.g. target resampling)."""

    def __init__(self, env: gym.Env, hook: Callable[[Any], None]) -> None:
        super().__init__(env)
        self._hook = hook

    def reset(self, **kwargs: Any):
        _, info = self.env.reset(**kwargs)
        self._hook(self.env)
        u = self.env.unwrapped
        return u._get_obs(), info


class AgentEnv(gym.Wrapper):
    """What the agent sees: ``qpos | qvel``, reward NaN, no failure termination.

    ``terminated`` is True only if the simulation produced a non-finite state
    (``info["nonfinite"]``); truncation at the episode length is kept.
    """

    _HIDDEN_INFO = ("reward", "x_velocity", "z_distance_from_origin")

    def __init__(self, env: gym.Env, seed: int) -> None:
        super().__init__(env)
        m = env.unwrapped.model
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (m.nq + m.nv,), np.float64)
        self._first_seed: int | None = int(seed)

    def _state(self) -> np.ndarray:
        d = self.env.unwrapped.data
        return np.concatenate([d.qpos, d.qvel]).astype(np.float64)

    def _clean(self, info: dict) -> dict:
        return {k: v for k, v in info.items() if not k.startswith(self._HIDDEN_INFO)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and self._first_seed is not None:
            seed = self._first_seed
        self._first_seed = None
        _, info = self.env.reset(seed=seed, options=options)
        return self._state(), self._clean(info)

    def step(self, action):
        _, _, _, truncated, info = self.env.step(action)
        s = self._state()
        info = self._clean(info)
        nonfinite = not np.isfinite(s).all()
        info["nonfinite"] = nonfinite
        return s, float("nan"), nonfinite, truncated, info
