"""Synthetic teachers: each B-Pref parameter does what it says, within binomial margins.

Segments are built by hand on half_cheetah_safe so their true per-step rewards
are known exactly: with zero actions the reward is the root x displacement per
second, so placing ``qpos.rootx`` gives any reward sequence we like. They are
marked IMAGINED: the teacher judges hypothetical states like real ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from mbrm.feedback.segments import Preference, Segment, SegmentSource
from mbrm.feedback.teachers import PreferenceTeacher, UnacceptableTeacher
from mbrm.run.schema import FeedbackConfig
from mbrm.tasks import CHEETAH_FLIP_ANGLE, CHEETAH_SPEED_LIMIT, get_task

TASK = get_task("half_cheetah_safe")
PRESETS = Path(__file__).resolve().parents[1] / "configs" / "feedback"


def segment_with_rewards(rewards: np.ndarray) -> Segment:
    """An imagined segment whose true per-step rewards are exactly ``rewards`` [T]."""
    rewards = np.asarray(rewards, dtype=np.float64)
    T, dt = len(rewards), TASK.layout.dt
    states = np.zeros((T + 1, TASK.state_dim))  # [T+1, S]
    states[:, TASK.layout.index("qpos.rootx")] = np.concatenate([[0.0], np.cumsum(rewards * dt)])
    return Segment(states, np.zeros((T, TASK.action_dim)), source=SegmentSource.IMAGINED)


def flip_margin(p: float, n: int) -> float:
    """Four binomial standard deviations: a false alarm about once in 16,000 runs."""
    return 4.0 * math.sqrt(p * (1 - p) / n)


def test_rewards_are_the_hidden_true_reward_on_imagined_states(rng):
    r = rng.normal(size=7)
    teacher = PreferenceTeacher(TASK)
    np.testing.assert_allclose(teacher.rewards(segment_with_rewards(r)), r, atol=1e-9)


def test_oracle_prefers_higher_return_and_calls_exact_ties_equal(rng):
    teacher = PreferenceTeacher(TASK)
    for _ in range(200):
        a, b = rng.normal(size=(2, 5))
        want = Preference.LEFT if a.sum() > b.sum() else Preference.RIGHT
        assert teacher.answer(segment_with_rewards(a), segment_with_rewards(b)) is want
    same = segment_with_rewards(np.ones(5))
    assert teacher.answer(same, same) is Preference.EQUAL


def test_mistake_flips_about_ten_percent(rng):
    n, eps = 3000, 0.1
    oracle = PreferenceTeacher(TASK, seed=1)
    mistaken = PreferenceTeacher(TASK, eps_mistake=eps, seed=1)
    pairs = [tuple(segment_with_rewards(x) for x in rng.normal(size=(2, 5))) for _ in range(n)]
    truth = oracle.answer_many(pairs)
    noisy = mistaken.answer_many(pairs)
    flipped = np.mean([t is not m for t, m in zip(truth, noisy, strict=True)])
    assert abs(flipped - eps) <= flip_margin(eps, n)
    assert all(m in (Preference.LEFT, Preference.RIGHT) for m in noisy)


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("gap", [0.0, 0.4, 1.5])
def test_boltzmann_choice_matches_bradley_terry(beta, gap):
    n = 2000
    teacher = PreferenceTeacher(TASK, beta=beta, seed=int(10 * beta + gap * 100))
    left = segment_with_rewards(np.full(4, 1.0 + gap / 4))  # return 4 + gap
    right = segment_with_rewards(np.full(4, 1.0))  # return 4
    answers = teacher.answer_many([(left, right)] * n)
    p_left = 1.0 / (1.0 + math.exp(-beta * gap))
    freq = np.mean([a is Preference.LEFT for a in answers])
    assert abs(freq - p_left) <= flip_margin(p_left, n)


def test_myopic_teacher_weighs_later_steps_more():
    # Left earns 2.1 at its first step, right 2.0 at its last: equal elsewhere.
    early = np.zeros(10)
    early[0] = 2.1
    late = np.zeros(10)
    late[-1] = 2.0
    left, right = segment_with_rewards(early), segment_with_rewards(late)
    assert PreferenceTeacher(TASK, gamma=1.0).answer(left, right) is Preference.LEFT
    # gamma = 0.9: 2.1 * 0.9**9 = 0.81 against 2.0 * 1.
    assert PreferenceTeacher(TASK, gamma=0.9).answer(left, right) is Preference.RIGHT


def test_skip_when_both_segments_are_below_threshold():
    teacher = PreferenceTeacher(TASK, skip_threshold=0.1)
    low_a, low_b = segment_with_rewards(np.full(5, 0.05)), segment_with_rewards(np.full(5, -1.0))
    high = segment_with_rewards(np.full(5, 0.15))
    assert teacher.answer(low_a, low_b) is Preference.CANNOT_TELL
    assert teacher.answer(low_a, high) is Preference.RIGHT
    assert teacher.answer(high, low_b) is Preference.LEFT
    # 0 disables skipping even when both returns are negative.
    assert PreferenceTeacher(TASK).answer(low_a, low_b) is Preference.LEFT


def test_equal_when_mean_gap_below_threshold_and_never_flipped():
    base = segment_with_rewards(np.full(5, 1.0))
    close = segment_with_rewards(np.full(5, 1.09))  # mean gap 0.09 < 0.1
    far = segment_with_rewards(np.full(5, 1.2))
    teacher = PreferenceTeacher(TASK, equal_threshold=0.1)
    assert teacher.answer(close, base) is Preference.EQUAL
    assert teacher.answer(far, base) is Preference.LEFT
    always_wrong = PreferenceTeacher(TASK, equal_threshold=0.1, eps_mistake=1.0)
    assert always_wrong.answer(close, base) is Preference.EQUAL
    assert always_wrong.answer(far, base) is Preference.RIGHT


def test_same_seed_same_answers_and_answer_many_matches_answer(rng):
    pairs = [tuple(segment_with_rewards(x) for x in rng.normal(size=(2, 3))) for _ in range(50)]
    kw = {"beta": 1.0, "eps_mistake": 0.2}
    one = PreferenceTeacher(TASK, seed=3, **kw)
    sequential = [one.answer(a, b) for a, b in pairs]
    assert PreferenceTeacher(TASK, seed=3, **kw).answer_many(pairs) == sequential
    assert PreferenceTeacher(TASK, seed=4, **kw).answer_many(pairs) != sequential


def test_describe_records_every_parameter():
    t = PreferenceTeacher(TASK, beta=2.0, gamma=0.9, eps_mistake=0.1, skip_threshold=0.3, seed=7)
    assert t.describe() == {
        "kind": "synthetic_preference",
        "task": "half_cheetah_safe",
        "beta": 2.0,
        "gamma": 0.9,
        "eps_mistake": 0.1,
        "skip_threshold": 0.3,
        "equal_threshold": 0.0,
        "seed": 7,
    }


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"eps_mistake": 1.5}, "eps_mistake"),
        ({"gamma": 0.0}, "gamma"),
        ({"beta": float("nan")}, "beta"),
        ({"equal_threshold": -0.1}, "equal_threshold"),
    ],
)
def test_bad_parameters_are_rejected(kwargs, word):
    with pytest.raises(ValueError, match=word):
        PreferenceTeacher(TASK, **kwargs)


def test_non_finite_segment_is_an_error():
    bad = segment_with_rewards(np.ones(3))
    bad.states[1, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        PreferenceTeacher(TASK).answer(bad, segment_with_rewards(np.ones(3)))


@pytest.mark.parametrize("name", ["oracle", "noisy", "mistake", "myopic", "skip", "equal"])
def test_presets_instantiate_with_b_pref_values(name):
    expected = {
        "oracle": {},
        "noisy": {"beta": 1.0},
        "mistake": {"eps_mistake": 0.1},
        "myopic": {"gamma": 0.9},
        "skip": {"skip_threshold": 0.1},
        "equal": {"equal_threshold": 0.1},
    }[name]
    path = PRESETS / f"{name}.yaml"
    preset = FeedbackConfig(**OmegaConf.to_container(OmegaConf.load(path)))
    assert preset.kind == "synthetic"
    teacher = PreferenceTeacher(TASK, **preset.teacher_arguments())
    want = PreferenceTeacher(TASK, **expected).describe()
    assert teacher.describe() == want
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            assert "#" in line, f"{path.name}: key without a comment: {line!r}"


# ---------------------------------------------------------------------- unacceptable teacher


def speed_segment(speeds: np.ndarray) -> Segment:
    """Segment whose state t has forward speed ``speeds[t]`` (unacceptable above the limit)."""
    states = np.zeros((len(speeds), TASK.state_dim))
    states[:, TASK.layout.index("qvel.rootx")] = speeds
    return Segment(states, np.zeros((len(speeds) - 1, TASK.action_dim)))


def test_exact_labels_and_first_unacceptable():
    teacher = UnacceptableTeacher(TASK)
    seg = speed_segment(np.array([1.0, 2.0, CHEETAH_SPEED_LIMIT + 0.5, 1.0, 4.0]))
    np.testing.assert_array_equal(teacher.label(seg), [False, False, True, False, True])
    assert teacher.first_unacceptable(seg) == 2
    assert teacher.first_unacceptable(speed_segment(np.ones(4))) is None
    flipped = speed_segment(np.ones(3))
    flipped.states[1:, TASK.layout.index("qpos.rooty")] = CHEETAH_FLIP_ANGLE + 0.1
    assert teacher.first_unacceptable(flipped) == 1


def test_error_rates_hold_within_binomial_margin():
    n = 4000
    fnr, fpr = 0.2, 0.05
    teacher = UnacceptableTeacher(TASK, false_negative_rate=fnr, false_positive_rate=fpr, seed=2)
    speeds = np.where(np.arange(n) % 2 == 0, 5.0, 0.0)  # alternate unacceptable / fine
    flags = teacher.label(speed_segment(speeds))
    truth = TASK.unacceptable(speed_segment(speeds).states)
    missed = np.mean(~flags[truth])
    false_alarm = np.mean(flags[~truth])
    assert abs(missed - fnr) <= flip_margin(fnr, n // 2)
    assert abs(false_alarm - fpr) <= flip_margin(fpr, n // 2)
    assert teacher.describe()["false_negative_rate"] == fnr


def test_unacceptable_teacher_rejects_bad_rates():
    with pytest.raises(ValueError, match="false_positive_rate"):
        UnacceptableTeacher(TASK, false_positive_rate=-0.1)
