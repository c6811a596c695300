"""Physics quantities shared by the planar walkers (HalfCheetah, Hopper).

Both models start with the root slide and hinge joints ``rootx, rootz, rooty``,
so ``qpos[0]`` is root x, ``qpos[1]`` root z, ``qpos[2]`` the pitch, and the
first qvel entry is the forward velocity.
"""

from __future__ import annotations

import numpy as np


def forward_velocity(s: np.ndarray) -> np.ndarray:
    """Root x velocity (m/s) for planar walkers whose qpos[0] is root x."""
    nq = s.shape[-1] // 2
    return s[..., nq]


def torso_angle(s: np.ndarray) -> np.ndarray:
    """Root pitch angle (rad) for planar walkers (qpos[2] = rooty)."""
    return s[..., 2]


def torso_height(s: np.ndarray) -> np.ndarray:
    """Root z (m) for planar walkers (qpos[1] = rootz)."""
    return s[..., 1]
