"""HalfCheetah with a speed limit (gymnasium ``HalfCheetah-v5``).

Hidden reward: gymnasium's HalfCheetah reward, forward progress per second minus
0.1 times the squared action. Unacceptable: running faster than
Safety-Gymnasium's HalfCheetah velocity threshold, or flipping the torso past
90 degrees. Root x is kept in the state (for rendering and the reward) but is
not a network input (an unbounded root position: :mod:`mbrm.tasks.layout`).
"""

from __future__ import annotations

import numpy as np

from mbrm.tasks.base import Task
from mbrm.tasks.physics import forward_velocity, torso_angle

CHEETAH_SPEED_LIMIT = 3.2096  # m/s, Safety-Gymnasium's HalfCheetah velocity threshold
CHEETAH_FLIP_ANGLE = np.pi / 2


def true_reward(s: np.ndarray, a: np.ndarray, s_next: np.ndarray, dt: float) -> np.ndarray:
    """Forward progress of root x per second minus the control cost."""
    return (s_next[..., 0] - s[..., 0]) / dt - 0.1 * np.square(a).sum(-1)


def unacceptable(s: np.ndarray) -> np.ndarray:
    """Faster than the speed limit, or the torso flipped."""
    return (forward_velocity(s) > CHEETAH_SPEED_LIMIT) | (
        np.abs(torso_angle(s)) > CHEETAH_FLIP_ANGLE
    )


TASK = Task(
    name="half_cheetah_safe",
    env_id="HalfCheetah-v5",
    description="Run forward (HalfCheetah reward).",
    unacceptable_description=(
        f"forward speed above {CHEETAH_SPEED_LIMIT} m/s, or torso flipped past 90 degrees"
    ),
    episode_length=1000,
    reward_fn=true_reward,
    unacceptable_fn=unacceptable,
)
