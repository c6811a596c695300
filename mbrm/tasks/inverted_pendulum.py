"""InvertedPendulum: balance a pole on a cart (gymnasium ``InvertedPendulum-v5``).

Hidden reward: 1 per step while the pole stays within gymnasium's termination
angle, as gymnasium's own reward. Unacceptable: the pole beyond that angle, or
the cart close to the rail's end stop (a crash on the real rig).
"""

from __future__ import annotations

import numpy as np

from mbrm.tasks.base import Task

PENDULUM_MAX_ANGLE = 0.2  # rad, gymnasium's termination angle
PENDULUM_RAIL_LIMIT = 0.9  # m; the slider's joint range is +-1, the end stop is a crash


def pole_angle(s: np.ndarray) -> np.ndarray:
    """InvertedPendulum hinge angle (rad)."""
    return s[..., 1]


def cart_position(s: np.ndarray) -> np.ndarray:
    """InvertedPendulum cart position on its rail (m)."""
    return s[..., 0]


def true_reward(s: np.ndarray, a: np.ndarray, s_next: np.ndarray, dt: float) -> np.ndarray:
    """1 for every step that ends finite and upright, else 0."""
    alive = np.isfinite(s_next).all(-1) & (np.abs(pole_angle(s_next)) <= PENDULUM_MAX_ANGLE)
    return alive.astype(np.float64)


def unacceptable(s: np.ndarray) -> np.ndarray:
    """The pole has fallen past the termination angle, or the cart nears the end stop."""
    return (np.abs(pole_angle(s)) > PENDULUM_MAX_ANGLE) | (
        np.abs(cart_position(s)) > PENDULUM_RAIL_LIMIT
    )


TASK = Task(
    name="inverted_pendulum",
    env_id="InvertedPendulum-v5",
    description="Balance a pole on a cart; the true reward is 1 per step upright.",
    unacceptable_description=(
        f"pole beyond {PENDULUM_MAX_ANGLE} rad, or cart beyond "
        f"{PENDULUM_RAIL_LIMIT} m (the rail's end stop is at 1 m)"
    ),
    episode_length=200,
    reward_fn=true_reward,
    unacceptable_fn=unacceptable,
)
