"""Choosing what to ask: acquisition functions over real, imagined and synthesised segments.

Leike et al. 2018, Sec. 5.2 and 5.7: feedback on *hypothetical* behaviour lets the
user close loopholes before the agent visits them, and uncertainty estimates
decide which questions are worth a label. Candidate segments come from

* the planner's top imagined trajectories (``imagined``),
* the replay buffer (``real``),
* hypotheticals synthesised by planning on an acquisition objective with a
  realism term (``synthesised``; ReQueST, Reddy et al. 2020, Sec. 3).

Acquisition functions (each a score, higher = more worth asking):

* ``disagreement``  -- std over reward members of the Bradley-Terry P(a > b) (pairs);
* ``return_gap``    -- std over members of the predicted return difference (pairs);
* ``constraint``    -- side-constraint uncertainty: closeness of p(unacceptable) to the
                       calibrated threshold plus the classifier ensemble's std (segments);
* ``novelty``       -- normalised distance of a segment's states to every labelled state;
* ``max_reward`` / ``min_reward`` -- highest / lowest predicted return (segments).

Segment scores become pairs by pairing each chosen segment with a random partner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mbrm.feedback.segments import Segment

PAIR_ACQUISITIONS = ("disagreement", "return_gap")
SEGMENT_ACQUISITIONS = ("constraint", "novelty", "max_reward", "min_reward")
ACQUISITIONS = PAIR_ACQUISITIONS + SEGMENT_ACQUISITIONS


@dataclass(frozen=True)
class PairQuery:
    """A chosen preference query: pool indices of left and right, and why."""

    left: int
    right: int
    acquisition: str
    score: float


def member_returns(reward_model, segments: Sequence[Segment]) -> torch.Tensor:
    """Per-member predicted returns [M, E], up to a per-member constant.

    Differences between rows are exact Bradley-Terry logits (the constant is the
    first segment's return, which cancels in every pairwise difference).
    """
    ref = segments[0]
    return torch.stack([reward_model.return_difference(seg, ref) for seg in segments]).float()


def pair_scores(returns: torch.Tensor, pairs: np.ndarray, kind: str) -> np.ndarray:
    """Acquisition score of each pair [K] from member returns [M, E] and pairs [K, 2]."""
    diff = returns[pairs[:, 0]] - returns[pairs[:, 1]]  # [K, E]
    if kind == "disagreement":
        return torch.sigmoid(diff).std(-1, unbiased=False).cpu().numpy()
    if kind == "return_gap":
        return diff.std(-1, unbiased=False).cpu().numpy()
    raise ValueError(f"{kind!r} is not a pair acquisition; expected one of {PAIR_ACQUISITIONS}")


def constraint_uncertainty(classifier, segments: Sequence[Segment]) -> np.ndarray:
    """Max over a segment's states of near-threshold-ness plus ensemble std: [M].

    Near-threshold-ness is ``exp(-|logit p - logit tau|)`` (1 at the threshold).
    Before calibration the threshold is taken as 0.5. A threshold calibrated to
    exactly 0 or 1 (float32 scores saturate) has an infinite logit: no state is near it.
    """
    tau = float(classifier.threshold) if classifier.threshold is not None else 0.5
    if tau <= 0.0 or tau >= 1.0:
        logit_tau = float("-inf") if tau <= 0.0 else float("inf")
    else:
        logit_tau = float(np.log(tau / (1 - tau)))
    out = np.empty(len(segments))
    for i, seg in enumerate(segments):
        states = torch.as_tensor(seg.states, dtype=torch.float32, device="cpu")
        p, std = classifier.predict(states)  # moved to the classifier's device there
        p = p.double().clamp(1e-6, 1 - 1e-6)
        gap = (torch.logit(p) - logit_tau).abs()
        out[i] = float((torch.exp(-gap) + std.double()).max())
    return out


def novelty(segments: Sequence[Segment], labelled: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Max over a segment's states of the distance to the nearest labelled state: [M].

    Distances are in units of ``scale`` [S] (e.g. the replay's per-dimension std).
    With nothing labelled yet every segment is maximally novel (inf).
    """
    if len(labelled) == 0:
        return np.full(len(segments), np.inf)
    ref = torch.as_tensor(labelled / scale, dtype=torch.float32, device="cpu")
    out = np.empty(len(segments))
    for i, seg in enumerate(segments):
        x = torch.as_tensor(seg.states / scale, dtype=torch.float32, device="cpu")
        out[i] = float(torch.cdist(x, ref).min(1).values.max())
    return out


def select_pairs(
    pool: Sequence[Segment],
    budget: dict[str, int],
    *,
    rng: np.random.Generator,
    reward_model=None,
    classifier=None,
    labelled_states: np.ndarray | None = None,
    state_scale: np.ndarray | None = None,
    max_pairs: int = 4000,
) -> list[PairQuery]:
    """Choose preference queries from ``pool``: ``budget`` maps acquisition -> count.

    Without a fitted reward model (the first round) model-based acquisitions fall
    back to random pairs, recorded as ``random``. No pair is asked twice.
    """
    unknown = set(budget) - set(ACQUISITIONS) - {"random"}
    if unknown:
        raise ValueError(
            f"unknown acquisition functions {sorted(unknown)}; expected {ACQUISITIONS}"
        )
    M = len(pool)
    if M < 2:
        return []
    chosen: list[PairQuery] = []
    seen: set[tuple[int, int]] = set()

    def take(i: int, j: int, kind: str, score: float) -> bool:
        key = (min(i, j), max(i, j))
        if i == j or key in seen:
            return False
        seen.add(key)
        chosen.append(PairQuery(int(i), int(j), kind, float(score)))
        return True

    all_pairs = np.array([(i, j) for i in range(M) for j in range(i + 1, M)])
    if len(all_pairs) > max_pairs:
        all_pairs = all_pairs[rng.choice(len(all_pairs), max_pairs, replace=False)]
    fitted = reward_model is not None and getattr(reward_model, "fitted", True)
    returns = member_returns(reward_model, pool) if fitted else None

    for kind, count in budget.items():
        if count <= 0:
            continue
        model_needed = kind in (*PAIR_ACQUISITIONS, "max_reward", "min_reward")
        if (
            kind == "random"
            or (model_needed and returns is None)
            or (kind == "constraint" and classifier is None)
        ):
            label = "random"
            order = rng.permutation(len(all_pairs))
            n = 0
            for k in order:
                n += take(*all_pairs[k], label, float("nan"))
                if n >= count:
                    break
            continue
        if kind in PAIR_ACQUISITIONS:
            scores = pair_scores(returns, all_pairs, kind)
            n = 0
            for k in np.argsort(-scores, kind="stable"):
                n += take(*all_pairs[k], kind, scores[k])
                if n >= count:
                    break
            continue
        # segment acquisitions: the best-scoring segments, each with a random partner
        if kind == "constraint":
            seg_scores = constraint_uncertainty(classifier, pool)
        elif kind == "novelty":
            labelled = (
                labelled_states
                if labelled_states is not None
                else np.zeros((0, pool[0].states.shape[1]))
            )
            scale = state_scale if state_scale is not None else np.ones(pool[0].states.shape[1])
            seg_scores = novelty(pool, labelled, scale)
        else:
            mean_ret = returns.mean(-1).numpy()
            seg_scores = mean_ret if kind == "max_reward" else -mean_ret
        n = 0
        for i in np.argsort(-seg_scores, kind="stable"):
            for j in rng.permutation(M):
                if take(i, j, kind, seg_scores[i]):
                    n += 1
                    break
            if n >= count:
                break
    return chosen
