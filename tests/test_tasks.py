"""Invariants over every task: spaces, determinism, hidden reward, rendering, and the
standard gymnasium environments (check_env, gymnasium.make, ids, layouts)."""

import dataclasses
import importlib
import warnings

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from mbrm import tasks as T
from mbrm.tasks import TASKS, get_task

NAMES = sorted(TASKS)


# The one recommendation of gymnasium's checker a task may not follow: InvertedPendulum's
# actuator range is +-3 (gymnasium's own InvertedPendulum-v5 too), and rescaling it would
# change the action every run, world model and planner works in.
def check_env_strictly(env: gym.Env) -> None:
    """gymnasium's check_env with every warning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env)


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
    s, _ = env.reset()
    assert env.observation_space.shape == (task.state_dim,) == s.shape
    assert len(task.layout.names) == task.state_dim == task.layout.nq + task.layout.nv
    low, high = task.action_bounds
    assert env.action_space.shape == (task.action_dim,)
    np.testing.assert_allclose(env.action_space.low, low)
    np.testing.assert_allclose(env.action_space.high, high)
    assert env.observation_space.contains(s)
    for _ in range(20):
        s, r, terminated, _, _ = env.step(rng.uniform(low, high))
        assert np.isfinite(s).all() and not terminated
        assert env.observation_space.contains(s)
        assert np.isfinite(r), "gymnasium's reward, returned as usual (the agent drops it)"


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


# --------------------------------------------------------------------------- gymnasium


GYM_IDS = {
    "inverted_pendulum": "mbrm/InvertedPendulum-v0",
    "reacher_keepout": "mbrm/ReacherKeepout-v0",
    "half_cheetah_safe": "mbrm/HalfCheetahSafe-v0",
    "hopper_safe": "mbrm/HopperSafe-v0",
}


@pytest.mark.parametrize("name", NAMES)
def test_the_task_env_passes_gymnasiums_check_env(name):
    check_env_strictly(get_task(name).make_env(0))


def test_actions_are_normalised_onto_the_actuator_range():
    """The agent acts in [-1, 1]; the pendulum's [-3, 3] actuator gets 3 a, the others'
    [-1, 1] actuators the action itself (bit for bit)."""
    for name in NAMES:
        env = get_task(name).make_env(0)
        assert (env.action_space.low == -1).all() and (env.action_space.high == 1).all()
    env = get_task("inverted_pendulum").make_env(0)
    env.reset(seed=0)
    env.step(np.array([0.5]))
    assert env.unwrapped.data.ctrl[0] == 1.5
    env = get_task("half_cheetah_safe").make_env(0)
    env.reset(seed=0)
    a = np.full(6, 0.1)
    env.step(a)
    assert (env.unwrapped.data.ctrl == a).all()


@pytest.mark.parametrize("name", NAMES)
def test_gymnasium_make_builds_the_task_env(name, rng):
    task = get_task(name)
    assert task.gym_id == GYM_IDS[name]
    assert gym.spec(task.gym_id).max_episode_steps == task.episode_length
    env = gym.make(GYM_IDS[name])
    assert env.spec.id == GYM_IDS[name] and env.spec.max_episode_steps == task.episode_length
    check_env_strictly(env.unwrapped)
    agent_env = task.make_env(0)
    assert agent_env.spec.id == GYM_IDS[name]
    assert agent_env.spec.max_episode_steps == task.episode_length
    # the same environment: same resets, same states and rewards for the same actions
    s, _ = env.reset(seed=4)
    s_agent, _ = agent_env.reset(seed=4)
    np.testing.assert_array_equal(s, s_agent)
    low, high = task.action_bounds
    for a in rng.uniform(low, high, size=(10, task.action_dim)):
        s, r, *_ = env.step(a)
        s_agent, r_agent, *_ = agent_env.step(a)
        np.testing.assert_array_equal(s, s_agent)
        assert r == r_agent


def test_the_agent_env_truncates_at_the_episode_length(rng):
    task = get_task("reacher_keepout")
    for env in (task.make_env(0), gym.make(task.gym_id)):
        env.reset(seed=0)
        flags = [env.step(env.action_space.sample())[3] for _ in range(task.episode_length)]
        assert flags == [False] * (task.episode_length - 1) + [True]


def test_the_first_reset_without_a_seed_uses_make_envs_seed():
    task = get_task("hopper_safe")
    s, _ = task.make_env(3).reset()
    np.testing.assert_array_equal(s, task.make_env(0).reset(seed=3)[0])


def test_reacher_keepout_through_gymnasium_make_keeps_its_disc_and_reset_hook():
    env = gym.make("mbrm/ReacherKeepout-v0")
    model = env.unwrapped.model
    assert mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "keepout") >= 0
    center = np.array(T.KEEPOUT_CENTER)
    for seed in range(200):
        s, _ = env.reset(seed=seed)
        assert np.linalg.norm(s[2:4] - center) >= T.KEEPOUT_RADIUS + T.KEEPOUT_TARGET_MARGIN


def test_registration_happens_on_import_and_is_idempotent():
    before = {n: get_task(n) for n in NAMES}
    ids = set(gym.registry)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when an id is registered twice
        importlib.reload(T)
        for task in before.values():
            assert T.register_task(task) is task
    assert set(gym.registry) == ids
    assert {n: T.get_task(n) for n in NAMES} == before
    for name, gym_id in GYM_IDS.items():
        assert gym.spec(gym_id).kwargs == {"task": name}
    other = dataclasses.replace(get_task("hopper_safe"))
    with pytest.raises(T.TaskDefinitionError, match="already registered"):
        T.register_task(other)


# What the four tasks wrote by hand before their layouts were derived from the model.
HAND_WRITTEN_LAYOUTS = {
    "inverted_pendulum": (("slider", "hinge"), (), (), 0.04),
    "reacher_keepout": (("joint0", "joint1", "target_x", "target_y"), (), (0,), 0.02),
    "half_cheetah_safe": (
        ("rootx", "rootz", "rooty", "bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot"),
        (0,),
        (2,),
        0.05,
    ),
    "hopper_safe": (
        ("rootx", "rootz", "rooty", "thigh_joint", "leg_joint", "foot_joint"),
        (0,),
        (2,),
        0.008,
    ),
}


@pytest.mark.parametrize("name", NAMES)
def test_layouts_derived_from_the_model_equal_the_hand_written_ones(name):
    joints, excluded, periodic, dt = HAND_WRITTEN_LAYOUTS[name]
    layout = get_task(name).layout
    assert layout.names == tuple(f"qpos.{j}" for j in joints) + tuple(f"qvel.{j}" for j in joints)
    assert layout.excluded == excluded and layout.periodic == periodic
    assert layout.dt == pytest.approx(dt, abs=1e-12)
    assert get_task(name).excluded_inputs is None  # nothing hand-written any more


@pytest.mark.parametrize("name", NAMES)
def test_each_task_composes_with_its_own_experiment_preset(name):
    """`mbrm train task=NAME` picks configs/experiment/NAME.yaml (typed and checked);
    experiment=... on the command line still chooses another schedule."""
    from omegaconf import OmegaConf

    from mbrm.resources import config_dir
    from mbrm.run import compose_config, run_settings

    assert (config_dir() / "experiment" / f"{name}.yaml").is_file()
    cfg = compose_config([f"task={name}"])
    settings = run_settings(cfg)
    preset = OmegaConf.load(config_dir() / "experiment" / f"{name}.yaml")
    for key, value in preset.items():
        if key != "defaults":
            assert OmegaConf.select(cfg.experiment, key) == value, key
    assert settings.experiment.iterations == cfg.experiment.iterations
    default = compose_config([f"task={name}", "experiment=default"]).experiment
    assert default == compose_config(["experiment=default"]).experiment
