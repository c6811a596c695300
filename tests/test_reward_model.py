"""Reward ensemble: learns half_cheetah_safe's hidden reward from 500 oracle preferences.

Data: short real episodes of HalfCheetah under periodic gaits of random
amplitude, frequency and phase (plus some uniform-random-action episodes), so
forward speeds spread from running backwards to running forwards. Segments are
4 steps: the true reward is a displacement per step, and preferences over long
segments only pin down its sum, not the per-step values the Spearman test checks.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mbrm.feedback.segments import Preference, Segment
from mbrm.feedback.teachers import PreferenceTeacher
from mbrm.reward_model import RewardEnsemble, preference_accuracy, reward_spearman
from mbrm.tasks import get_task

TASK = get_task("half_cheetah_safe")
SEGMENT_LENGTH = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls run faster on one thread than fighting for two shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=2)
def cheetah_episodes(
    seed: int, n_episodes: int = 400, length: int = 40
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(states [length+1, S], actions [length, A]) per episode, with the env's reward hidden."""
    rng = np.random.default_rng(seed)
    low, high = TASK.action_bounds
    env = TASK.make_env(seed)
    dt = TASK.layout.dt
    episodes = []
    for ep in range(n_episodes):
        state, _ = env.reset(seed=seed * 10_000 + ep)
        amplitude = rng.uniform(0.3, 1.0, TASK.action_dim)
        frequency = rng.uniform(1.0, 4.0)  # Hz
        phase = rng.uniform(0.0, 2 * np.pi, TASK.action_dim)
        noise = rng.uniform(0.0, 0.2)
        uniform_random = rng.random() < 0.2
        states, actions = [state], []
        for t in range(length):
            if uniform_random:
                a = rng.uniform(low, high)
            else:
                a = amplitude * np.sin(2 * np.pi * frequency * t * dt + phase)
                a = np.clip(a + noise * rng.normal(size=TASK.action_dim), low, high)
            state, *_ = env.step(a)
            states.append(state)
            actions.append(a)
        episodes.append((np.array(states), np.array(actions)))
    return episodes


def sample_pairs(
    episodes: list, n: int, rng: np.random.Generator, teacher: PreferenceTeacher
) -> list[tuple[Segment, Segment, Preference]]:
    def segment() -> Segment:
        states, actions = episodes[rng.integers(len(episodes))]
        t = rng.integers(0, len(actions) - SEGMENT_LENGTH + 1)
        return Segment(
            states[t : t + SEGMENT_LENGTH + 1], actions[t : t + SEGMENT_LENGTH], meta={"t": int(t)}
        )

    pairs = [(segment(), segment()) for _ in range(n)]
    return [(a, b, p) for (a, b), p in zip(pairs, teacher.answer_many(pairs), strict=True)]


