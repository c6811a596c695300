"""Synthesised hypotheticals: objectives, the novelty objective, and their judgements."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mbrm.feedback.gatherers import SyntheticGatherer
from mbrm.feedback.queries import constraint_uncertainty
from mbrm.feedback.segments import Segment, SegmentSource
from mbrm.feedback.store import FeedbackStore
from mbrm.feedback.teachers import PreferenceTeacher, UnacceptableTeacher
from mbrm.imagination import ModelImagination
from mbrm.solicit import SolicitSettings, solicit_round
from mbrm.synthesis import novelty_reference, synthesise
from mbrm.tasks import get_task
from planners import CEMSettings, make_planner


def test_synthesis_counts_split_evenly_in_order():
    s = SolicitSettings(
        synthesised=7, synthesis_objectives=["uncertainty", "novelty", "min_reward"]
    )
    assert s.synthesis_counts() == {"uncertainty": 3, "novelty": 2, "min_reward": 2}
    assert SolicitSettings(synthesised=0).synthesis_counts() == {
        "uncertainty": 0,
        "novelty": 0,
        "min_reward": 0,
    }


@pytest.mark.parametrize(
    "kw, text",
    [
        ({"synthesis_objectives": ["novelty", "curiosity"]}, "curiosity"),
        ({"synthesised": -1}, r"experiment\.solicit\.synthesised must be an integer >= 0"),
        ({"segment_length": 0}, r"experiment\.solicit\.segment_length must be an integer >= 1"),
        ({"preferences": {"curious": 3}}, "unknown acquisition 'curious'"),
        ({"synthesis_objectives": ["novelty", "novelty"]}, "more than once"),
        ({"synthesised": 2, "synthesis_objectives": []}, "at least one synthesis objective"),
    ],
)
def test_bad_synthesis_settings_are_refused(kw, text):
    with pytest.raises(ValueError, match=text):
        SolicitSettings(**kw)


class Integrator:
    """A known world model for planning tests: s' = s + a, the same for every particle."""

    state_dim, action_dim = 2, 2
    target_norm = SimpleNamespace(std=torch.ones(2))

    def rollout(self, state, actions, *, particles, generator, propagation, dtype):
        N, H, _ = actions.shape
        start = state.float().expand(N, 2)
        path = torch.cat([start[:, None], start[:, None] + actions.float().cumsum(1)], 1)
        return path[:, None].expand(N, particles, H + 1, 2).contiguous()


def no_reward(s, a, s_next):
    z = torch.zeros(s_next.shape[:-1])
    return z, z


def test_novelty_synthesis_steers_away_from_judged_states(rng, torch_gen):
    """Judged states fill the right half-plane: a novelty plan from the origin goes left."""
    xs, ys = np.meshgrid(np.linspace(0.0, 6.0, 13), np.linspace(-6.0, 6.0, 25))
    judged = np.stack([xs.ravel(), ys.ravel()], 1)
    features = torch.nn.Identity()
    reference = novelty_reference(judged, features, rng=rng)
    planner = make_planner(
        CEMSettings(horizon=6, population=200, elites=20), [-1.0, -1.0], [1.0, 1.0]
    )
    imagination = ModelImagination(Integrator(), no_reward, None, 2, torch_gen, "tsinf")
    segs = synthesise(
        planner,
        imagination,
        np.zeros((2, 2)),
        objective="novelty",
        reward_model=None,
        classifier=None,
        realism=1.0,
        length=6,
        generator=torch_gen,
        features=features,
        reference=reference,
    )
    assert len(segs) == 2
    for seg in segs:
        assert seg.source is SegmentSource.SYNTHESISED and seg.meta == {"objective": "novelty"}
        assert seg.states.shape == (7, 2)
        # six steps of at most 1: the left edge of reach is x = -6; the plan gets most of it
        assert seg.states[-1, 0] < -3.0, seg.states


def test_novelty_reference_subsamples_and_scales(rng):
    states = np.column_stack([np.arange(5000.0), np.zeros(5000)])
    ref, scale = novelty_reference(states, torch.nn.Identity(), rng=rng, max_states=100)
    assert ref.shape == (100, 2)
    assert scale[1] == pytest.approx(1e-3)  # a constant feature keeps a finite scale
    assert 1000 < float(scale[0]) < 2000  # std of a uniform spread over 0..5000 is ~1443
    with pytest.raises(ValueError, match="at least one reference state"):
        novelty_reference(np.zeros((0, 2)), torch.nn.Identity(), rng=rng)


def test_synthesis_objectives_say_what_they_need(torch_gen):
    imagination = ModelImagination(Integrator(), no_reward, None, 2, torch_gen, "tsinf")
    planner = make_planner(CEMSettings(horizon=3), [-1.0, -1.0], [1.0, 1.0])
    common = dict(classifier=None, realism=1.0, length=3, generator=torch_gen)
    with pytest.raises(ValueError, match="needs a fitted reward model"):
        synthesise(planner, imagination, np.zeros((1, 2)), objective="min_reward",
                   reward_model=None, **common)  # fmt: skip
    with pytest.raises(ValueError, match="needs features and a reference set"):
        synthesise(planner, imagination, np.zeros((1, 2)), objective="novelty",
                   reward_model=None, **common)  # fmt: skip
    with pytest.raises(ValueError, match="unknown objective"):
        synthesise(planner, imagination, np.zeros((1, 2)), objective="curiosity",
                   reward_model=None, **common)  # fmt: skip


def test_every_synthesised_hypothetical_is_judged(tmp_path, rng):
    """With no preference and no extra unacceptable query, the synthesised ones are still asked."""
    task = get_task("reacher_keepout")
    S, A = task.state_dim, task.action_dim

    def segment(source):
        return Segment(rng.normal(size=(5, S)) * 0.1, rng.normal(size=(4, A)) * 0.1, source)

    pool = [segment(SegmentSource.REAL) for _ in range(3)]
    pool += [segment(SegmentSource.SYNTHESISED) for _ in range(2)]
    settings = SolicitSettings(preferences={}, unacceptable=0, segment_length=4)
    with FeedbackStore(tmp_path / "feedback.sqlite") as store:
        report = solicit_round(
            store=store,
            pool=pool,
            settings=settings,
            round_index=0,
            rng=rng,
            reward_model=None,
            classifier=None,
            gatherer=SyntheticGatherer(
                PreferenceTeacher(task, seed=0), UnacceptableTeacher(task, seed=0)
            ),
            labelled_states=store.unacceptable_states()[0],
        )
        assert report.unacceptable == 2 and report.preferences == 0
        queries = [store.get_query(i) for i in range(1, 1 + store.count_queries())]
        assert [q.acquisition for q in queries] == ["synthesised", "synthesised"]
        states, flags = store.unacceptable_states()
        assert len(states) == 10 and len(flags) == 10


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_constraint_uncertainty_takes_a_saturated_threshold(threshold):
    """A threshold calibrated to exactly 0 or 1 (float32 sigmoid saturates) gives finite scores."""

    class Saturated:
        def predict(self, states):
            p = torch.tensor([0.0, 0.5, 1.0])[: len(states)]
            return p, torch.zeros_like(p)

    Saturated.threshold = threshold
    seg = Segment(np.zeros((3, 2)), np.zeros((2, 1)))
    scores = constraint_uncertainty(Saturated(), [seg])
    assert np.isfinite(scores).all() and 0.0 <= scores[0] <= 1.0
