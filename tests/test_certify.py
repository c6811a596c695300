"""Safety certificates: exact bounds, suite checking, perturbed scenarios, and a
certificate that reruns to the same bytes and is verified (Leike et al. 2018, Sec. 6)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from mbrm.certify import (
    SuiteError,
    certify,
    clopper_pearson_upper,
    mean_interval,
    parse_suite,
    to_json,
    verify,
)
from mbrm.certify.perturb import make_scenario_env, scenario_task
from mbrm.certify.suite import load_suite
from mbrm.cli import main as cli_main
from mbrm.tasks import get_task
from tests.test_loop import run, tiny_cfg

REPO = Path(__file__).resolve().parents[1]


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed term by term."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 20), (1, 20), (3, 50), (10, 30), (29, 30)])
def test_clopper_pearson_upper_bound_is_the_exact_binomial_tail(k, n):
    p = clopper_pearson_upper(k, n, 0.95)
    assert binomial_cdf(k, n, p) == pytest.approx(0.05, abs=1e-9)
    assert binomial_cdf(k, n, p - 1e-4) > 0.05 > binomial_cdf(k, n, min(p + 1e-4, 1.0))


def test_clopper_pearson_known_figures_and_edges():
    # 0 failures in n: 1 - alpha ** (1 / n) (the "rule of three" ~ 3 / n for large n)
    assert clopper_pearson_upper(0, 20) == pytest.approx(1 - 0.05 ** (1 / 20), abs=1e-12)
    assert clopper_pearson_upper(0, 20) == pytest.approx(0.139108, abs=1e-6)
    assert clopper_pearson_upper(0, 300) == pytest.approx(0.009937, abs=1e-6)
    assert clopper_pearson_upper(5, 5) == 1.0
    bounds = [clopper_pearson_upper(k, 10) for k in range(11)]
    assert all(a < b for a, b in itertools.pairwise(bounds))
    for bad in [(-1, 5), (6, 5), (0, 0)]:
        with pytest.raises(ValueError):
            clopper_pearson_upper(*bad)


def test_mean_interval_is_the_student_t_interval():
    x = [1.0, 2.0, 4.0, 7.0]
    mean, lo, hi = mean_interval(x)
    sd = np.std(x, ddof=1)
    half = 3.182446305284263 * sd / 2  # t_{0.975, 3} x sd / sqrt(4)
    assert (mean, lo, hi) == pytest.approx((3.5, 3.5 - half, 3.5 + half))
    assert mean_interval([2.0]) == (2.0, 2.0, 2.0)
    assert mean_interval([3.0, 3.0]) == (3.0, 3.0, 3.0)


REACHER = get_task("reacher_keepout")


def suite(**scenarios) -> dict:
    return {"task": "reacher_keepout", "seed": 1, "episodes": 2, "scenarios": scenarios}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (suite(a={"pushh": {}}), "scenario 'a': unknown field 'pushh'; allowed: ['episodes'"),
        (
            suite(a={"start": {"set": {"qpos.elbow": 0.1}}}),
            "scenario 'a': start.set: unknown state dimension 'qpos.elbow'; reacher_keepout has",
        ),
        (
            suite(b={"push": {"body": "arm", "force": [1, 0, 0], "at": [3]}}),
            "scenario 'b': push: unknown body 'arm'; the model has ['body0', 'body1'",
        ),
        (suite(c={"push": {"body": "body1", "at": []}}), "scenario 'c': push.at: expected"),
        (suite(d={"actuator_noise": -0.1}), "scenario 'd': actuator_noise: must be >= 0"),
        (suite(e={"episodes": 0}), "scenario 'e': episodes: must be >= 1"),
        (suite(f={"start": {"set": {"qpos.joint0": [1, 0]}}}), "low 1 is above high 0"),
        (suite(g={"episode_length": "long"}), "episode_length: expected an integer"),
        ({**suite(a={}), "task": "hopper_safe"}, "task 'hopper_safe' does not match"),
        ({**suite(a={}), "scenarioz": {}}, "unknown field 'scenarioz'"),
        (suite(), "'scenarios' must be a non-empty mapping"),
    ],
)
def test_a_malformed_suite_is_one_line_naming_it(raw, message):
    with pytest.raises(SuiteError) as e:
        parse_suite(raw, REACHER)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_a_suite_file_that_is_not_yaml_is_one_line(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("task: [unclosed\n")
    with pytest.raises(SuiteError, match="not valid YAML"):
        load_suite(p, REACHER)
    with pytest.raises(SuiteError, match="suite file not found"):
        load_suite(tmp_path / "absent.yaml", REACHER)


def test_every_example_suite_parses_against_its_task():
    files = sorted((REPO / "configs" / "suites").glob("*.yaml"))
    assert {f.stem for f in files} >= {
        "reacher_keepout",
        "inverted_pendulum",
        "half_cheetah_safe",
        "hopper_safe",
    }
    for f in files:
        task = get_task(yaml.safe_load(f.read_text())["task"])
        s = load_suite(f, task)
        assert len(s.scenarios) >= 3


def rollout(scenario_spec: dict, steps: int = 15, seed: int = 3) -> np.ndarray:
    sc = parse_suite(suite(x=scenario_spec), REACHER).scenarios[0]
    task = scenario_task(REACHER, sc, 50)
    env = make_scenario_env(task, sc, np.random.default_rng(0), seed)
    s, _ = env.reset(seed=seed)
    out = [s]
    for _ in range(steps):
        s, *_ = env.step(np.array([0.3, -0.2]))
        out.append(s)
    env.close()
    return np.array(out)


def test_scenarios_change_the_episode_as_the_suite_says():
    nominal = rollout({})
    assert np.array_equal(nominal, rollout({}))  # the same seeds, the same episode
    started = rollout({"start": {"set": {"qpos.target_x": 0.15, "qvel.joint0": [2.0, 2.0]}}})
    assert started[0, 2] == 0.15 and started[0, 4] == 2.0
    noisy = rollout({"start": {"noise": 0.05}})
    assert 0 < np.abs(noisy[0] - nominal[0]).max() <= 0.05
    push = {"push": {"body": "body1", "torque": [0, 0, 0.5], "at": [5], "duration": 2}}
    pushed = rollout(push)
    assert np.array_equal(pushed[:6], nominal[:6])  # nothing before step 5
    assert not np.allclose(pushed[7], nominal[7])
    shaky = rollout({"actuator_noise": 0.3})
    assert np.array_equal(shaky[0], nominal[0]) and not np.allclose(shaky[1:], nominal[1:])


def test_a_push_is_lifted_after_its_duration():
    sc = parse_suite(
        suite(x={"push": {"body": "body1", "force": [1, 0, 0], "at": [1], "duration": 2}}),
        REACHER,
    ).scenarios[0]
    env = make_scenario_env(scenario_task(REACHER, sc, 50), sc, np.random.default_rng(0), 0)
    env.reset(seed=0)
    applied = []
    for _ in range(5):
        env.step(np.zeros(2))
        applied.append(float(np.abs(env.unwrapped.data.xfrc_applied).sum()))
    env.close()
    assert applied == [0.0, 1.0, 1.0, 0.0, 0.0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("certify")
    run(tiny_cfg("reacher_keepout", "cem"), d / "run")
    spec = suite(
        nominal={},
        shove={"push": {"body": "body1", "torque": [0, 0, 0.3], "at": [4], "duration": 3}},
        shaky={"actuator_noise": 0.2, "episodes": 3},
        longer={"episode_length": 16, "start": {"set": {"qpos.target_x": [-0.2, 0.2]}}},
    )
    path = d / "suite.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return d / "run", path


def test_a_certificate_reruns_to_the_same_bytes_and_verifies(finished_run, tmp_path):
    run_dir, suite_path = finished_run
    cert = certify(run_dir, suite_path)
    assert to_json(certify(run_dir, suite_path)) == to_json(cert)
    names = [s["name"] for s in cert["scenarios"]]
    assert names == ["nominal", "shove", "shaky", "longer"]
    by = {s["name"]: s for s in cert["scenarios"]}
    assert by["shaky"]["episodes"] == 3 and len(by["shaky"]["episode_rows"]) == 3
    assert all(r["steps"] == 16 for r in by["longer"]["episode_rows"])
    assert cert["overall"]["episodes"] == 9
    k = cert["overall"]["unacceptable_episodes"]
    assert cert["overall"]["unacceptable_fraction_upper"] == round(clopper_pearson_upper(k, 9), 6)
    for s in cert["scenarios"]:
        lo, hi = s["return_interval"]
        assert lo <= s["return_mean"] <= hi
        assert s["unacceptable_episodes"] == sum(
            r["unacceptable_steps"] > 0 for r in s["episode_rows"]
        )
    assert len(cert["run"]["checkpoint_sha256"]) == 64
    # the same agent on other environment seeds: a scenario's episodes are its own
    assert (
        by["nominal"]["episode_rows"][0]["env_seed"] != by["shove"]["episode_rows"][0]["env_seed"]
    )

    stored = tmp_path / "certificate.json"
    stored.write_text(to_json(cert))
    assert verify(stored, run_dir, suite_path) == []
    tampered = json.loads(stored.read_text())
    tampered["scenarios"][1]["return_mean"] += 1.0
    tampered["overall"]["unacceptable_episodes"] = 0 if k else 1
    stored.write_text(to_json(tampered))
    assert verify(stored, run_dir, suite_path) == [
        "overall.unacceptable_episodes",
        "scenarios[1].return_mean",
    ]


def test_certify_command_writes_and_verifies(finished_run, tmp_path, capsys):
    run_dir, suite_path = finished_run
    out = tmp_path / "cert"
    cli_main(["certify", str(run_dir), "--suite", str(suite_path), "--out", str(out)])
    assert "certificate written to" in capsys.readouterr().out
    md = (out / "certificate.md").read_text()
    assert "| shove | 2 |" in md and "Clopper-Pearson" in md
    cert = out / "certificate.json"
    cli_main(["certify", "--verify", str(cert), str(run_dir), "--suite", str(suite_path)])
    assert "verified" in capsys.readouterr().out
    cert.write_text(cert.read_text().replace('"seed": 1', '"seed": 2', 1))
    with pytest.raises(SystemExit) as e:
        cli_main(["certify", "--verify", str(cert), str(run_dir), "--suite", str(suite_path)])
    assert e.value.code == 1
    assert "does NOT match" in capsys.readouterr().err


def test_certify_refuses_bad_input_in_one_line(finished_run, tmp_path, capsys):
    run_dir, suite_path = finished_run
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(suite(a={"wind": 3})))
    for argv in (
        ["certify", str(run_dir)],
        ["certify", str(run_dir), "--suite", str(bad)],
        ["certify", str(tmp_path), "--suite", str(suite_path)],
        [
            "certify",
            "--verify",
            str(tmp_path / "none.json"),
            str(run_dir),
            "--suite",
            str(suite_path),
        ],
    ):
        with pytest.raises(SystemExit) as e:
            cli_main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("mbrm: error:") and err.count("\n") == 1
    assert not (run_dir / "certificates").exists()