def transitions(episodes: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.concatenate([e[0][:-1] for e in episodes])
    a = np.concatenate([e[1] for e in episodes])
    s2 = np.concatenate([e[0][1:] for e in episodes])
    return s, a, s2


def new_model(seed: int = 0, **kw) -> RewardEnsemble:
    return RewardEnsemble(
        TASK.state_dim, TASK.action_dim, input_mask=TASK.layout.input_mask, seed=seed, **kw
    )


@pytest.fixture(scope="module")
def trained():
    """A model fitted on 500 oracle preferences, and held-out episodes and preferences."""
    episodes = cheetah_episodes(0)
    train, held_out = episodes[:320], episodes[320:]
    rng = np.random.default_rng(1)
    teacher = PreferenceTeacher(TASK)  # the oracle: noise-free
    train_pairs = sample_pairs(train, 500, rng, teacher)
    test_pairs = sample_pairs(held_out, 500, rng, teacher)
    model = new_model()
    report = model.fit(train_pairs, generator=torch.Generator().manual_seed(0))
    return model, report, train_pairs, test_pairs, held_out


def test_learns_true_reward_from_500_oracle_preferences(trained):
    model, report, _, test_pairs, held_out = trained
    assert report.n_pairs == 500 and report.n_excluded == 0
    assert report.loss_history[-1] < 0.5 * report.loss_history[0]
    accuracy = preference_accuracy(model, test_pairs)
    rho = reward_spearman(model, TASK, *transitions(held_out))
    print(f"held-out preference accuracy {accuracy:.3f}, Spearman {rho:.3f}")
    assert accuracy >= 0.90
    assert rho >= 0.90


def test_output_is_standardised_per_member_on_training_steps(trained):
    model, report, train_pairs, _, _ = trained
    seen = {(id(s.states), s.meta["t"]): s for p in train_pairs for s in p[:2]}
    s = np.concatenate([seg.states[:-1] for seg in seen.values()])
    a = np.concatenate([seg.actions for seg in seen.values()])
    s2 = np.concatenate([seg.states[1:] for seg in seen.values()])
    members = model.predict_members(s, a, s2)  # [E, rows]
    # Each distinct training step is used once here; the fit saw repeats, so allow slack.
    assert members.mean(1).abs().max() < 0.1
    assert ((members.std(1) - 1).abs() < 0.1).all()
    np.testing.assert_allclose(report.out_scale, model.net.out_scale.numpy())


def test_predict_batched_matches_loop_over_members(trained):
    model, _, _, _, held_out = trained
    s, a, s2 = transitions(held_out[:3])
    s, a = s.reshape(3, -1, TASK.state_dim), a.reshape(3, -1, TASK.action_dim)
    s2 = s2.reshape(3, -1, TASK.state_dim)
    mean, std = model.predict(s, a, s2)  # [3, T]
    net = model.net
    feats = net.features(
        torch.as_tensor(s2.reshape(-1, TASK.state_dim)),  # the model reads s_{t+1}
        torch.as_tensor(a.reshape(-1, TASK.action_dim)),
    )
    per_member = []
    for e in range(model.ensemble_size):
        raw = net.mlp.select([e])(feats[None])[0, :, 0]
        per_member.append((raw - net.out_shift[e]) / net.out_scale[e])
    loop = torch.stack(per_member).reshape(model.ensemble_size, *s.shape[:-1])
    torch.testing.assert_close(mean, loop.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, loop.std(0, unbiased=False), atol=1e-5, rtol=1e-5)
    assert mean.shape == std.shape == s.shape[:-1]


def test_bfloat16_inference_tracks_float32(trained):
    model, _, _, _, held_out = trained
    s, a, s2 = transitions(held_out)
    m32, s32 = model.predict(s, a, s2)
    m16, s16 = model.predict(s, a, s2, dtype="bfloat16")
    assert m16.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa: errors of a few percent of the unit reward scale.
    assert (m16 - m32).abs().mean() < 0.05
    assert np.corrcoef(m16.numpy(), m32.numpy())[0, 1] > 0.995
    assert (s16 - s32).abs().mean() < 0.05


def test_state_dict_round_trip_and_cache_invalidation(trained):
    model, _, _, _, held_out = trained
    s, a, s2 = transitions(held_out[:5])
    fresh = new_model(seed=123)
    before = fresh.predict(s, a, s2, dtype="bfloat16")[0]  # fills fresh's inference cache
    fresh.load_state_dict(model.state_dict())
    for dtype in ("float32", "bfloat16"):
        got, want = fresh.predict(s, a, s2, dtype=dtype), model.predict(s, a, s2, dtype=dtype)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=0, rtol=0)
    assert not torch.equal(before, fresh.predict(s, a, s2, dtype="bfloat16")[0])
    assert fresh.fitted
    with pytest.raises(ValueError, match="hidden"):
        new_model(hidden=32).load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="state"):
        new_model(state="current").load_state_dict(model.state_dict())


def test_ties_are_half_targets_and_cannot_tell_is_excluded(rng):
    episodes = cheetah_episodes(0)[:40]
    pairs = sample_pairs(episodes, 60, rng, PreferenceTeacher(TASK))
    marked = [
        (a, b, Preference.EQUAL if i % 3 == 0 else Preference.CANNOT_TELL if i % 3 == 1 else p)
        for i, (a, b, p) in enumerate(pairs)
    ]
    model = new_model(ensemble_size=2)
    report = model.fit(marked, generator=torch.Generator().manual_seed(0), epochs=2)
    assert (report.n_pairs, report.n_ties, report.n_excluded) == (40, 20, 20)
    only_unknown = [(a, b, Preference.CANNOT_TELL) for a, b, _ in pairs]
    with pytest.raises(ValueError, match="cannot tell"):
        model.fit(only_unknown, generator=torch.Generator().manual_seed(0))


