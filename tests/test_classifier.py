"""Side-constraint classifier: conformal recall guarantee on half_cheetah_safe states.

Data: real HalfCheetah episodes under periodic gaits of random amplitude,
frequency and phase (plus some uniform-random-action episodes); about a fifth
of the episodes flip the cheetah, so roughly 9% of states are unacceptable.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from constraints.classifier import ConstraintClassifier
from mbrm.tasks import get_task

TASK = get_task("half_cheetah_safe")
SEEDS = (0, 1, 2, 3, 4)
ALPHAS = (0.05, 0.1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls run faster on one thread than fighting for two shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def cheetah_states(
    seed: int = 0, n_episodes: int = 150, length: int = 120
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per episode: states [length+1, S] and hidden unacceptable flags [length+1]."""
    rng = np.random.default_rng(seed)
    low, high = TASK.action_bounds
    env = TASK.make_env(seed)
    dt = TASK.layout.dt
    states, flags = [], []
    for ep in range(n_episodes):
        s, _ = env.reset(seed=seed * 10_000 + ep)
        amplitude = rng.uniform(0.3, 1.0, TASK.action_dim)
        frequency = rng.uniform(0.5, 4.0)  # Hz
        phase = rng.uniform(0.0, 2 * np.pi, TASK.action_dim)
        noise = rng.uniform(0.0, 0.3)
        uniform_random = rng.random() < 0.2
        episode = [s]
        for t in range(length):
            if uniform_random:
                a = rng.uniform(low, high)
            else:
                a = amplitude * np.sin(2 * np.pi * frequency * t * dt + phase)
                a = np.clip(a + noise * rng.normal(size=TASK.action_dim), low, high)
            s, *_ = env.step(a)
            episode.append(s)
        states.append(np.array(episode))
        flags.append(TASK.unacceptable(states[-1]))
    return states, flags


