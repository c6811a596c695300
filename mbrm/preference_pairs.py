"""Preference pairs as tensors, and the Bradley-Terry logits of a batch of them.

Christiano et al. 2017, Sec. 2.2.3: the probability that the left segment is
preferred is ``sigmoid(R_left - R_right)``, with R the sum of predicted per-step
rewards; the teacher's answer is the target (1 left, 0 right, 0.5 equal).
Pairs answered "cannot tell" carry no target and are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from mbrm.feedback.segments import Preference, Segment

PreferencePair = tuple[Segment, Segment, Preference]


def usable_pairs(pairs: Sequence[PreferencePair]) -> list[PreferencePair]:
    """The pairs with a Bradley-Terry target (all but "cannot tell"), answers as Preference."""
    used = []
    for i, (left, right, pref) in enumerate(pairs):
        pref = Preference(pref)
        if not isinstance(left, Segment) or not isinstance(right, Segment):
            raise TypeError(f"pair {i} must hold two Segments, got {type(left)}, {type(right)}")
        if pref.target is not None:
            used.append((left, right, pref))
    if not used:
        raise ValueError(
            f"no usable preference among {len(pairs)} pairs "
            "(the list is empty or every answer is 'cannot tell')"
        )
    return used


@dataclass(frozen=True)
class PairTensors:
    """Pairs padded to a common length. left/right: [N, T, in]; masks [N, T]; target [N]."""

    left: torch.Tensor
    right: torch.Tensor
    left_mask: torch.Tensor
    right_mask: torch.Tensor
    target: torch.Tensor


def bradley_terry_logits(
    reward: Callable[[torch.Tensor], torch.Tensor], data: PairTensors, idx: torch.Tensor
) -> torch.Tensor:
    """Per-member logits R_left - R_right of the pairs ``idx [E, b]`` -> [E, b].

    ``reward`` maps member-batched inputs [E, B, in] to per-step rewards [E, B];
    both segments of every pair go through it in one call.
    """
    E, b = idx.shape
    T_l, T_r = data.left.shape[1], data.right.shape[1]
    x = torch.cat(
        [data.left[idx].reshape(E, b * T_l, -1), data.right[idx].reshape(E, b * T_r, -1)], 1
    )
    r = reward(x)  # [E, b*(T_l+T_r)]
    r_left = (r[:, : b * T_l].reshape(E, b, T_l) * data.left_mask[idx]).sum(-1)
    r_right = (r[:, b * T_l :].reshape(E, b, T_r) * data.right_mask[idx]).sum(-1)
    return r_left - r_right


def check_segment(seg: Segment, state_dim: int, action_dim: int) -> None:
    """Refuse a segment of other sizes than S, A or with non-finite inputs."""
    if seg.states.shape[1] != state_dim or seg.actions.shape[1] != action_dim:
        raise ValueError(
            f"segment has states [.., {seg.states.shape[1]}] and actions "
            f"[.., {seg.actions.shape[1]}]; this model expects S={state_dim}, A={action_dim}"
        )
    if not (np.isfinite(seg.states[:-1]).all() and np.isfinite(seg.actions).all()):
        raise ValueError("segment has non-finite states or actions")


def preference_loss(logits: torch.Tensor, target: torch.Tensor, lapse: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``target`` under a Bradley-Terry model with lapses.

    Christiano et al. 2017 (Sec. 2.2.3) assume a fixed chance that the teacher answers
    uniformly at random: ``P(left) = (1 - lapse) * sigmoid(logit) + lapse / 2``. A flipped
    answer then costs at most ``-log(lapse / 2)`` instead of growing with the logit, so a
    few mistaken labels cannot drag the reward to fit them. ``lapse = 0`` is the plain
    loss (``binary_cross_entropy_with_logits``).
    """
    if not lapse:
        return F.binary_cross_entropy_with_logits(logits, target)
    # log P and log (1 - P) from log-sigmoids, exact where sigmoid saturates
    half = torch.log(torch.tensor(lapse / 2, dtype=logits.dtype, device=logits.device))
    keep = torch.log(torch.tensor(1.0 - lapse, dtype=logits.dtype, device=logits.device))
    log_p = torch.logaddexp(keep + F.logsigmoid(logits), half)
    log_q = torch.logaddexp(keep + F.logsigmoid(-logits), half)
    return -(target * log_p + (1.0 - target) * log_q).mean()