def test_same_seed_same_model(rng):
    pairs = sample_pairs(cheetah_episodes(0)[:40], 50, rng, PreferenceTeacher(TASK))
    s, a, s2 = transitions(cheetah_episodes(0)[40:42])
    preds = []
    for _ in range(2):
        model = new_model(seed=5, ensemble_size=3)
        model.fit(pairs, generator=torch.Generator().manual_seed(9), epochs=3)
        preds.append(model.predict(s, a, s2)[0])
    torch.testing.assert_close(preds[0], preds[1], atol=0, rtol=0)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="input_mask"):
        RewardEnsemble(TASK.state_dim, TASK.action_dim, input_mask=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="'current'"):
        new_model(state="previous")
    model = new_model(ensemble_size=2)
    s, a = np.zeros((4, TASK.state_dim)), np.zeros((4, TASK.action_dim))
    with pytest.raises(ValueError, match="pass next_states"):
        model.predict(s, a)
    with pytest.raises(ValueError, match="predict expects"):
        model.predict(s, a, np.zeros((4, TASK.state_dim + 1)))
    with pytest.raises(ValueError, match="leading"):
        model.predict(s, np.zeros((5, TASK.action_dim)), s)
    with pytest.raises(ValueError, match="dtype"):
        model.predict(s, a, s, dtype="float16")
    # a model of r(s_t, a_t) needs no next state
    assert new_model(ensemble_size=2, state="current").predict(s, a)[0].shape == (4,)
    short = Segment(np.zeros((3, 5)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="expects S="):
        model.preference_probability(short, short)


# Random states times a scale up to 1e6 drive predicted returns apart by huge margins.
_PROPERTY_MODEL = new_model(ensemble_size=3, seed=4)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    length=st.integers(1, 6),
)
def test_bradley_terry_is_antisymmetric_and_finite(seed, scale, length):
    gen = np.random.default_rng(seed)

    def segment() -> Segment:
        return Segment(
            gen.normal(size=(length + 1, TASK.state_dim)) * scale,
            gen.uniform(-1, 1, size=(length, TASK.action_dim)),
        )

    a, b = segment(), segment()
    p_ab = _PROPERTY_MODEL.preference_probability(a, b)
    p_ba = _PROPERTY_MODEL.preference_probability(b, a)
    assert p_ab.shape == (3,)
    assert torch.isfinite(p_ab).all() and torch.isfinite(p_ba).all()
    assert ((p_ab >= 0) & (p_ab <= 1)).all()
    torch.testing.assert_close(p_ab, 1 - p_ba, atol=1e-6, rtol=0)
    assert math.isclose(float(_PROPERTY_MODEL.preference_probability(a, a)[0]), 0.5)


def test_lapse_bounds_the_cost_of_a_flipped_answer_and_zero_is_the_plain_loss():
    """Christiano et al. 2017's lapse: P(left) = (1 - lapse) sigmoid(z) + lapse / 2."""
    from torch.nn import functional as F

    from mbrm.preference_pairs import preference_loss

    z = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0])
    t = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0])
    torch.testing.assert_close(preference_loss(z, t), F.binary_cross_entropy_with_logits(z, t))
    p = 0.9 * torch.sigmoid(z) + 0.05
    direct = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    torch.testing.assert_close(preference_loss(z, t, 0.1), direct)
    # a confident model and a flipped answer: bounded by -log(lapse / 2), finite at any logit
    for logit in (30.0, 1e4, 1e30):
        loss = preference_loss(torch.tensor([logit]), torch.tensor([0.0]), 0.1)
        assert math.isfinite(float(loss)) and float(loss) <= -math.log(0.05) + 1e-6
    assert float(preference_loss(torch.tensor([1e4]), torch.tensor([0.0]))) > 1e3


def test_a_lapse_changes_the_fit_and_out_of_range_lapses_are_refused(rng):
    pairs = sample_pairs(cheetah_episodes(0)[:40], 50, rng, PreferenceTeacher(TASK))
    s, a, s2 = transitions(cheetah_episodes(0)[40:42])
    preds = []
    for lapse in (0.0, 0.1):
        model = new_model(seed=5, ensemble_size=2, lapse=lapse)
        model.fit(pairs, generator=torch.Generator().manual_seed(9), epochs=3)
        preds.append(model.predict(s, a, s2)[0])
    assert not torch.allclose(preds[0], preds[1])
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="lapse in \\[0, 1\\)"):
            new_model(lapse=bad)
