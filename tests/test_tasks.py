"""Invariants over every task: spaces, determinism, hidden reward, rendering."""

import importlib

import mujoco
import numpy as np
import pytest
import torch

from mbrm import tasks as T
from mbrm.tasks import TASKS, get_task

NAMES = sorted(TASKS)


def _full_state(env) -> np.ndarray:
    d = env.unwrapped.data
    return np.concatenate([d.qpos, d.qvel])


def _rollout(task, seed: int, actions: np.ndarray) -> np.ndarray:
    env = task.make_env(seed)
    s, _ = env.reset()
    states = [s]
    for a in actions:
        s, *_ = env.step(a)
        states.append(s)
    return np.stack(states)


@pytest.mark.parametrize("name", NAMES)
def test_spaces_match_and_values_finite(name, rng):
    task = get_task(name)
    env = task.make_env(0)
    s, info = env.reset()
    assert env.observation_space.shape == (task.state_dim,) == s.shape
    assert len(task.layout.names) == task.state_dim == task.layout.nq + task.layout.nv
    low, high = task.action_bounds
    assert env.action_space.shape == (task.action_dim,)
    np.testing.assert_allclose(env.action_space.low, low)
    np.testing.assert_allclose(env.action_space.high, high)
    for _ in range(20):
        s, r, terminated, _, info = env.step(rng.uniform(low, high))
        assert np.isfinite(s).all() and not terminated
        assert np.isnan(r), "the agent's environment must hide the reward"
        assert not any(k.startswith("reward") for k in info)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_and_actions_same_trajectory(name, rng):
    task = get_task(name)
    low, high = task.action_bounds
    actions = rng.uniform(low, high, size=(30, task.action_dim))
    a, b = _rollout(task, 7, actions), _rollout(task, 7, actions)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], _rollout(task, 8, actions[:1])[0])


def _kinematics_are_current(env) -> bool:
    """Whether mjData's body positions belong to the current qpos.

    With the RK4 integrator (Reacher) MuJoCo leaves the kinematics of the last
    Runge-Kutta stage in mjData; gymnasium's Reacher reward reads the fingertip
    from there, so near joint limits it is off by up to ~1e-2 from the true
    distance of the state it returns. Such steps are excluded from the comparison.
    """
    m, d = env.unwrapped.model, env.unwrapped.data
    fresh = mujoco.MjData(m)
    fresh.qpos[:], fresh.qvel[:] = d.qpos, d.qvel
    mujoco.mj_kinematics(m, fresh)
    return bool(np.abs(fresh.body("fingertip").xpos - d.body("fingertip").xpos).max() < 5e-6)


