"""Hypotheticals: imagined futures synthesised by planning on an acquisition objective.

ReQueST (Reddy et al. 2020, Sec. 3.2) synthesises trajectories to ask about by
optimising an acquisition objective through the learned world model instead of
waiting for the agent to visit them; Leike et al. 2018 (Sec. 5.7) name such
off-policy feedback as a way to close loopholes before the agent exploits them.
The objectives here: reward-ensemble disagreement plus side-constraint uncertainty,
novelty (distance to every state judged so far), and the lowest predicted reward;
each but the last minus a realism term (the world model's own disagreement).

Devices: the acquisition is computed where the world model imagines; the novelty
reference set is moved there once per round, and each synthesised plan comes back
to the CPU once, as a segment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mbrm.device import device_of
from mbrm.feedback.segments import Segment, SegmentSource
from mbrm.imagination import ModelImagination, as_tensor_state
from mbrm.nn import StateFeatures
from mbrm.tasks import Task

SYNTHESIS_OBJECTIVES = ("uncertainty", "novelty", "min_reward")


def imagined_segment(
    top_states: torch.Tensor, top_actions: torch.Tensor, length: int, particle: int = 0
) -> Segment:
    """The best candidate's imagined trajectory (one particle) as a segment (on the CPU)."""
    T = min(length, top_actions.shape[1])
    states = top_states[0, particle, : T + 1].double().cpu().numpy()
    actions = top_actions[0, :T].double().cpu().numpy()
    return Segment(states, actions, SegmentSource.IMAGINED)


def novelty_features(task: Task, classifier: Any | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Features the novelty objective measures distance in: the classifier's inputs
    (the task's network inputs when no classifier is learned)."""
    if classifier is not None:
        return classifier.net.state_features
    layout = task.layout
    return StateFeatures(layout.input_mask, layout.periodic_mask, layout.derived)


def novelty_reference(
    states: np.ndarray,
    features: Callable[[torch.Tensor], torch.Tensor],
    *,
    rng: np.random.Generator,
    max_states: int = 2000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference set of the novelty objective: features of ``states`` [L, F] and their scale [F].

    At most ``max_states`` states (a random subset) keep the distance computation cheap;
    the scale is each feature's std over the reference (at least 1e-3). Both are on the
    device of ``features`` (the CPU for a module without tensors or a plain function).
    """
    if len(states) == 0:
        raise ValueError("the novelty objective needs at least one reference state")
    if len(states) > max_states:
        states = states[np.sort(rng.choice(len(states), max_states, replace=False))]
    device = device_of(features) if isinstance(features, torch.nn.Module) else torch.device("cpu")
    with torch.no_grad():
        ref = features(torch.as_tensor(states, dtype=torch.float32, device=device)).float()
    if len(ref) > 1:
        scale = ref.std(0, unbiased=False).clamp(min=1e-3)
    else:
        scale = torch.ones(ref.shape[1], device=ref.device)
    return ref / scale, scale


def synthesise(
    planner,
    imagination: ModelImagination,
    starts: np.ndarray,
    *,
    objective: str,
    reward_model,
    classifier,
    realism: float,
    length: int,
    generator: torch.Generator,
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[Segment]:
    """Plan on an acquisition objective from each start state; return the imagined plans.

    Objectives (ReQueST, Reddy et al. 2020, Sec. 3.2: uncertainty, novelty, and the
    reward extremes), each minus ``realism`` times the world model's disagreement (the
    std of the particles' next states, normalised), so hypotheticals stay where the
    model can be believed:

    * ``uncertainty``: reward std + classifier std/near-threshold;
    * ``novelty``: distance of each imagined state's ``features`` to the nearest state
      of ``reference`` (from :func:`novelty_reference`: the states judged so far),
      which steers the arm into outcomes no unacceptable label covers yet;
    * ``min_reward``: the negated reward mean (what the reward model believes is worst),
      without the realism term.
    """
    if objective not in SYNTHESIS_OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {SYNTHESIS_OBJECTIVES}")
    if objective in ("uncertainty", "min_reward") and reward_model is None:
        raise ValueError(f"the {objective} objective needs a fitted reward model")
    if objective == "novelty" and (features is None or reference is None):
        raise ValueError("the novelty objective needs features and a reference set")
    wm = imagination.world_model
    scale = wm.target_norm.std.clamp(min=1e-6)

    def acquisition(s, a, s_next):
        if objective == "min_reward":
            mean, _ = reward_model.predict(s, a, s_next)
            return -mean, torch.zeros_like(mean)
        if objective == "novelty":
            ref, f_scale = reference
            f = features(s_next).float() / f_scale  # [N, P, H, F]
            flat = f.reshape(-1, f.shape[-1])
            score = torch.cdist(flat, ref).min(1).values.reshape(f.shape[:-1])  # [N, P, H]
        else:
            _, score = reward_model.predict(s, a, s_next)
            if classifier is not None:
                p, p_std = classifier.predict(s_next)
                score = score + p_std.float() + 4 * p * (1 - p)
        spread = (s_next / scale).std(dim=1, keepdim=True).mean(-1)  # [N, 1, H] over particles
        return score - realism * spread.expand_as(score), torch.zeros_like(score)

    synth = ModelImagination(
        wm,
        acquisition,
        None,
        imagination.particles,
        imagination.generator,
        "tsinf",
        imagination.dtype,
    )
    out = []
    for s0 in starts:
        with torch.no_grad():
            res = planner.plan(as_tensor_state(s0, planner.device), synth, generator=generator)
        seg = imagined_segment(res.top_states, res.top_actions, length)
        out.append(
            Segment(seg.states, seg.actions, SegmentSource.SYNTHESISED, {"objective": objective})
        )
    return out


def synthesise_round(
    settings: Any,
    planner: Any,
    imagination: ModelImagination,
    replay_states: np.ndarray,
    judged: np.ndarray,
    *,
    task: Task,
    reward_model: Any | None,
    classifier: Any | None,
    feature_classifier: Any | None,
    learning: bool,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> list[Segment]:
    """A round's hypotheticals: ``settings.synthesised`` plans split over the objectives.

    settings:            the round's :class:`mbrm.solicit.SolicitSettings`
    replay_states:       [M, S] real states; the start states are drawn from them
    judged:              [L, S] every state judged so far (the novelty reference)
    reward_model:        the fitted reward model, or None (then no objective needs it)
    classifier:          the calibrated classifier, or None
    feature_classifier:  the run's classifier, calibrated or not (novelty's features)
    learning:            False in oracle mode, where there is nothing to ask about
    """
    counts = {o: n for o, n in settings.synthesis_counts().items() if n > 0}
    if reward_model is None:  # uncertainty and min_reward score with the reward model
        counts.pop("uncertainty", None)
        counts.pop("min_reward", None)
    if not learning or not counts:
        return []
    features, reference = None, None
    if "novelty" in counts:  # measured where the planner imagines
        features = novelty_features(task, feature_classifier)
        if isinstance(features, torch.nn.Module):
            features = features.to(planner.device)
        reference = novelty_reference(judged if len(judged) else replay_states, features, rng=rng)
    out: list[Segment] = []
    for objective, n in counts.items():
        starts = replay_states[rng.choice(len(replay_states), n)]
        out += synthesise(
            planner,
            imagination,
            starts,
            objective=objective,
            reward_model=reward_model,
            classifier=classifier,
            realism=settings.realism,
            length=settings.segment_length,
            generator=generator,
            features=features,
            reference=reference,
        )
    return out
