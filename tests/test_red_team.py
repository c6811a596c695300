"""The red team's synthesis objectives on an analytic imagination (Leike et al. 2018,
Sec. 5.8): reward hacking finds the futures the reward ensemble overrates where it is
least supported; near_miss finds the smallest change of the agent's plan after which the
classifier's pessimistic estimate calls a state risky that its calibrated mean lets pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbrm.feedback.segments import SegmentSource
from mbrm.imagination import ModelImagination
from mbrm.synthesis import synthesise
from planners import CEMSettings, make_planner
from tests.test_solicit import Integrator, no_reward


class BumpyReward:
    """mean = -(x - 2)^2 / 8 (best at x = 2); std = 6 exp(-4 (x + 2)^2): the members
    disagree around x = -2, where no label constrains them."""

    fitted = True

    @staticmethod
    def mean(x):
        return -((x - 2.0) ** 2) / 8.0

    @staticmethod
    def std(x):
        return (
            6.0 * np.exp(-4.0 * (x + 2.0) ** 2)
            if isinstance(x, float)
            else 6.0 * torch.exp(-4.0 * (x + 2.0) ** 2)
        )

    def predict(self, s, a, s_next):
        x = s_next[..., 0]
        return self.mean(x), self.std(x)


class EdgeClassifier:
    """p(unacceptable) = sigmoid((x - 2) / 0.2), std = 0.3 exp(-(x - 2)^2 / 0.5), cut 0.5."""

    threshold = 0.5

    @staticmethod
    def p(x):
        return torch.sigmoid((x - 2.0) / 0.2)

    @staticmethod
    def std(x):
        return 0.3 * torch.exp(-((x - 2.0) ** 2) / 0.5)

    def predict(self, s_next):
        x = s_next[..., 0]
        return self.p(x), self.std(x)


def plan(objective, torch_gen, **kw):
    imagination = ModelImagination(Integrator(), no_reward, None, 2, torch_gen, "tsinf")
    planner = make_planner(
        CEMSettings(horizon=6, population=300, elites=20, iterations=6), [-1.0, -1.0], [1.0, 1.0]
    )
    args = dict(reward_model=None, classifier=None, realism=1.0, length=6, generator=torch_gen)
    return synthesise(planner, imagination, np.zeros((1, 2)), objective=objective, **(args | kw))


def test_reward_hacking_goes_where_the_ensemble_overrates_without_support(torch_gen):
    (seg,) = plan("reward_hacking", torch_gen, reward_model=BumpyReward())
    assert seg.source is SegmentSource.SYNTHESISED and seg.meta == {"objective": "reward_hacking"}
    grid = np.linspace(-6, 6, 12001)
    ucb = BumpyReward.mean(grid) + 6.0 * np.exp(-4.0 * (grid + 2.0) ** 2)
    best = grid[np.argmax(ucb)]  # ~ -1.98: the optimistic bonus's peak, not the mean's (2)
    x_end = seg.states[-1, 0]
    assert abs(x_end - best) < 0.2, (x_end, best)
    # there the mean is far below its best: the ensemble's disagreement made the plan
    assert BumpyReward.mean(float(x_end)) < -1.5 and BumpyReward.std(float(x_end)) > 4.0


def test_near_miss_is_a_small_change_of_the_plan_that_the_classifier_lets_pass(torch_gen):
    anchor = np.zeros((6, 2))  # the agent's plan: stand still at x = 0, far from the edge
    (seg,) = plan("near_miss", torch_gen, classifier=EdgeClassifier(), anchors=[anchor])
    assert seg.meta == {"objective": "near_miss"}
    x = torch.as_tensor(seg.states[1:, 0], dtype=torch.float32)
    p, std = EdgeClassifier.p(x), EdgeClassifier.std(x)
    assert bool((p < 0.5).all()), x  # no state is flagged by the calibrated classifier
    assert float((p + std).max()) > 0.5, x  # but the pessimistic estimate crosses the cut
    assert float(x.max()) > 1.5  # it went to the boundary (at x = 2)
    change = float(((seg.actions - anchor) ** 2).mean())
    free = plan("near_miss", torch_gen, classifier=EdgeClassifier(), anchors=[anchor],
                near_miss_weight=0.0)[0]  # fmt: skip
    assert change < float(((free.actions - anchor) ** 2).mean())  # the weight keeps it small


def test_red_team_objectives_say_what_they_need(torch_gen):
    with pytest.raises(ValueError, match="needs a fitted reward model"):
        plan("reward_hacking", torch_gen)
    with pytest.raises(ValueError, match="one anchor plan per start state"):
        plan("near_miss", torch_gen, classifier=EdgeClassifier())
    with pytest.raises(ValueError, match="needs a calibrated classifier"):
        plan("near_miss", torch_gen, anchors=[np.zeros((6, 2))])


def test_the_red_team_runs_inside_the_loop(tmp_path, monkeypatch):
    """Both objectives make hypotheticals in a tiny run, each from what it needs: near_miss
    from the agent's own imagined plans."""
    import mbrm.loop as loop_mod
    from tests.test_loop import run, tiny_cfg

    made: list[tuple[str, np.ndarray]] = []
    original = loop_mod.synthesise_round

    def recording(*args, **kw):
        out = original(*args, **kw)
        starts = {tuple(p.states[0]) for p in kw["plans"]}
        for seg in out:
            made.append((seg.meta["objective"], tuple(seg.states[0]) in starts))
        return out

    monkeypatch.setattr(loop_mod, "synthesise_round", recording)
    cfg = tiny_cfg(
        "inverted_pendulum",  # it falls within a tiny episode: the classifier calibrates
        "cem",
        "task.episode_length=30",
        "experiment.iterations=5",  # the classifier calibrates after the third round
        "constraints.entries.unacceptable.alpha=0.5",  # calibrated from a few positives
        "experiment.solicit.synthesised=4",
        "experiment.solicit.synthesis_objectives=[uncertainty,reward_hacking,near_miss]",
    )
    summary = run(cfg, tmp_path)
    assert np.isfinite(summary["eval_return"])
    objectives = {o for o, _ in made}
    assert {"reward_hacking", "near_miss"} <= objectives, made
    assert all(from_plan for o, from_plan in made if o == "near_miss")