@pytest.mark.parametrize("name", NAMES)
def test_true_reward_equals_gymnasium_reward(name, rng):
    task = get_task(name)
    env = task.make_raw_env()
    env.reset(seed=3)
    low, high = task.action_bounds
    s_list, a_list, s2_list, r_list, current = [], [], [], [], []
    for _ in range(200):
        s = _full_state(env)
        a = rng.uniform(low, high).astype(np.float32)
        _, r, terminated, _, _ = env.step(a)
        s_list.append(s), a_list.append(a), s2_list.append(_full_state(env)), r_list.append(r)
        current.append(name != "reacher_keepout" or _kinematics_are_current(env))
        if terminated:
            env.reset(seed=int(rng.integers(1 << 30)))
    ours = task.true_reward(np.array(s_list), np.array(a_list), np.array(s2_list))
    assert ours.shape == (200,)
    keep = np.array(current)
    assert keep.mean() > 0.9
    np.testing.assert_allclose(ours[keep], np.array(r_list)[keep], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_render_of_hand_set_state_equals_real_env(name, rng):
    task = get_task(name)
    env = task.make_raw_env(render_mode="rgb_array", width=96, height=96)
    env.reset(seed=1)
    low, high = task.action_bounds
    for _ in range(5):
        env.step(rng.uniform(low, high))
    # After mj_step, mjData's kinematics belong to the last substep's start, not to
    # the returned state; recompute them so the real env shows the state it is in.
    mujoco.mj_forward(env.unwrapped.model, env.unwrapped.data)
    real = env.render()
    frames = task.render(_full_state(env)[None], width=96, height=96)
    assert frames.shape == (1, 96, 96, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[0], real)
    assert frames.std() > 5, "frame should not be blank"


def test_render_rejects_bad_states():
    task = get_task("reacher_keepout")
    with pytest.raises(ValueError, match="render expects states"):
        task.render(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        task.render(np.full((1, task.state_dim), np.nan))


def _state(task, **named) -> np.ndarray:
    s = np.zeros(task.state_dim)
    if task.name in ("half_cheetah_safe", "hopper_safe"):
        s[task.layout.index("qpos.rootz")] = 1.25 if task.name == "hopper_safe" else 0.0
    for k, v in named.items():
        s[task.layout.index(k.replace("__", "."))] = v
    return s


@pytest.mark.parametrize(
    ("name", "fine", "bad"),
    [
        ("inverted_pendulum", {"qpos__hinge": 0.05}, {"qpos__hinge": 0.5}),
        ("inverted_pendulum", {"qpos__slider": 0.5}, {"qpos__slider": 0.97}),
        ("reacher_keepout", {"qpos__joint0": 0.0}, {"qpos__joint0": -1.165, "qpos__joint1": 2.153}),
        ("half_cheetah_safe", {"qvel__rootx": 2.0}, {"qvel__rootx": 4.0}),
        ("half_cheetah_safe", {"qpos__rooty": 0.5}, {"qpos__rooty": 2.5}),
        ("hopper_safe", {"qvel__rootx": 0.5}, {"qvel__rootx": 1.0}),
        ("hopper_safe", {"qpos__rooty": 0.1}, {"qpos__rootz": 0.5}),
    ],
)
def test_unacceptable_on_hand_made_states(name, fine, bad):
    task = get_task(name)
    flags = task.unacceptable(np.stack([_state(task, **fine), _state(task, **bad)]))
    assert flags.tolist() == [False, True]


def test_reacher_fingertip_matches_mujoco_kinematics(rng):
    task = get_task("reacher_keepout")
    env = task.make_raw_env()
    env.reset(seed=0)
    m, d = env.unwrapped.model, env.unwrapped.data
    states = rng.uniform(-3, 3, size=(50, task.state_dim))
    tip = T.fingertip_position(states)
    for s, xy in zip(states, tip, strict=True):
        d.qpos[:], d.qvel[:] = s[: m.nq], s[m.nq :]
        mujoco.mj_kinematics(m, d)
        np.testing.assert_allclose(d.body("fingertip").xpos[:2], xy, atol=1e-12)
        np.testing.assert_allclose(
            d.body("target").xpos[:2], T.reacher_target_position(s), atol=1e-12
        )


def test_reacher_targets_avoid_the_keepout_disc():
    task = get_task("reacher_keepout")
    env = task.make_env(0)
    center = np.array(T.KEEPOUT_CENTER)
    for seed in range(200):
        s, _ = env.reset(seed=seed)
        assert np.linalg.norm(s[2:4] - center) >= T.KEEPOUT_RADIUS + T.KEEPOUT_TARGET_MARGIN
        assert not task.unacceptable(s)


def test_pendulum_failure_does_not_terminate_the_agent_env():
    task = get_task("inverted_pendulum")
    env = task.make_env(0)
    env.reset()
    flags = []
    for _ in range(60):
        s, _, terminated, _, _ = env.step(np.array([3.0]))
        flags.append(task.unacceptable(s))
        assert not terminated
    assert any(flags), "pushing hard one way must topple the pole"


def test_excluded_inputs_and_unknown_names():
    assert get_task("half_cheetah_safe").layout.excluded == (0,)
    assert not get_task("half_cheetah_safe").layout.input_mask[0]
    with pytest.raises(KeyError, match="registered tasks"):
        get_task("walker")
    with pytest.raises(KeyError, match=r"qvel\.rootx"):
        get_task("half_cheetah_safe").layout.index("speed")
    with pytest.raises(ValueError, match="leading dimensions"):
        get_task("hopper_safe").true_reward(np.zeros((2, 12)), np.zeros((3, 3)), np.zeros((2, 12)))


def test_unlimited_hinges_are_periodic():
    assert get_task("reacher_keepout").layout.periodic == (0,)  # joint0 spins freely
    assert get_task("half_cheetah_safe").layout.periodic == (2,)  # the torso can flip
    assert get_task("inverted_pendulum").layout.periodic == ()  # the hinge is limited


def test_reacher_derived_features_are_the_fingertip_kinematics(rng):
    """The reward model's and classifier's extra inputs equal MuJoCo's kinematics."""
    task = get_task("reacher_keepout")
    derived = {d.name: d for d in task.layout.derived}
    assert list(derived) == [
        "fingertip.x",
        "fingertip.y",
        "fingertip_to_target.x",
        "fingertip_to_target.y",
    ]
    states = rng.uniform(-3, 3, size=(50, task.state_dim))
    tip = T.fingertip_position(states)
    rel = tip - T.reacher_target_position(states)
    s = torch.as_tensor(states)
    for i, axis in enumerate("xy"):
        np.testing.assert_allclose(derived[f"fingertip.{axis}"].fn(s).numpy(), tip[:, i])
        np.testing.assert_allclose(derived[f"fingertip_to_target.{axis}"].fn(s).numpy(), rel[:, i])
    pose = {task.layout.index("qpos.joint0"), task.layout.index("qpos.joint1")}
    assert set(derived["fingertip.x"].inputs) == pose
    # no hidden objective among them: none is the distance or the keep-out flag
    assert not any("dist" in n or "keep" in n for n in derived)
    assert get_task("half_cheetah_safe").layout.derived == ()


@pytest.mark.parametrize("name", NAMES)
def test_each_task_is_defined_in_its_own_module(name):
    """The registry holds each task's module-level definition and hidden rules."""
    module = importlib.import_module(f"mbrm.tasks.{name}")
    task = get_task(name)
    assert module.TASK is task
    assert task.reward_fn is module.true_reward
    assert task.unacceptable_fn is module.unacceptable
