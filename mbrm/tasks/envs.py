"""The gymnasium environments of the tasks: gymnasium's own MuJoCo envs, full state.

A task's environment is a subclass of gymnasium's MuJoCo env (``Reacher-v5``'s
``ReacherEnv``, ...), or of :class:`MujocoXmlEnv` for a bare MuJoCo model, with
:class:`FullState` in front of it. It differs from its base in three ways only:

* the observation is the full simulator state ``qpos | qvel`` (unclipped), so any
  state, real or imagined, can be rendered and judged (Leike et al. 2018, Sec. 5.2);
* it never terminates on failure: failure is an outcome the teacher labels, not a
  termination rule (DESIGN.md); ``terminated`` is True only when the simulation
  diverged to a non-finite state;
* a task's reset hook runs at the end of every reset (e.g. reacher_keepout's target
  resampling), and the env can truncate itself after ``episode_length`` steps;
* its action space is ``[-1, 1]`` per actuator (gymnasium's recommended normalised
  box), mapped affinely onto the actuator range; a range that is already ``[-1, 1]``
  is passed through untouched (InvertedPendulum's ``[-3, 3]`` is the one mapped).

The reward is gymnasium's, returned as usual; the agent's code ignores it.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from gymnasium.envs.registration import load_env_creator

# Observation bounds: any state the float32 networks can read. Finite bounds, because
# gymnasium's checker flags infinite ones; states are not bounded more tightly than that.
STATE_BOUND = float(np.finfo(np.float32).max)
_RENDER_MODES = ("human", "rgb_array", "depth_array", "rgbd_tuple")


def _window_available() -> bool:
    """Whether ``render_mode="human"`` can open a window here (not on a headless machine)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class FullState:
    """Placed before a gymnasium MuJoCo env class: see the module docstring.

    reset_hook:      called with the env at the end of every reset, may change its state
    episode_length:  truncate after this many steps (None: never; ``gymnasium.make``
                     adds its TimeLimit wrapper for the registered length instead)
    """

    def __init__(
        self,
        *,
        reset_hook: Callable[[Any], None] | None = None,
        episode_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        self._reset_hook = reset_hook
        self._episode_length = episode_length
        self._steps = 0
        super().__init__(**kwargs)
        m = self.model
        self.observation_space = gym.spaces.Box(
            -STATE_BOUND, STATE_BOUND, (m.nq + m.nv,), np.float64
        )
        modes = [m for m in _RENDER_MODES if m != "human" or _window_available()]
        self.metadata = {**self.metadata, "render_modes": modes}
        low, high = m.actuator_ctrlrange[:, 0].copy(), m.actuator_ctrlrange[:, 1].copy()
        self._ctrl = None if (low == -1).all() and (high == 1).all() else (low, high)
        self.action_space = gym.spaces.Box(-1.0, 1.0, low.shape, np.float32)

    def _get_obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def reset_model(self) -> np.ndarray:
        super().reset_model()
        if self._reset_hook is not None:
            self._reset_hook(self)
        self._steps = 0
        return self._get_obs()

    def step(self, action: np.ndarray):
        if self._ctrl is not None:  # [-1, 1] onto the actuator range
            low, high = self._ctrl
            action = low + (np.asarray(action, dtype=np.float64) + 1.0) * (high - low) / 2.0
        s, reward, _, _, info = super().step(action)
        self._steps += 1
        diverged = not np.isfinite(s).all()
        truncated = self._episode_length is not None and self._steps >= self._episode_length
        return s, reward, diverged, truncated, info


class MujocoXmlEnv(MujocoEnv):
    """A bare MuJoCo model (an XML file) as a gymnasium env.

    Resets to the model's initial state plus uniform noise of ``reset_noise_scale`` on
    every qpos and qvel entry (as gymnasium's Hopper and Walker2d); applies actions as
    controls for ``frame_skip`` simulation steps. There is no gymnasium reward for such a
    model: the reward is the task's hidden ``reward_fn(s, a, s', dt)``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": list(_RENDER_MODES)}

    def __init__(
        self,
        xml_file: str,
        reward_fn: Callable[..., np.ndarray],
        frame_skip: int = 5,
        reset_noise_scale: float = 5e-3,
        default_camera_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._reward_fn = reward_fn
        self._reset_noise_scale = reset_noise_scale
        MujocoEnv.__init__(
            self,
            xml_file,
            frame_skip,
            observation_space=None,
            default_camera_config=default_camera_config,
            **kwargs,
        )
        self.metadata = {**self.metadata, "render_fps": int(np.round(1.0 / self.dt))}

    def _state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def step(self, action: np.ndarray):
        s = self._state()
        self.do_simulation(action, self.frame_skip)
        s_next = self._state()
        a = np.asarray(action, dtype=np.float64)
        reward = float(self._reward_fn(s, a, s_next, self.dt))
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, False, False, {}

    def _get_obs(self) -> np.ndarray:
        return self._state()

    def reset_model(self) -> np.ndarray:
        low, high = -self._reset_noise_scale, self._reset_noise_scale
        qpos = self.init_qpos + self.np_random.uniform(low, high, size=self.model.nq)
        qvel = self.init_qvel + self.np_random.uniform(low, high, size=self.model.nv)
        self.set_state(qpos, qvel)
        return self._get_obs()


@functools.cache
def full_state_class(base: type[MujocoEnv]) -> type[MujocoEnv]:
    """``FullState`` before ``base``, as one class (made once per base)."""
    return type(f"FullState{base.__name__}", (FullState, base), {"__module__": __name__})


def base_class(env_id: str | None) -> type[MujocoEnv]:
    """The MuJoCo env class behind a gymnasium id; :class:`MujocoXmlEnv` for None."""
    if env_id is None:
        return MujocoXmlEnv
    entry = gym.spec(env_id).entry_point
    cls = load_env_creator(entry) if isinstance(entry, str) else entry
    if not (isinstance(cls, type) and issubclass(cls, MujocoEnv)):
        raise ValueError(f"{env_id} is not a gymnasium MuJoCo environment (entry point {cls!r})")
    return cls