def split(seed: int):
    """Train on half the episodes; split the other half's states at random into
    calibration and test, which makes those two exchangeable (the conformal premise)."""
    states, flags = cheetah_states()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(states))
    train, rest = order[: len(order) // 2], order[len(order) // 2 :]
    x_rest = np.concatenate([states[i] for i in rest])
    y_rest = np.concatenate([flags[i] for i in rest])
    perm = rng.permutation(len(x_rest))
    cal, test = perm[: len(perm) // 2], perm[len(perm) // 2 :]
    return (
        (np.concatenate([states[i] for i in train]), np.concatenate([flags[i] for i in train])),
        (x_rest[cal], y_rest[cal]),
        (x_rest[test], y_rest[test]),
    )


def new_classifier(seed: int = 0, **kw) -> ConstraintClassifier:
    return ConstraintClassifier(TASK.state_dim, input_mask=TASK.layout.input_mask, seed=seed, **kw)


@pytest.fixture(scope="module")
def runs():
    """Per seed: a classifier fitted on the train split, and its cal/test splits."""
    out = []
    for seed in SEEDS:
        (x, y), cal, test = split(seed)
        clf = new_classifier(seed)
        clf.fit(x, y, generator=torch.Generator().manual_seed(seed), epochs=20)
        out.append((clf, cal, test))
    return out


@pytest.mark.parametrize("alpha", ALPHAS)
def test_calibrated_recall_is_at_least_one_minus_alpha(runs, alpha):
    """Margin: with n calibration and m test positives, the test recall of one
    seed has variance about alpha (1 - alpha) (1/(n+2) + 1/m) (Beta coverage of
    the conformal threshold, plus binomial test noise); its expectation is at
    least 1 - alpha. The mean over seeds must reach 1 - alpha minus three of its
    standard errors, and every seed 1 - alpha minus four of its own."""
    recalls, variances = [], []
    for clf, (xc, yc), (xt, yt) in runs:
        clf.calibrate(xc, yc, alpha=alpha)
        report = clf.evaluate(xt, yt)
        n, m = int(yc.sum()), int(yt.sum())
        var = alpha * (1 - alpha) * (1 / (n + 2) + 1 / m)
        print(
            f"alpha {alpha}: n_cal {n}, n_test {m}, threshold {report['threshold']:.3f}, "
            f"recall {report['recall']:.3f}, precision {report['precision']:.3f}"
        )
        assert report["recall"] >= 1 - alpha - 4 * math.sqrt(var)
        # The classifier is informative, not a flag-everything rule (prevalence ~0.09).
        assert report["precision"] >= 0.8
        recalls.append(report["recall"])
        variances.append(var)
    mean_margin = 3 * math.sqrt(np.mean(variances) / len(recalls))
    print(f"alpha {alpha}: mean recall {np.mean(recalls):.4f}, margin {mean_margin:.4f}")
    assert np.mean(recalls) >= 1 - alpha - mean_margin


def test_threshold_is_the_conformal_order_statistic(runs):
    clf, (xc, yc), _ = runs[0]
    alpha = 0.05
    threshold = clf.calibrate(xc, yc, alpha=alpha)
    scores = np.sort(clf.predict(xc[yc])[0].numpy())
    k = math.floor(alpha * (len(scores) + 1))
    assert threshold == scores[k - 1] == clf.threshold
    assert clf.calibration.rank == k and clf.calibration.n == len(scores)
    # Flagged means score >= threshold: exactly n - k + 1 calibration positives (no ties).
    assert int(clf.flags(xc[yc]).sum()) == len(scores) - k + 1


def test_evaluate_reports_confusion_counts(runs):
    clf, (xc, yc), (xt, yt) = runs[1]
    clf.calibrate(xc, yc, alpha=0.05)
    r = clf.evaluate(xt, yt)
    assert r["tp"] + r["fn"] == yt.sum() and r["fp"] + r["tn"] == (~yt).sum()
    assert r["recall"] == r["tp"] / (r["tp"] + r["fn"])
    assert r["false_negative_rate"] == pytest.approx(1 - r["recall"])
    assert r["precision"] == r["tp"] / (r["tp"] + r["fp"])
    assert math.isnan(clf.evaluate(xt[~yt], yt[~yt])["recall"])


def test_threshold_unset_until_calibrated_and_cleared_by_fit(runs):
    (x, y), (xc, yc), _ = split(0)
    clf = new_classifier(ensemble_size=2)
    assert clf.threshold is None
    with pytest.raises(RuntimeError, match="calibrate"):
        clf.flags(x[:3])
    clf.fit(x[:2000], y[:2000], generator=torch.Generator().manual_seed(0), epochs=1)
    clf.calibrate(xc, yc)
    assert clf.threshold is not None
    clf.fit(x[:2000], y[:2000], generator=torch.Generator().manual_seed(0), epochs=1)
    assert clf.threshold is None
    with pytest.raises(RuntimeError, match="calibrate"):
        clf.evaluate(xc, yc)


def test_too_few_calibration_positives_is_an_error(runs):
    clf, (xc, yc), _ = runs[0]
    few = np.flatnonzero(yc)[:10]
    negatives = np.flatnonzero(~yc)[:100]
    idx = np.concatenate([few, negatives])
    with pytest.raises(ValueError, match="at least 19 unacceptable"):
        clf.calibrate(xc[idx], yc[idx], alpha=0.05)


def test_class_balanced_weights_and_bad_labels():
    (x, y), _, _ = split(0)
    clf = new_classifier(ensemble_size=2)
    report = clf.fit(x[:3000], y[:3000], generator=torch.Generator().manual_seed(0), epochs=1)
    n_pos = int(y[:3000].sum())
    assert report.pos_weight == pytest.approx(3000 / (2 * n_pos))
    assert report.neg_weight == pytest.approx(3000 / (2 * (3000 - n_pos)))
    assert report.pos_weight * n_pos == pytest.approx(report.neg_weight * (3000 - n_pos))
    with pytest.raises(TypeError, match="boolean"):
        clf.fit(x[:10], y[:10].astype(int), generator=torch.Generator())
    with pytest.raises(ValueError, match="both classes"):
        clf.fit(x[:10], np.zeros(10, dtype=bool), generator=torch.Generator())
    with pytest.raises(ValueError, match=r"\[\.\.\., 18\]"):
        clf.predict(np.zeros((4, 17)))


def test_predict_batched_matches_loop_over_members(runs):
    clf, (xc, _), _ = runs[2]
    x = torch.as_tensor(xc[:300]).reshape(3, 100, -1)
    mean, std = clf.predict(x)  # [3, 100]
    feats = clf.net.features(x.reshape(-1, TASK.state_dim))
    members = torch.stack(
        [torch.sigmoid(clf.net.mlp.select([e])(feats[None])[0, :, 0]) for e in range(5)]
    ).reshape(5, 3, 100)
    torch.testing.assert_close(mean, members.mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(std, members.std(0, unbiased=False), atol=1e-6, rtol=1e-5)
    m16, _ = clf.predict(x, dtype="bfloat16")
    assert (m16 - mean).abs().max() < 0.05


def test_state_dict_round_trip_keeps_threshold(runs):
    clf, (xc, yc), (xt, _) = runs[3]
    clf.calibrate(xc, yc, alpha=0.1)
    fresh = new_classifier(seed=99)
    fresh.predict(xt[:10])  # fills the inference cache that loading must drop
    fresh.load_state_dict(clf.state_dict())
    assert fresh.threshold == clf.threshold and fresh.calibration == clf.calibration
    torch.testing.assert_close(fresh.predict(xt)[0], clf.predict(xt)[0], atol=0, rtol=0)
    torch.testing.assert_close(fresh.flags(xt), clf.flags(xt))
    with pytest.raises(ValueError, match="ensemble_size"):
        new_classifier(ensemble_size=3).load_state_dict(clf.state_dict())
