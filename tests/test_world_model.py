"""World model: learns one-step dynamics, propagates particles as specified."""

import io

import numpy as np
import pytest
import torch

from mbrm.replay import ReplayBuffer, collect_random
from mbrm.tasks import get_task
from mbrm.world_model import WorldModel


def _fit(task, buf, seed=0, **kw):
    wm = WorldModel(
        task.state_dim,
        task.action_dim,
        input_mask=task.layout.input_mask,
        ensemble_size=5,
        elites=3,
        hidden=128,
        layers=3,
        seed=seed,
    )
    report = wm.fit(*buf.arrays(), generator=torch.Generator().manual_seed(seed), **kw)
    return wm, report


# A random policy drops the pendulum onto its hinge stop within ~10 steps, after
# which impacts dominate; short episodes keep the data in the balancing regime.
DATA = {"inverted_pendulum": (300, 10), "half_cheetah_safe": (20, 100)}


@pytest.mark.parametrize("name", sorted(DATA))
def test_heldout_one_step_error_far_below_no_change(name):
    task = get_task(name)
    episodes, length = DATA[name]
    train = collect_random(task, episodes, seed=0, episode_length=length)
    test = collect_random(task, max(episodes // 5, 2), seed=10_000, episode_length=length)
    wm, report = _fit(task, train, max_epochs=60)
    err = wm.one_step_error(*test.arrays())
    assert err["ratio"] >= 10, err
    assert len(report.elites) == 3 and report.epochs >= 1


def test_same_seed_same_weights():
    task = get_task("half_cheetah_safe")
    buf = collect_random(task, 3, seed=1, episode_length=60)
    a, _ = _fit(task, buf, seed=4, max_epochs=3)
    b, _ = _fit(task, buf, seed=4, max_epochs=3)
    c, _ = _fit(task, buf, seed=5, max_epochs=3)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert any(
        not torch.equal(va, vc)
        for va, vc in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


def _quiet_model(seed=0):
    """Random-weight model with negligible aleatoric noise: particles differ only by member."""
    wm = WorldModel(4, 2, ensemble_size=4, elites=4, hidden=32, layers=2, seed=seed)
    with torch.no_grad():
        wm.max_logvar.fill_(-40.0)
        wm.min_logvar.fill_(-60.0)
    return wm


def _single_member_rollout(wm, e, s0, actions):
    s = s0.clone()
    out = [s]
    for t in range(actions.shape[0]):
        x = wm._inputs(s[None], actions[t][None])
        mean, _ = wm(x.unsqueeze(0).expand(wm.ensemble_size, -1, -1))
        s = s + wm.target_norm.inverse(mean[e, 0])
        out.append(s)
    return torch.stack(out)


def test_tsinf_keeps_one_member_per_particle_ts1_mixes(torch_gen):
    wm = _quiet_model()
    s0 = torch.randn(4, generator=torch_gen)
    actions = torch.randn(1, 6, 2, generator=torch_gen)
    members = torch.stack(
        [_single_member_rollout(wm, e, s0, actions[0]) for e in range(4)]
    )  # [E, H+1, S]

    def matches_a_member(traj):
        return min((traj - m).abs().max().item() for m in members) < 1e-4

    tsinf = wm.rollout(s0, actions, particles=8, generator=torch_gen, propagation="tsinf")
    assert tsinf.shape == (1, 8, 7, 4)
    assert all(matches_a_member(tsinf[0, p]) for p in range(8))
    ts1 = wm.rollout(s0, actions, particles=8, generator=torch_gen, propagation="ts1")
    assert not all(matches_a_member(ts1[0, p]) for p in range(8))


def test_expectation_is_the_elite_mean_iterated(torch_gen):
    wm = _quiet_model()
    s0 = torch.randn(4, generator=torch_gen)
    actions = torch.randn(3, 5, 2, generator=torch_gen)
    out = wm.rollout(s0, actions, particles=2, generator=torch_gen, propagation="expectation")
    s = s0.expand(3, 4)
    for t in range(5):
        s = wm.mean_next_state(s, actions[:, t])
        torch.testing.assert_close(out[:, 0, t + 1], s.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 0], out[:, 1])


def test_rollout_seeded_padded_and_bfloat16(torch_gen):
    wm = WorldModel(5, 2, ensemble_size=5, elites=3, hidden=32, layers=2, seed=0)
    s0 = torch.zeros(5)
    actions = torch.rand(7, 4, 2, generator=torch_gen)  # 7 * 5 particles is not a multiple of 3
    a = wm.rollout(s0, actions, particles=5, generator=torch.Generator().manual_seed(1))
    b = wm.rollout(s0, actions, particles=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (7, 5, 5, 5) and torch.isfinite(a).all()
    bf = wm.rollout(
        s0, actions, particles=5, generator=torch.Generator().manual_seed(1), dtype="bfloat16"
    )
    assert bf.dtype == torch.float32
    torch.testing.assert_close(bf[:, :, 1], a[:, :, 1], atol=0.1, rtol=0.1)


def _reference_rollout(wm, s0, actions, particles, generator, propagation, dtype):
    """Trajectory sampling written plainly, step by step, as PETS Sec. 5 describes it."""
    N, H, _ = actions.shape
    net, E, S, B = wm._elite_net(dtype), wm.num_elites, wm.state_dim, N * particles
    per = -(-B // E)
    candidate = torch.arange(B) // particles
    cur = s0.expand(B, S).clone()
    out = [cur]
    slot = wm._deal(B, per * E - B, generator)
    for t in range(H):
        if propagation == "ts1" and t > 0:
            slot = wm._deal(B, per * E - B, generator)
        x = wm._inputs(cur[slot], actions[candidate[slot], t]).view(E, per, -1)
        mean, logvar = wm._gaussian(net(x))
        noise = torch.randn(E, per, S, generator=generator)
        delta = wm.target_norm.inverse(mean + noise * torch.exp(0.5 * logvar))
        nxt = torch.empty_like(cur)
        nxt[slot[:B]] = cur[slot][:B] + delta.view(E * per, S)[:B]
        cur = nxt
        out.append(cur)
    return torch.stack(out, 1).view(N, particles, H + 1, S)


@pytest.mark.parametrize("propagation", ["ts1", "tsinf"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_in_place_trajectory_sampling_equals_the_plain_steps(torch_gen, propagation, dtype):
    """The rollout's preallocated, in-place steps are the same arithmetic as the plain ones."""
    input_mask = np.array([False, True, True, True, True])
    periodic_mask = np.array([False, False, True, False, False])
    wm = WorldModel(
        5,
        2,
        input_mask=input_mask,
        periodic_mask=periodic_mask,
        ensemble_size=4,
        elites=3,
        hidden=32,
        layers=2,
        seed=0,
    )
    with torch.no_grad():  # normalisers that are not the identity, noise that matters
        d = wm.input_norm.mean.numel()  # 3 plain state features, sin and cos, 2 actions
        wm.input_norm.mean.copy_(torch.randn(d, generator=torch_gen))
        wm.input_norm.std.copy_(torch.rand(d, generator=torch_gen) + 0.5)
        wm.target_norm.mean.copy_(torch.randn(5, generator=torch_gen) * 0.1)
        wm.target_norm.std.copy_(torch.rand(5, generator=torch_gen) + 0.5)
        wm.max_logvar.fill_(-1.0)
    s0 = torch.randn(5, generator=torch_gen)
    actions = torch.rand(7, 4, 2, generator=torch_gen)  # 7 * 5 particles is not a multiple of 3
    got = wm.rollout(
        s0,
        actions,
        particles=5,
        generator=torch.Generator().manual_seed(3),
        propagation=propagation,
        dtype=dtype,
    )
    want = _reference_rollout(
        wm, s0, actions, 5, torch.Generator().manual_seed(3), propagation, dtype
    )
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_bad_arguments_are_clear_errors():
    wm = WorldModel(4, 2, ensemble_size=3, elites=2, hidden=16, layers=1)
    g = torch.Generator()
    with pytest.raises(ValueError, match="unknown propagation"):
        wm.rollout(
            torch.zeros(4), torch.zeros(2, 3, 2), particles=2, generator=g, propagation="ts2"
        )
    with pytest.raises(ValueError, match="actions have 3 dimensions"):
        wm.rollout(torch.zeros(4), torch.zeros(2, 3, 3), particles=2, generator=g)
    with pytest.raises(ValueError, match="fit expects"):
        wm.fit(np.zeros((20, 4)), np.zeros((20, 1)), np.zeros((20, 4)), generator=g)
    with pytest.raises(ValueError, match="non-finite"):
        wm.fit(np.full((20, 4), np.nan), np.zeros((20, 2)), np.zeros((20, 4)), generator=g)
    with pytest.raises(ValueError, match="elites"):
        WorldModel(4, 2, ensemble_size=3, elites=4)


def test_state_dict_round_trip_with_weights_only():
    task = get_task("inverted_pendulum")
    buf = collect_random(task, 30, seed=2, episode_length=10)
    wm, _ = _fit(task, buf, max_epochs=3)
    f = io.BytesIO()
    torch.save(wm.state_dict(), f)
    f.seek(0)
    other = WorldModel(
        task.state_dim, task.action_dim, ensemble_size=5, elites=3, hidden=128, layers=3, seed=9
    )
    other.load_state_dict(torch.load(f, weights_only=True))
    s, a, _ = buf.arrays()
    s, a = torch.tensor(s[:10], dtype=torch.float32), torch.tensor(a[:10], dtype=torch.float32)
    torch.testing.assert_close(other.mean_next_state(s, a), wm.mean_next_state(s, a))


def test_replay_save_load_and_segments(tmp_path, rng):
    task = get_task("reacher_keepout")
    buf = collect_random(task, 3, seed=0, episode_length=20)
    path = tmp_path / "replay.npz"
    buf.save(path)
    back = ReplayBuffer.load(path)
    for x, y in zip(buf.arrays(), back.arrays(), strict=True):
        np.testing.assert_array_equal(x, y)
    segs = back.sample_segments(10, 8, rng)
    assert len(segs) == 10
    for seg in segs:
        assert seg.states.shape == (9, task.state_dim) and seg.actions.shape == (8, task.action_dim)
        # consecutive: each next state is the following start state, within one episode
        s, _, s2 = back.arrays()
        i = np.flatnonzero((s == seg.states[0]).all(1))[0]
        np.testing.assert_array_equal(seg.states[1:], s2[i : i + 8])
    (tmp_path / "junk.npz").write_bytes(b"not a buffer")
    with pytest.raises(ValueError, match="not an mbrm replay buffer"):
        ReplayBuffer.load(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="do not match"):
        buf.add(np.zeros(3), np.zeros(2), np.zeros(3), 0, 0)


def test_replay_with_damaged_array_header_is_refused(tmp_path):
    """Every byte of every array header, flipped: a clear ValueError or the same data."""
    buf = collect_random(get_task("reacher_keepout"), 1, seed=0, episode_length=5)
    good = tmp_path / "replay.npz"
    buf.save(good)
    raw = good.read_bytes()
    starts = [i for i in range(len(raw)) if raw.startswith(b"{'descr'", i)]
    assert len(starts) >= 5
    bad = tmp_path / "bad.npz"
    refused = 0
    for start in starts:
        for pos in range(start, raw.index(b"\n", start) + 1):
            damaged = bytearray(raw)
            damaged[pos] ^= 0xFF
            bad.write_bytes(bytes(damaged))
            try:
                back = ReplayBuffer.load(bad)
            except ValueError as e:
                assert "not an mbrm replay buffer" in str(e) or str(bad) in str(e)
                refused += 1
            else:
                for x, y in zip(buf.arrays(), back.arrays(), strict=True):
                    np.testing.assert_array_equal(x, y)
    assert refused > 0


def test_replay_wraps_around_oldest_first():
    buf = ReplayBuffer(1, 1, capacity=3)
    for i in range(5):
        buf.add(np.array([i]), np.array([0.0]), np.array([i + 1]), 0, i)
    assert len(buf) == 3
    np.testing.assert_array_equal(buf.arrays()[0][:, 0], [2, 3, 4])
