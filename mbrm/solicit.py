"""Soliciting feedback: assemble candidate segments, choose queries, get answers.

One round (Leike et al. 2018, Sec. 5.2, 5.7; ReQueST, Reddy et al. 2020, Sec. 3):

1. the pool: imagined segments the planner produced while acting, real segments
   from the replay buffer, and hypotheticals synthesised by planning on an
   acquisition objective (reward-ensemble disagreement plus side-constraint
   uncertainty, minus world-model disagreement as a realism term; novelty, the
   distance to every state judged so far in the classifier's features, which finds
   outcomes no label covers yet; and the lowest predicted reward, which finds the
   behaviour the reward model thinks is worst);
2. acquisition functions choose preference queries and unacceptable-state queries;
3. a synthetic teacher answers at once, or (human mode) queries wait in the store
   for the labelling UI.

Every segment shown in a preference query is also judged for unacceptable states,
as a person marks "unacceptable from this frame" on either clip, and so is every
synthesised hypothetical: it was made to be asked about.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mbrm.feedback.queries import PairQuery, constraint_uncertainty, select_pairs
from mbrm.feedback.segments import FeedbackKind, Labeller, Segment, SegmentSource, UnacceptableLabel
from mbrm.feedback.store import FeedbackStore
from mbrm.imagination import ModelImagination, as_tensor_state
from mbrm.replay import ReplayBuffer

SYNTHESIS_OBJECTIVES = ("uncertainty", "novelty", "min_reward")


@dataclass
class SolicitSettings:
    """How many questions a round asks, and where candidates come from.

    preferences:        acquisition function -> preference queries per round
    unacceptable:       extra unacceptable-state queries per round (constraint uncertainty),
                        at most the pool's segments not already judged with a preference
                        (the demo's ~44-segment pool left ~8 a round of its 12)
    segment_length:     transitions per segment
    real_candidates:    replay segments added to the pool per round
    synthesised:        hypotheticals synthesised per round, split evenly over
                        ``synthesis_objectives`` (the first ones get the remainder)
    synthesis_objectives: acquisition objectives of synthesis, from SYNTHESIS_OBJECTIVES
    realism:            weight of the world-model disagreement penalty in synthesis
    label_budget:       total labels (preferences + unacceptable judgements); stop asking after
    """

    preferences: dict[str, int] = field(
        default_factory=lambda: {"disagreement": 10, "novelty": 4, "min_reward": 3, "max_reward": 3}
    )
    unacceptable: int = 6
    segment_length: int = 15
    real_candidates: int = 30
    synthesised: int = 6
    synthesis_objectives: Sequence[str] = ("uncertainty", "novelty", "min_reward")
    realism: float = 1.0
    label_budget: int = 2000

    def __post_init__(self) -> None:
        unknown = [o for o in self.synthesis_objectives if o not in SYNTHESIS_OBJECTIVES]
        if unknown:
            raise ValueError(
                f"unknown synthesis objectives {unknown}; expected some of {SYNTHESIS_OBJECTIVES}"
            )
        repeated = sorted(
            {o for o in self.synthesis_objectives if self.synthesis_objectives.count(o) > 1}
        )
        if repeated:
            raise ValueError(f"synthesis objectives {repeated} are listed more than once")
        if self.synthesised < 0:
            raise ValueError(f"synthesised must be >= 0, got {self.synthesised}")
        if self.synthesised and not self.synthesis_objectives:
            raise ValueError("synthesised > 0 needs at least one synthesis objective")
        self.synthesis_objectives = tuple(self.synthesis_objectives)

    def synthesis_counts(self) -> dict[str, int]:
        """Objective -> hypotheticals per round (``synthesised`` split evenly, in order)."""
        k = len(self.synthesis_objectives)
        if k == 0:
            return {}
        base, extra = divmod(self.synthesised, k)
        return {o: base + (i < extra) for i, o in enumerate(self.synthesis_objectives)}


@dataclass
class RoundReport:
    preferences: int = 0
    unacceptable: int = 0
    pending: int = 0
    by_acquisition: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)


def imagined_segment(
    top_states: torch.Tensor, top_actions: torch.Tensor, length: int, particle: int = 0
) -> Segment:
    """The best candidate's imagined trajectory (one particle) as a segment."""
    T = min(length, top_actions.shape[1])
    states = top_states[0, particle, : T + 1].double().numpy()
    return Segment(states, top_actions[0, :T].double().numpy(), SegmentSource.IMAGINED)


def novelty_reference(
    states: np.ndarray,
    features: Callable[[torch.Tensor], torch.Tensor],
    *,
    rng: np.random.Generator,
    max_states: int = 2000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference set of the novelty objective: features of ``states`` [L, F] and their scale [F].

    At most ``max_states`` states (a random subset) keep the distance computation cheap;
    the scale is each feature's std over the reference (at least 1e-3).
    """
    if len(states) == 0:
        raise ValueError("the novelty objective needs at least one reference state")
    if len(states) > max_states:
        states = states[np.sort(rng.choice(len(states), max_states, replace=False))]
    with torch.no_grad():
        ref = features(torch.as_tensor(states, dtype=torch.float32)).float()
    scale = ref.std(0, unbiased=False).clamp(min=1e-3) if len(ref) > 1 else torch.ones(ref.shape[1])
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
            res = planner.plan(as_tensor_state(s0), synth, generator=generator)
        seg = imagined_segment(res.top_states, res.top_actions, length)
        out.append(
            Segment(seg.states, seg.actions, SegmentSource.SYNTHESISED, {"objective": objective})
        )
    return out


def solicit_round(
    *,
    store: FeedbackStore,
    pool: list[Segment],
    settings: SolicitSettings,
    round_index: int,
    rng: np.random.Generator,
    reward_model,
    classifier,
    preference_teacher=None,
    unacceptable_teacher=None,
    replay: ReplayBuffer | None = None,
) -> RoundReport:
    """Choose queries from ``pool`` and store them, answered if a teacher is given."""
    report = RoundReport()
    used = store.count_labels()
    remaining = settings.label_budget - used
    if remaining <= 0 or len(pool) < 2:
        return report
    labelled_states, _ = store.unacceptable_states()
    scale = None
    if replay is not None and len(replay):
        scale = np.maximum(replay.arrays()[0].std(0), 1e-3)
    # each preference also judges both segments: 3 labels per query
    budget = dict(settings.preferences)
    total = sum(budget.values())
    if 3 * total > remaining:
        factor = remaining / (3 * total)
        budget = {k: int(v * factor) for k, v in budget.items()}
    pairs: list[PairQuery] = select_pairs(
        pool,
        budget,
        rng=rng,
        reward_model=reward_model,
        classifier=classifier,
        labelled_states=labelled_states,
        state_scale=scale,
    )
    seg_ids: dict[int, int] = {}

    def seg_id(i: int) -> int:
        if i not in seg_ids:
            seg_ids[i] = store.add_segment(pool[i])
        return seg_ids[i]

    judged: set[int] = set()
    for q in pairs:
        ids = (seg_id(q.left), seg_id(q.right))
        report.by_acquisition[q.acquisition] = report.by_acquisition.get(q.acquisition, 0) + 1
        score = float(q.score) if np.isfinite(q.score) else None
        if preference_teacher is None:
            store.add_query(
                FeedbackKind.PREFERENCE,
                ids,
                acquisition=q.acquisition,
                score=score,
                loop_round=round_index,
            )
            report.pending += 1
            continue
        answer = preference_teacher.answer(pool[q.left], pool[q.right])
        who = Labeller.teacher("preference", **preference_teacher.describe())
        store.add_labelled_query(
            FeedbackKind.PREFERENCE,
            ids,
            answer,
            who,
            acquisition=q.acquisition,
            score=score,
            loop_round=round_index,
        )
        report.preferences += 1
        for i in (q.left, q.right):
            judged.add(i)
    # unacceptable judgements: segments shown in preferences, every synthesised
    # hypothetical, plus the most uncertain others
    synthesised = [
        i
        for i, seg in enumerate(pool)
        if seg.source is SegmentSource.SYNTHESISED and i not in judged
    ]
    taken = judged | set(synthesised)
    extra: list[int] = []
    if settings.unacceptable > 0 and classifier is not None and getattr(classifier, "fitted", True):
        scores = constraint_uncertainty(classifier, pool)
        extra = [int(i) for i in np.argsort(-scores) if int(i) not in taken][
            : settings.unacceptable
        ]
    elif settings.unacceptable > 0:
        extra = [int(i) for i in rng.permutation(len(pool)) if int(i) not in taken][
            : settings.unacceptable
        ]
    for i in sorted(judged) + synthesised + extra:
        acq = (
            "with_preference"
            if i in judged
            else "synthesised"
            if i in synthesised
            else "constraint"
        )
        if unacceptable_teacher is None:
            store.add_query(
                FeedbackKind.UNACCEPTABLE, (seg_id(i),), acquisition=acq, loop_round=round_index
            )
            report.pending += 1
            continue
        flags = unacceptable_teacher.label(pool[i])
        who = Labeller.teacher("unacceptable", **unacceptable_teacher.describe())
        store.add_labelled_query(
            FeedbackKind.UNACCEPTABLE,
            (seg_id(i),),
            UnacceptableLabel(flags),
            who,
            acquisition=acq,
            loop_round=round_index,
        )
        report.unacceptable += 1
    for i in seg_ids:
        src = pool[i].source.value
        report.by_source[src] = report.by_source.get(src, 0) + 1
    return report
