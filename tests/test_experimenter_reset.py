"""The experimenter's reset (experiment.reset_on_unacceptable): a fallen robot is put
back, the episode goes on within its step budget, and no segment spans the reset."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from constraints.sets import ConstraintSet
from mbrm.episodes import RandomExplorer, Recorder, run_episode
from mbrm.replay import ReplayBuffer
from mbrm.settings import LoopSettings
from mbrm.tasks import get_task


def _random_episode(reset: bool, seed: int = 0):
    task = get_task("inverted_pendulum")
    replay = ReplayBuffer(task.state_dim, task.action_dim, capacity=200)
    explorer = RandomExplorer(
        task, ConstraintSet([], task.state_dim, task.action_dim), np.random.default_rng(seed)
    )
    out = run_episode(
        task,
        explorer,
        seed=seed,
        length=150,
        generator=torch.Generator().manual_seed(seed),
        recorder=Recorder(replay, 0, [], 0, 5),
        reset_on_unacceptable=reset,
    )
    return task, replay, out


def test_reset_keeps_the_budget_and_breaks_segments():
    task, replay, out = _random_episode(True)
    assert out["steps"] == 150 and len(replay) == 150
    # random actions topple the pole within a few dozen steps: several resets
    assert out["resets"] >= 3
    # one unacceptable step per fall, none lying on the floor afterwards
    assert out["unacceptable_steps"] == out["resets"] + int(
        task.unacceptable(replay.next_states[149])
    )
    s, _, s2 = replay.arrays()
    # after each reset the next transition starts from a fresh, acceptable start state
    falls = np.flatnonzero(task.unacceptable(s2))[:-1]
    assert not task.unacceptable(s[falls + 1]).any()
    assert (np.abs(s[falls + 1][:, 1]) < 0.05).all()  # the pole starts near upright
    row_of = {int(st): i for i, st in enumerate(replay.step[:150])}
    segments = replay.sample_segments(1000, 5, np.random.default_rng(0))
    assert segments
    for seg in segments:
        # a segment's transitions chain: each starts where the previous one ended
        rows = [row_of[seg.meta["step"] + k] for k in range(5)]
        for r, r_next in itertools.pairwise(rows):
            assert np.array_equal(replay.next_states[r], replay.states[r_next])


def test_no_reset_lies_on_the_floor_and_is_reproducible():
    _, _, plain = _random_episode(False)
    assert plain["resets"] == 0 and plain["unacceptable_steps"] > 100
    _, r1, a = _random_episode(True, seed=3)
    _, r2, b = _random_episode(True, seed=3)
    assert a == b and np.array_equal(r1.arrays()[0], r2.arrays()[0])


def test_setting_rejects_non_booleans():
    with pytest.raises(ValueError, match="reset_on_unacceptable must be true or false"):
        LoopSettings(reset_on_unacceptable="yes")


class _FittedReward:
    """A fitted reward model that predicts a state's pole angle (any order will do)."""

    fitted = True

    def predict(self, s, a, s2):
        r = torch.as_tensor(np.asarray(s2)[..., 1], dtype=torch.float32)
        return r, torch.zeros_like(r)


def test_a_replay_of_ties_leaves_the_reward_accuracy_undefined_not_the_run_stopped():
    """An upright pendulum earns 1 a step, so every pair of its segments is a tie: the
    held-out preference accuracy is NaN (a run with the reset once stopped here)."""
    from mbrm.evaluation import model_metrics

    task = get_task("inverted_pendulum")
    replay = ReplayBuffer(task.state_dim, task.action_dim, capacity=200)
    rng = np.random.default_rng(0)
    for t in range(120):  # upright, the cart wandering: every step earns 1
        s = np.array([0.01 * t, 0.0, 0.0, 0.0])
        replay.add(s, rng.uniform(-1, 1, 1), s + np.array([0.01, 0.0, 0.0, 0.0]), 0, t)
    out = model_metrics(
        task,
        replay,
        replay.arrays(),
        reward_model=_FittedReward(),
        classifier=None,
        segment_length=5,
        rng=np.random.default_rng(1),
    )
    assert np.isnan(out["reward_accuracy"]) and np.isnan(out["reward_spearman"])
