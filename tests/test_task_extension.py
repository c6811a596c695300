"""Adding a task without editing mbrm: a YAML task file, a Python module, a bare MuJoCo
model; the example ``tests/task_examples/walker_speed.yaml`` end to end through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import gymnasium.envs.mujoco as gym_mujoco
import mujoco
import numpy as np
import pytest

from mbrm import tasks as T
from mbrm.run.schema import ConfigValueError, TaskConfig
from tests.test_loop import PLANNER, TINY
from tests.test_tasks import check_env_strictly

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "task_examples" / "walker_speed.yaml"
WALKER_JOINTS = (
    "rootx",
    "rootz",
    "rooty",
    "thigh_joint",
    "leg_joint",
    "foot_joint",
    "thigh_left_joint",
    "leg_left_joint",
    "foot_left_joint",
)
# constraints/custom.yaml (the learned classifier and the actuator range) plus the
# task's own speed bound, given on the command line.
WALKER_CONSTRAINTS = [
    "+constraints.entries.speed={kind: state_bounds, dims: [qvel.rootx], upper: [2.3415]}",
]


@pytest.fixture(scope="module")
def walker() -> T.Task:
    return T.load_task_file(EXAMPLE)


def test_the_example_task_file_registers_walker_speed(walker):
    assert T.get_task("walker_speed") is walker
    assert T.load_task_file(str(EXAMPLE)) is walker  # loading again: the same task
    assert walker.gym_id == "mbrm/WalkerSpeed-v0" and walker.episode_length == 1000
    env = gym.make("mbrm/WalkerSpeed-v0")
    assert env.spec.id == "mbrm/WalkerSpeed-v0" and env.spec.max_episode_steps == 1000
    check_env_strictly(env.unwrapped)
    check_env_strictly(walker.make_env(0))


def test_the_walker_env_is_gymnasiums_walker2d_observed_as_full_state(walker, rng):
    ours = walker.make_env(0)
    theirs = gym.make("Walker2d-v5", terminate_when_unhealthy=False).unwrapped
    s, _ = ours.reset(seed=5)
    theirs.reset(seed=5)
    S, A, S2, R = [], [], [], []
    for _ in range(200):
        a = rng.uniform(*walker.action_bounds).astype(np.float32)
        s2, r, terminated, _, _ = ours.step(a)
        _, r_theirs, *_ = theirs.step(a)
        np.testing.assert_array_equal(s2, np.concatenate([theirs.data.qpos, theirs.data.qvel]))
        assert r == r_theirs and not terminated
        S.append(s), A.append(a), S2.append(s2), R.append(r)
        s = s2
    # the hidden reward is gymnasium's Walker2d reward, computed from (s, a, s')
    ours_r = walker.true_reward(np.array(S), np.array(A), np.array(S2))
    np.testing.assert_allclose(ours_r, np.array(R), atol=1e-9, rtol=0)


def test_the_walker_layout_is_derived_from_its_model(walker):
    layout = walker.layout
    names = tuple(f"qpos.{j}" for j in WALKER_JOINTS) + tuple(f"qvel.{j}" for j in WALKER_JOINTS)
    assert layout.names == names
    assert layout.excluded == (0,)  # root x: unbounded and perpendicular to gravity
    assert layout.periodic == (2,)  # the torso's pitch is an unlimited hinge
    assert layout.dt == pytest.approx(0.008)


def test_walker_unacceptable_on_hand_made_states(walker):
    upright = np.zeros(walker.state_dim)
    upright[walker.layout.index("qpos.rootz")] = 1.25
    fallen = upright.copy()
    fallen[walker.layout.index("qpos.rootz")] = 0.5
    tilted = upright.copy()
    tilted[walker.layout.index("qpos.rooty")] = 1.2
    fast = upright.copy()
    fast[walker.layout.index("qvel.rootx")] = 3.0
    flags = walker.unacceptable(np.stack([upright, fallen, tilted, fast]))
    assert flags.tolist() == [False, True, True, True]


def test_the_example_trains_through_the_cli(walker, tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "train",
        "task=custom",
        f"task.file={EXAMPLE.relative_to(ROOT)}",
        *WALKER_CONSTRAINTS,
        *TINY,
        *PLANNER["cem"],
        "experiment.iterations=2",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "MUJOCO_GL": "egl", "PYTHONPATH": str(ROOT)}
    code = f"from mbrm.cli import main; main({args!r})"
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == "walker_speed"
    assert summary["env_steps"] == 3 * 12  # 1 exploration + 2 acting episodes of 12 steps


# --------------------------------------------------------------------------- the CLI's keys


def test_task_file_in_the_config_registers_before_the_name_check(walker):
    assert TaskConfig(file=str(EXAMPLE)).name == "walker_speed"
    assert TaskConfig(name="walker_speed", file=str(EXAMPLE)).name == "walker_speed"
    with pytest.raises(ConfigValueError, match="task=custom"):
        TaskConfig(name="reacher_keepout", file=str(EXAMPLE))
    with pytest.raises(ConfigValueError, match=r"task\.name is not set"):
        TaskConfig()


def test_a_python_module_registers_its_task(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            from mbrm.tasks import Task, register_task

            def reward(s, a, s_next, dt):
                return -np.square(a).sum(-1)

            def unacceptable(s):
                return s[..., 1] < 0.7

            TASK = register_task(Task(
                name="module_hopper", env_id="Hopper-v5", description="stand",
                unacceptable_description="fallen", episode_length=30,
                reward_fn=reward, unacceptable_fn=unacceptable,
            ))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert TaskConfig(name="module_hopper", module="my_tasks").name == "module_hopper"
    task = T.get_task("module_hopper")
    assert gym.make("mbrm/ModuleHopper-v0").spec.max_episode_steps == 30
    assert task.layout.excluded == (0,)
    check_env_strictly(task.make_env(0))
    with pytest.raises(T.TaskDefinitionError, match="cannot import task module 'no_such_pkg'"):
        TaskConfig(name="module_hopper", module="no_such_pkg")


def test_a_bare_mujoco_model_is_a_task(tmp_path, rng):
    xml = Path(gym_mujoco.__file__).parent / "assets" / "hopper.xml"
    (tmp_path / "xml_rules.py").write_text(
        "def reward(s, a, s_next, dt):\n    return (s_next[..., 0] - s[..., 0]) / dt\n\n"
        "def unacceptable(s):\n    return s[..., 1] < 0.7\n"
    )
    (tmp_path / "bare.yaml").write_text(
        f"name: bare_hopper\nxml: {xml}\nepisode_length: 40\nenv_kwargs: {{frame_skip: 4}}\n"
        "reward: xml_rules:reward\nunacceptable: xml_rules:unacceptable\n"
    )
    task = T.load_task_file(tmp_path / "bare.yaml")
    check_env_strictly(task.make_env(0))
    assert task.layout.excluded == (0,) and task.layout.dt == pytest.approx(0.008)
    env = gym.make("mbrm/BareHopper-v0")
    s, _ = env.reset(seed=0)
    a = rng.uniform(*task.action_bounds)
    s2, r, *_ = env.step(a)
    assert r == pytest.approx(float(task.true_reward(s, a, s2)))  # the env's reward is the task's


def test_layouts_of_free_and_ball_joints():
    model = mujoco.MjModel.from_xml_string(
        """
        <mujoco>
          <worldbody>
            <geom type="plane" size="5 5 0.1"/>
            <body name="ball" pos="0 0 1">
              <freejoint name="root"/>
              <geom type="sphere" size="0.1"/>
              <body pos="0 0 0.3">
                <joint name="neck" type="ball"/>
                <geom type="capsule" size="0.05" fromto="0 0 0 0 0 0.2"/>
              </body>
            </body>
          </worldbody>
        </mujoco>
        """
    )
    layout = T.derive_layout(model, frame_skip=1)
    assert layout.names[:11] == (
        *(f"qpos.root.{c}" for c in ("x", "y", "z", "qw", "qx", "qy", "qz")),
        *(f"qpos.neck.{c}" for c in ("qw", "qx", "qy", "qz")),
    )
    assert layout.names[11:] == (
        *(f"qvel.root.{c}" for c in ("x", "y", "z", "wx", "wy", "wz")),
        *(f"qvel.neck.{c}" for c in ("wx", "wy", "wz")),
    )
    assert layout.excluded == (0, 1)  # x and y; the height z matters (gravity, floor)
    assert layout.periodic == ()


# --------------------------------------------------------------------------- malformed files

GOOD = {
    "name": "bad_walker",
    "env": "Walker2d-v5",
    "reward": "walker_speed:true_reward",
    "unacceptable": "walker_speed:unacceptable",
}
MALFORMED = [
    ({"rewrd": "walker_speed:true_reward"}, "unknown key 'rewrd'; valid keys: name, env"),
    ({"reward": "walker_speed.true_reward"}, "reward: 'walker_speed.true_reward' is not a path"),
    ({"reward": "no_such_module:f"}, "reward: cannot import 'no_such_module'"),
    ({"unacceptable": "walker_speed:no_such_fn"}, "unacceptable: module 'walker_speed' has no"),
    ({"reward": "walker_speed:unacceptable"}, "reward: walker_speed:unacceptable must take 4"),
    ({"env": "Walker2d-v99"}, "env: "),
    ({"env": "CartPole-v1"}, "env: CartPole-v1 is not a gymnasium MuJoCo environment"),
    ({"episode_length": 0}, "episode_length must be an integer >= 1, got 0"),
    ({"excluded_inputs": ["qpos.nope"]}, "unknown state dimension 'qpos.nope'"),
    ({"name": "Bad-Name"}, "task name 'Bad-Name' must be lower case"),
    ({"name": "hopper_safe"}, "a different task named 'hopper_safe' is already registered"),
]


@pytest.mark.parametrize(("change", "message"), MALFORMED)
def test_a_malformed_task_file_is_a_one_line_error(change, message, tmp_path):
    import yaml

    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump({**GOOD, **change}))
    (tmp_path / "walker_speed.py").write_text((EXAMPLE.parent / "walker_speed.py").read_text())
    with pytest.raises(T.TaskFileError) as err:
        T.load_task_file(path)
    assert isinstance(err.value, ValueError)
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(path)) and message in text, text


def test_a_missing_required_key_and_a_missing_file(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("name: x\nenv: Walker2d-v5\nreward: a:b\n")
    with pytest.raises(T.TaskFileError, match="missing key 'unacceptable'"):
        T.load_task_file(path)
    with pytest.raises(T.TaskFileError, match="does not exist"):
        T.load_task_file(tmp_path / "nope.yaml")


def test_the_cli_prints_a_malformed_file_as_one_line_with_exit_2(tmp_path, monkeypatch, capsys):
    from mbrm.cli import main

    (tmp_path / "bad.yaml").write_text("name: bad\nenv: Walker2d-v5\nrewrd: x:y\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "task=custom", "task.file=bad.yaml", "constraints=oracle"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mbrm: error: bad.yaml: unknown key 'rewrd'")
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.yaml"]
