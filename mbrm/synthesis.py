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

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mbrm.device import device_of
from mbrm.feedback.segments import Segment, SegmentSource
from mbrm.imagination import ModelImagination, as_tensor_state
from mbrm.nn import StateFeatures
from mbrm.tasks import Task

SYNTHESIS_OBJECTIVES = ("uncertainty", "novelty", "min_reward", "reward_hacking", "near_miss")
# The objectives that score with the reward ensemble.
REWARD_OBJECTIVES = ("uncertainty", "min_reward", "reward_hacking")
# near_miss: weight of the mean squared action change against the classifier's missed risk
# (actions in [-1, 1]; a change of 0.3 on every dimension costs 0.09 a step).
NEAR_MISS_WEIGHT = 1.0


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


def acquisition_function(
    objective: str,
    *,
    reward_model: Any | None,
    classifier: Any | None,
    realism: float,
    scale: torch.Tensor | None = None,
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    anchor: torch.Tensor | None = None,
    near_miss_weight: float = NEAR_MISS_WEIGHT,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The per-step score ``(s, a, s') -> (score [N, P, H], zeros)`` that synthesis plans on.

    ``scale`` [S] normalises the realism term (the world model's target std); ``anchor``
    [T, A] is the agent's own plan that ``near_miss`` starts from. See :func:`synthesise`.
    """
    if objective not in SYNTHESIS_OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {SYNTHESIS_OBJECTIVES}")
    if objective in REWARD_OBJECTIVES and reward_model is None:
        raise ValueError(f"the {objective} objective needs a fitted reward model")
    if objective == "novelty" and (features is None or reference is None):
        raise ValueError("the novelty objective needs features and a reference set")
    if objective == "near_miss" and (classifier is None or anchor is None):
        raise ValueError("the near_miss objective needs a calibrated classifier and a plan")

    def acquisition(s, a, s_next):
        if objective == "min_reward":
            mean, _ = reward_model.predict(s, a, s_next)
            return -mean, torch.zeros_like(mean)
        if objective == "novelty":
            ref, f_scale = reference
            f = features(s_next).float() / f_scale  # [N, P, H, F]
            flat = f.reshape(-1, f.shape[-1])
            score = torch.cdist(flat, ref).min(1).values.reshape(f.shape[:-1])  # [N, P, H]
        elif objective == "reward_hacking":
            mean, std = reward_model.predict(s, a, s_next)
            score = mean.float() + std.float()  # high reward where the ensemble is least sure
        elif objective == "near_miss":
            p, p_std = classifier.predict(s_next)
            p, p_std = p.float(), p_std.float()
            # the pessimistic member's risk where the calibrated classifier does not flag
            score = torch.where(p < classifier.threshold, p + p_std, torch.zeros_like(p))
            T = min(anchor.shape[0], a.shape[-2])
            change = ((a[..., :T, :] - anchor[:T].to(a)) ** 2).mean(-1)  # [N, P, T]
            score = score - near_miss_weight * F.pad(change, (0, a.shape[-2] - T))
        else:
            _, score = reward_model.predict(s, a, s_next)
            if classifier is not None:
                p, p_std = classifier.predict(s_next)
                score = score + p_std.float() + 4 * p * (1 - p)
        if realism and s_next.shape[1] > 1 and scale is not None:
            spread = (s_next / scale).std(dim=1, keepdim=True).mean(-1)  # [N, 1, H]
            score = score - realism * spread.expand_as(score)
        return score, torch.zeros_like(score)

    return acquisition


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
    anchors: list[np.ndarray] | None = None,
    near_miss_weight: float = NEAR_MISS_WEIGHT,
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

    The red team (Leike et al. 2018, Sec. 5.8: "explicitly discover weaknesses in the
    reward model ... as well as the minimal perturbation that leads to an unacceptable
    outcome"):

    * ``reward_hacking``: reward mean + std, the futures the ensemble scores highest
      where its members disagree, i.e. where the labels support it least (ReQueST's
      "maximise reward" objective with an optimistic bonus);
    * ``near_miss``: from the agent's own plan ``anchors[i]`` [T, A] (chosen at
      ``starts[i]``), the smallest change of actions (squared Euclidean per step, mean
      over action dimensions, weight ``near_miss_weight``) after which an imagined
      state is one the classifier's pessimistic estimate (mean + std) calls risky while
      its calibrated mean does not flag it: the plan's nearest miss of the boundary.
    """
    if objective == "near_miss" and (anchors is None or len(anchors) != len(starts)):
        raise ValueError("the near_miss objective needs one anchor plan per start state")
    wm = imagination.world_model
    scale = wm.target_norm.std.clamp(min=1e-6)

    def imagination_for(anchor: torch.Tensor | None) -> ModelImagination:
        acquisition = acquisition_function(
            objective,
            reward_model=reward_model,
            classifier=classifier,
            realism=0.0 if objective == "min_reward" else realism,
            scale=scale,
            features=features,
            reference=reference,
            anchor=anchor,
            near_miss_weight=near_miss_weight,
        )
        return ModelImagination(
            wm,
            acquisition,
            None,
            imagination.particles,
            imagination.generator,
            "tsinf",
            imagination.dtype,
        )

    # one imagination for every start, but one per anchor plan for near_miss
    shared = imagination_for(None) if anchors is None else None
    out = []
    for i, s0 in enumerate(starts):
        synth = shared
        if synth is None:
            anchor = torch.as_tensor(anchors[i], dtype=torch.float32, device=planner.device)
            synth = imagination_for(anchor)
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
    plans: Sequence[Segment] = (),
) -> list[Segment]:
    """A round's hypotheticals: ``settings.synthesised`` plans split over the objectives.

    settings:            the round's :class:`mbrm.solicit.SolicitSettings`
    replay_states:       [M, S] real states; the start states are drawn from them
    judged:              [L, S] every state judged so far (the novelty reference)
    reward_model:        the fitted reward model, or None (then no objective needs it)
    classifier:          the calibrated classifier, or None
    feature_classifier:  the run's classifier, calibrated or not (novelty's features)
    learning:            False in oracle mode, where there is nothing to ask about
    plans:               the agent's own imagined plans since the last round (their first
                         state and actions: where ``near_miss`` starts from)
    """
    counts = {o: n for o, n in settings.synthesis_counts().items() if n > 0}
    if reward_model is None:  # these objectives score with the reward model
        for objective in REWARD_OBJECTIVES:
            counts.pop(objective, None)
    if classifier is None or not plans:  # near_miss needs both
        counts.pop("near_miss", None)
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
        anchors = None
        if objective == "near_miss":
            chosen = [plans[i] for i in rng.choice(len(plans), n)]
            starts = np.stack([p.states[0] for p in chosen])
            anchors = [p.actions for p in chosen]
        else:
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
            anchors=anchors,
        )
    return out
