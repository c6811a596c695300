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

from dataclasses import dataclass, field

import numpy as np

from mbrm.feedback.gatherers import FeedbackGatherer
from mbrm.feedback.queries import ACQUISITIONS, PairQuery, constraint_uncertainty, select_pairs
from mbrm.feedback.segments import FeedbackKind, Segment, SegmentSource
from mbrm.feedback.store import FeedbackStore
from mbrm.synthesis import SYNTHESIS_OBJECTIVES


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
    synthesis_objectives: list[str] = field(
        default_factory=lambda: ["uncertainty", "novelty", "min_reward"]
    )
    realism: float = 1.0
    label_budget: int = 2000

    def __post_init__(self) -> None:
        key = "experiment.solicit"
        allowed = (*ACQUISITIONS, "random")
        for name, n in self.preferences.items():
            if name not in allowed:
                raise ValueError(
                    f"{key}.preferences has an unknown acquisition {name!r}; "
                    f"expected some of {', '.join(allowed)}"
                )
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"{key}.preferences.{name} must be an integer >= 0, got {n!r}")
        for name, low in (
            ("unacceptable", 0),
            ("segment_length", 1),
            ("real_candidates", 0),
            ("synthesised", 0),
            ("label_budget", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key}.{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.realism, int | float) and 0 <= self.realism < float("inf")):
            raise ValueError(f"{key}.realism must be a number >= 0, got {self.realism!r}")
        unknown = [o for o in self.synthesis_objectives if o not in SYNTHESIS_OBJECTIVES]
        if unknown:
            raise ValueError(
                f"{key}.synthesis_objectives has unknown objectives {unknown}; expected some of "
                f"{', '.join(SYNTHESIS_OBJECTIVES)}"
            )
        repeated = sorted(
            {o for o in self.synthesis_objectives if list(self.synthesis_objectives).count(o) > 1}
        )
        if repeated:
            raise ValueError(f"{key}.synthesis_objectives lists {repeated} more than once")
        if self.synthesised and not self.synthesis_objectives:
            raise ValueError(f"{key}.synthesised > 0 needs at least one synthesis objective")
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


def solicit_round(
    *,
    store: FeedbackStore,
    pool: list[Segment],
    settings: SolicitSettings,
    round_index: int,
    rng: np.random.Generator,
    reward_model,
    classifier,
    gatherer: FeedbackGatherer,
    labelled_states: np.ndarray,
    replay_states: np.ndarray | None = None,
) -> RoundReport:
    """Choose queries from ``pool`` and store them, with the gatherer's answers.

    labelled_states: [L, S] every state judged so far (read once a round by the caller)
    replay_states:   [M, S] the real states seen, for the novelty scale (None: unscaled)
    """
    report = RoundReport()
    used = store.count_labels()
    remaining = settings.label_budget - used
    if remaining <= 0 or len(pool) < 2:
        return report
    scale = None
    if replay_states is not None and len(replay_states):
        scale = np.maximum(replay_states.std(0), 1e-3)
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
        answered = gatherer.preference(pool[q.left], pool[q.right])
        if answered is None:
            store.add_query(
                FeedbackKind.PREFERENCE,
                ids,
                acquisition=q.acquisition,
                score=score,
                loop_round=round_index,
            )
            report.pending += 1
            continue
        answer, who = answered
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
        judgement = gatherer.unacceptable(pool[i])
        if judgement is None:
            store.add_query(
                FeedbackKind.UNACCEPTABLE, (seg_id(i),), acquisition=acq, loop_round=round_index
            )
            report.pending += 1
            continue
        label, who = judgement
        store.add_labelled_query(
            FeedbackKind.UNACCEPTABLE,
            (seg_id(i),),
            label,
            who,
            acquisition=acq,
            loop_round=round_index,
        )
        report.unacceptable += 1
    for i in seg_ids:
        src = pool[i].source.value
        report.by_source[src] = report.by_source.get(src, 0) + 1
    return report
