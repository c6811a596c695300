"""Plan review (Leike et al. 2018, Sec. 6): the agent's top plans go to a reviewer at the
configured moments; a signed-off plan is executed, a rejection becomes labels and the
agent replans on the refitted classifier or takes its fallback.

A point that moves by its actions (s' = s + a) plans on a known imagination; the hidden
rule flags x > 2, so every plan that heads right for six steps turns unacceptable."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mbrm.agent import Agent
from mbrm.feedback.store import FeedbackStore
from mbrm.imagination import ModelImagination
from mbrm.plan_review import (
    ACQUISITION,
    ProposedPlan,
    ReviewedAgent,
    SyntheticPlanReviewer,
    Verdict,
    reviewed,
)
from mbrm.settings import LoopSettings, PlanReviewSettings
from planners import CEMSettings, make_planner
from tests.test_solicit import Integrator

TOY = SimpleNamespace(name="toy", unacceptable=lambda s: np.asarray(s)[..., 0] > 2.0)


def toward(sign: float):
    """Reward sign * x': the agent heads right (+1) or left (-1); the ensemble's std is
    0.5 everywhere."""

    def reward(s, a, s_next):
        r = sign * s_next[..., 0].float()
        return r, torch.full_like(r, 0.5)

    return reward


def agent(torch_gen, sign: float = 1.0) -> Agent:
    planner = make_planner(
        CEMSettings(horizon=6, population=64, elites=8, iterations=3, top_k=3),
        [-1.0, -1.0],
        [1.0, 1.0],
    )
    imagination = ModelImagination(Integrator(), toward(sign), None, 2, torch_gen, "tsinf")
    return Agent(planner, imagination)


def plan(xs) -> ProposedPlan:
    states = np.stack([np.asarray(xs, dtype=float), np.zeros(len(xs))], 1)
    n = len(xs) - 1
    zeros = np.zeros(n)
    return ProposedPlan(states, np.zeros((n, 2)), zeros, zeros, zeros, {}, True)


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "feedback.sqlite", state_dim=2, action_dim=2) as s:
        yield s


class Scripted:
    """A reviewer that gives set verdicts and records what it was shown."""

    def __init__(self, *verdicts: Verdict) -> None:
        self.verdicts = list(verdicts)
        self.shown: list[list[ProposedPlan]] = []

    def review(self, plans):
        self.shown.append(list(plans))
        return self.verdicts.pop(0)

    def describe(self):
        return {"kind": "scripted"}

    def rng_state(self):
        return None

    def set_rng_state(self, state):
        return None


def reviewed_agent(torch_gen, store, reviewer, refit=None, budget=10_000, **settings):
    return ReviewedAgent(
        agent(torch_gen),
        PlanReviewSettings(**settings),
        reviewer,
        store,
        loop_round=3,
        label_budget=budget,
        refit=refit or (lambda: pytest.fail("no refit expected")),
    )


def test_synthetic_reviewer_signs_off_the_best_ranked_acceptable_plan_and_marks_the_rest():
    plans = [plan([0, 1, 2.5, 3]), plan([0, 1, 1.5, 2]), plan([0, 2.1, 1, 1])]
    verdict = SyntheticPlanReviewer(TOY).review(plans)
    assert verdict == Verdict(signed=1, marks=(2, None, 1))
    all_bad = SyntheticPlanReviewer(TOY).review([plans[0], plans[2]])
    assert all_bad == Verdict(signed=None, marks=(2, 1))


def test_the_reviewers_mistakes_flip_verdicts_at_their_rate_and_follow_its_seed():
    bad, good = plan([0, 1, 3, 3]), plan([0, 1, 1, 1])
    always = SyntheticPlanReviewer(TOY, mistake=1.0, seed=0).review([bad, good])
    assert always.signed == 0 and always.marks[0] is None and always.marks[1] in (1, 2, 3)
    flips = [
        SyntheticPlanReviewer(TOY, mistake=0.2, seed=s).review([good]).signed is None
        for s in range(2000)
    ]
    assert abs(np.mean(flips) - 0.2) < 0.03  # binomial sd 0.009
    again = [SyntheticPlanReviewer(TOY, mistake=0.5, seed=7).review([good, bad]) for _ in range(2)]
    assert again[0] == again[1]
    with pytest.raises(ValueError, match="mistake"):
        SyntheticPlanReviewer(TOY, mistake=1.5)


def test_a_sign_off_executes_the_chosen_plan_and_stores_every_shown_plan_as_a_label(
    torch_gen, store
):
    reviewer = Scripted(Verdict(signed=1, marks=(2, None, None)))
    ra = reviewed_agent(torch_gen, store, reviewer, when=["episode_start"])
    ra.reset()
    action, info = ra.act(np.zeros(2), torch_gen)
    (shown,) = reviewer.shown
    assert len(shown) == 3
    np.testing.assert_allclose(action, shown[1].actions[0])  # plan 1, not the planner's own
    np.testing.assert_allclose(ra.agent._previous.numpy(), info.plan.top_actions[1].numpy())
    for p in shown:  # what the reviewer saw: the plan re-imagined from the real state
        assert p.states.shape == (7, 2) and p.reward_mean.shape == p.risk.shape == (6,)
        np.testing.assert_allclose(p.states[1:], np.cumsum(p.actions, 0), atol=1e-5)
        np.testing.assert_allclose(p.reward_mean, p.states[1:, 0], atol=1e-5)
    assert ra.counts.as_metrics() == {
        "plan_reviews": 1,
        "plan_reviews_signed_off": 1,
        "plan_reviews_rejected": 0,
        "plan_review_labels": 3,
    }
    assert store.count_labels("unacceptable", loop_round=3) == 3
    states, flags = store.unacceptable_states()
    # plan 0 marked from its state 2: states 0, 1 acceptable, 2 unacceptable, later unknown
    assert flags.sum() == 1 and len(states) == 3 + 7 + 7
    np.testing.assert_allclose(states[flags][0], shown[0].states[2])
    # the next step is not a review moment: the agent follows on without asking
    ra.act(shown[1].states[1], torch_gen)
    assert len(reviewer.shown) == 1


def test_a_rejection_replans_on_the_refitted_models_or_takes_the_fallback(torch_gen, store):
    refits = []

    def refit():
        refits.append(store.count_labels())  # the marks are stored before the refit
        return agent(torch_gen, sign=-1.0)  # the refitted models: heading left is safe

    marks = Verdict(signed=None, marks=(3, 3, 3))
    ra = reviewed_agent(torch_gen, store, Scripted(marks), refit=refit, when=["episode_start"])
    ra.reset()
    action, info = ra.act(np.zeros(2), torch_gen)
    assert refits == [3] and action[0] < -0.5 and info.plan.top_actions[0, 0, 0] < 0
    assert ra.counts.rejected == 1 and ra.counts.signed_off == 0

    fb = reviewed_agent(
        torch_gen, store, Scripted(marks), when=["episode_start"], on_reject="fallback"
    )
    fb.reset()
    action, _ = fb.act(np.zeros(2), torch_gen)
    shown = fb.reviewer.shown[0]
    least = int(np.argmin([p.risk.max() for p in shown]))
    np.testing.assert_allclose(action, shown[least].actions[0])
    fb.agent.safe_action = np.array([0.0, -1.0])
    fb.reviewer.verdicts.append(marks)
    fb.reset()
    action, _ = fb.act(np.zeros(2), torch_gen)
    np.testing.assert_allclose(action, [0.0, -1.0])


def test_reviews_come_at_the_configured_moments_within_their_caps(torch_gen, store):
    def held(budget=10_000, **settings):
        reviewer = Scripted(*[Verdict(0, (None, None, None))] * 50)
        ra = reviewed_agent(torch_gen, store, reviewer, budget=budget, **settings)
        ra.reset()
        s = np.zeros(2)
        for _ in range(12):
            s = s + ra.act(s, torch_gen)[0]
        return ra.counts.reviews

    assert held(when=[]) == 0
    assert held(when=["episode_start"]) == 1
    assert held(when=["every"], every=4) == 3  # steps 0, 4, 8
    assert held(when=["every"], every=1, max_per_episode=5) == 5
    assert held(when=["uncertain"], risk_above=0.0, reward_std_above=10.0) == 0  # no risk
    assert held(when=["uncertain"], reward_std_above=0.6, risk_above=1.0) == 0  # std 0.5
    assert held(when=["uncertain"], reward_std_above=0.4, risk_above=1.0) == 5  # every step
    assert held(when=["every"], every=1, budget=0) == 0  # the label budget is spent


def test_settings_refuse_bad_values_with_one_line_naming_the_allowed_ones(torch_gen, store):
    with pytest.raises(ValueError, match=r"plan_review.when has unknown moments \['always'\]"):
        PlanReviewSettings(when=["always"])
    with pytest.raises(ValueError, match="on_reject must be one of replan, fallback"):
        PlanReviewSettings(on_reject="ignore")
    with pytest.raises(ValueError, match=r"plan_review.mistake must be a number in \[0, 1\]"):
        PlanReviewSettings(mistake=2)
    with pytest.raises(ValueError, match=r"plan_review\.plans must be an integer >= 1"):
        PlanReviewSettings(plans=0)
    off = LoopSettings()  # the default: no review, the agent itself acts
    a = agent(torch_gen)
    assert reviewed(a, off, SyntheticPlanReviewer(TOY), store, loop_round=0, refit=None) is a
    on = LoopSettings(plan_review={"when": ["every"]})
    assert isinstance(
        reviewed(a, on, SyntheticPlanReviewer(TOY), store, loop_round=0, refit=None),
        ReviewedAgent,
    )


def test_plan_review_inside_a_run_stores_its_labels_and_repeats_with_the_seed(tmp_path):
    from tests.test_loop import run, tiny_cfg

    extra = (
        "task.episode_length=30",
        "experiment.iterations=3",
        "experiment.plan_review.when=[episode_start,every]",
        "experiment.plan_review.every=10",
    )
    a = run(tiny_cfg("inverted_pendulum", "cem", *extra), tmp_path / "a")
    b = run(tiny_cfg("inverted_pendulum", "cem", *extra), tmp_path / "b")
    assert a["eval_return"] == b["eval_return"] and a["labels"] == b["labels"]
    # the reviews held while acting do not stand in for the round's own queries
    plain = run(tiny_cfg("inverted_pendulum", "cem", *extra[:2]), tmp_path / "plain")
    assert a["labels"]["preference"] == plain["labels"]["preference"] > 0
    assert a["labels"]["unacceptable"] > plain["labels"]["unacceptable"]
    with FeedbackStore(tmp_path / "a" / "feedback.sqlite") as store:
        reviews = store.label_counts("who").get(f"teacher:{ACQUISITION}", 0)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "a" / "metrics.csv")))
    acting = [r for r in rows if r["phase"] == "act"]
    assert reviews == sum(int(r["plan_review_labels"]) for r in acting) > 0
    assert all(1 <= int(r["plan_reviews"]) <= 5 for r in acting)


def test_a_person_is_not_asked_to_review_plans_yet_and_says_so_in_one_line():
    from mbrm.run import ConfigValueError, build_parts, compose_config, run_settings

    cfg = compose_config(["feedback=human", "experiment.plan_review.when=[every]"])
    with pytest.raises(ConfigValueError, match="synthetic reviewer only") as err:
        build_parts(run_settings(cfg))
    assert "\n" not in str(err.value)
    cfg = compose_config(["experiment.plan_review.when=[sometimes]"])
    with pytest.raises(ValueError, match="unknown moments"):  # the CLI prints it in one line
        run_settings(cfg)
