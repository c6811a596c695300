"""The experiment scripts' pipeline: Hydra multirun sweep, reuse, table and plot.

Runs ``benchmarks/exp4_reward_hacking.py --smoke`` (two arms of tiny runs) end to end,
then again to check that finished runs are reused: one seed in ``make test`` (~35 s),
two seeds run two at a time with ``-m slow``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load_sweep():
    """benchmarks/sweep.py by path: the directory is not a package."""
    spec = importlib.util.spec_from_file_location("sweep", BENCH / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sweep"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


sw = _load_sweep()


def _load_benchmark(name: str):
    """An experiment script as a module (it imports ``sweep`` by name)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        capture_output=True,
        text=True,
        cwd=BENCH.parent,
        timeout=300,
    )


@pytest.mark.parametrize(
    "seeds", [(0,), pytest.param((0, 1), marks=pytest.mark.slow)], ids=["one_seed", "two_seeds"]
)
def test_smoke_experiment_end_to_end_and_reuse(tmp_path, seeds):
    listed = ",".join(map(str, seeds))
    args = ("--smoke", "--seeds", listed, "--jobs", "2", "--root", str(tmp_path))
    first = run_script("exp4_reward_hacking.py", *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for arm in ("demo", "frozen_after_2"):
        for seed in seeds:
            run = tmp_path / "reacher_keepout" / arm / f"seed_{seed}"
            summary = json.loads((run / "summary.json").read_text())
            assert summary["seed"] == seed and summary["task"] == "reacher_keepout"
            meta = json.loads((run / "sweep.json").read_text())
            assert "experiment.iterations=5" in meta["overrides"]  # the smoke schedule
    cfg = (tmp_path / "reacher_keepout" / "frozen_after_2" / "seed_0" / "config.yaml").read_text()
    assert "frozen_reward_after: 2" in cfg
    md = (tmp_path / "docs" / "exp4_reward_hacking.md").read_text()
    assert "| reacher_keepout | online feedback |" in md
    assert "| reacher_keepout | reward model frozen after iteration 2 |" in md
    assert (tmp_path / "docs" / "exp4_reward_hacking.png").stat().st_size > 10_000
    assert f"mbrm demo hydra.mode=MULTIRUN seed={listed} " in first.stdout

    # The final reward model, summed per episode, is what the loop logged as the
    # predicted return of every episode planned after the freeze (the same model then).
    frozen = tmp_path / "reacher_keepout" / "frozen_after_2" / "seed_0"
    rec = sw.read_record(sw.Variant("reacher_keepout/frozen_after_2", ()), 0, frozen)
    exp4 = _load_benchmark("exp4_reward_hacking")
    final = exp4.final_model_returns(rec)
    assert len(final) == len(rec.metrics)
    after = rec.column("iteration") > 3  # planned with the model frozen after iteration 2
    assert after.sum() >= 1
    np.testing.assert_allclose(
        final[after], rec.column("predicted_return")[after], rtol=1e-4, atol=1e-3
    )

    again = run_script("exp4_reward_hacking.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count(f"reusing {len(seeds)} finished runs") == 2
    assert "running seeds" not in again.stdout


def test_a_failed_run_names_its_variant_seed_and_log(tmp_path):
    sweep = sw.Sweep(root=tmp_path, seeds=(0,), jobs=1, smoke=True)
    bad = sw.task_variant("reacher_keepout", "bad", "experiment.constraint_mode=bogus")
    with pytest.raises(sw.SweepError) as err:
        sweep.run([bad])
    message = str(err.value)
    assert "reacher_keepout/bad" in message and "seeds [0]" in message
    assert str(tmp_path / "reacher_keepout" / "bad" / "sweep.log") in message
    assert "constraint_mode" in message  # the log's last lines carry the cause


def _finished_run_without_config(sweep, v) -> Path:
    """A run directory of ``v``, seed 0, with its summary and sweep marker only."""
    run = sweep.run_dir(v, 0)
    run.mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    (run / "sweep.json").write_text(json.dumps({"seed": 0, "overrides": sweep.overrides(v)}))
    return run


def test_runs_with_other_overrides_are_not_reused(tmp_path):
    sweep = sw.Sweep(root=tmp_path, seeds=(0,), smoke=True)
    v = sw.task_variant("reacher_keepout", "demo")
    run = _finished_run_without_config(sweep, v)
    assert not sweep._finished(v, 0)  # no config.yaml: nothing says what it computed
    (run / "config.yaml").write_text(OmegaConf.to_yaml(sweep.compose(v, 0)))
    assert sweep._finished(v, 0)
    other = sw.task_variant("reacher_keepout", "demo", "experiment.particles=3")
    assert not sweep._finished(other, 0)
    assert not sw.Sweep(root=tmp_path, seeds=(0,), smoke=False)._finished(v, 0)


def test_a_run_whose_composed_configuration_changed_is_not_reused(tmp_path, capsys):
    """Same overrides, but a default in the config files moved since the run."""
    sweep = sw.Sweep(root=tmp_path, seeds=(0,), smoke=True)
    v = sw.task_variant("reacher_keepout", "demo")
    run = _finished_run_without_config(sweep, v)
    old = sweep.compose(v, 0)
    old.experiment.particles = 99
    old.progress = True  # how a run was started is not part of what it computes
    (run / "config.yaml").write_text(OmegaConf.to_yaml(old))
    assert sw.config_changes(sweep.compose(v, 0), run / "config.yaml") == ["experiment.particles"]
    assert not sweep._finished(v, 0)
    assert "experiment.particles" in capsys.readouterr().out


def test_command_and_smoke_sizes_follow_the_planner():
    sweep = sw.Sweep(root=Path("/runs"), seeds=(0, 1, 2), jobs=2, smoke=True)
    mcts = sw.task_variant("reacher_keepout", "mcts_fast", "planner=mcts_fast")
    cmd = sweep.command(mcts, [1, 2])
    assert cmd[:4] == ["mbrm", "demo", "hydra.mode=MULTIRUN", "seed=1,2"]
    assert "planner.simulations=16" in cmd and "planner.population=12" not in cmd
    assert cmd[-2:] == [
        "hydra.sweep.dir=/runs",
        "hydra.sweep.subdir=reacher_keepout/mcts_fast/seed_${seed}",
    ]
    assert "hydra.launcher.n_jobs=2" in cmd
    assert sweep.compose(mcts).planner.kind == "mcts"
    assert sw.planner_family(sw.task_variant("reacher_keepout", "demo").overrides) == "cem"


def test_mean_sd_ignores_missing_values():
    assert sw.mean_sd([1.0, 3.0]) == "2.000 ± 1.414"
    assert sw.mean_sd([float("nan"), 2.0], ".1f") == "2.0 (n=1/2)"
    assert sw.mean_sd([float("nan")]) == "n/a"


def test_acting_unacceptable_steps_count_the_planners_episodes_only():
    """Random exploration is the same in every arm, so it is left out of the comparison."""
    metrics = [
        {"phase": "explore", "unacceptable_steps": 7.0},
        {"phase": "act", "unacceptable_steps": 2.0},
        {"phase": "act", "unacceptable_steps": 0.0},
        {"phase": "act", "unacceptable_steps": 3.0},
        {"phase": "act"},  # a row without the column counts nothing
    ]
    rec = sw.RunRecord(sw.Variant("t/a", ()), 0, Path("/runs/t/a/seed_0"), {}, metrics)
    assert rec.acting_unacceptable_steps() == 5
    assert math.isnan(rec.column("unacceptable_steps")[-1])


def test_planner_efficiency_counts_what_each_arm_imagines(tmp_path):
    """The efficiency curve's x axis is counted, not assumed: planning every step imagines
    exactly one planner call a step; plan reuse imagines less, and never less than a
    call shared by k steps plus its one-sequence re-checks."""
    arms = "cem_100x3,cem_48x3_k2"
    args = ("--smoke", "--seeds", "0", "--jobs", "1", "--root", str(tmp_path), "--arms", arms)
    done = run_script("planner_efficiency.py", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / "docs" / "planner_efficiency.json").read_text())
    recs = {r["arm"]: r for r in out["records"]}
    assert set(recs) == {"cem_100x3", "cem_48x3_k2"} and out["command"].startswith("python ")
    base, reuse = recs["cem_100x3"], recs["cem_48x3_k2"]
    assert base["replan_every"] == 1 and reuse["replan_every"] == 2
    assert base["transitions_per_step"] == base["transitions_per_planner_call"]
    per_sequence = reuse["transitions_per_planner_call"] / reuse["sequences_per_call"]
    floor = (reuse["transitions_per_planner_call"] + per_sequence) / 2
    assert floor - 1e-9 <= reuse["transitions_per_step"] < reuse["transitions_per_planner_call"]
    assert base["score"] == pytest.approx(
        (base["eval_return"] - base["random_return"])
        / (base["oracle_return"] - base["random_return"])
    )
    assert (tmp_path / "docs" / "planner_efficiency.png").stat().st_size > 0


def test_run_only_keys_do_not_make_a_run_stale(tmp_path):
    sweep = sw.Sweep(root=tmp_path, seeds=(0,), smoke=True)
    v = sw.Variant("reacher_keepout/demo", ("task=reacher_keepout",))
    saved = sweep.compose(v, 0)
    saved.device = "cpu"
    saved.experiment.eval_workers = 2
    path = tmp_path / "config.yaml"
    OmegaConf.save(saved, path)
    assert sw.config_changes(sweep.compose(v, 0), path) == []
    saved.experiment.particles = 3
    OmegaConf.save(saved, path)
    assert sw.config_changes(sweep.compose(v, 0), path) == ["experiment.particles"]
    # a run saved before reward_model.lapse existed computed lapse 0: still the same run
    saved.experiment.particles = sweep.compose(v, 0).experiment.particles
    older = OmegaConf.to_container(saved)
    del older["reward_model"]["lapse"]
    OmegaConf.save(OmegaConf.create(older), path)
    assert sw.config_changes(sweep.compose(v, 0), path) == []
    lapsed = sw.Variant("reacher_keepout/lapse", ("task=reacher_keepout", "reward_model.lapse=0.1"))
    assert sw.config_changes(sweep.compose(lapsed, 0), path) == ["reward_model.lapse"]


def _summary(task: str, eval_return: float, **extra: float) -> dict:
    return {
        "task": task,
        "env_steps": 400,
        "labels": {"preference": 30, "unacceptable": 12},
        "eval_return": eval_return,
        "random_return": 10.0,
        "oracle_return": 90.0,
        "eval_unacceptable_steps": 0,
        "train_unacceptable_steps": 4,
        "wall_seconds": 60.0,
        **extra,
    }


def test_experiment_1_records_pair_each_learned_run_with_its_oracle_mode_run():
    """docs/exp1_preferences.json: one record per task and seed, scored against the
    oracle-mode run of the same task and seed, with the command that reruns each."""
    exp1 = _load_benchmark("exp1_preferences")
    sweep = sw.Sweep(root=Path("/runs"), seeds=(0, 1))
    learned = sw.Variant("t/demo", ("task=t",))
    oracle = sw.Variant("t/oracle_mode", ("task=t", *exp1.ORACLE_MODE))
    meta = {"revision": "abc1234"}
    records = [
        sw.RunRecord(learned, 0, Path("/runs/t/demo/seed_0"), _summary("t", 50.0), [], meta),
        sw.RunRecord(learned, 1, Path("/runs/t/demo/seed_1"), _summary("t", 70.0), [], meta),
        sw.RunRecord(oracle, 0, Path("/runs/t/oracle_mode/seed_0"), _summary("t", 90.0), []),
    ]
    out = exp1.json_records(records, sweep)
    assert [(r["task"], r["seed"]) for r in out] == [("t", 0), ("t", 1)]
    first, second = out
    assert first["score_against_oracle_mode"] == pytest.approx((50 - 10) / (90 - 10))
    assert first["oracle_mode_eval_return"] == 90.0 and first["revision"] == "abc1234"
    assert (first["preference_labels"], first["unacceptable_labels"]) == (30, 12)
    assert first["command"] == "mbrm demo seed=0 task=t"
    assert first["oracle_mode_command"].startswith("mbrm demo seed=0 task=t reward_model=oracle")
    # no oracle-mode run for seed 1: its fields are null, not a made-up score
    assert second["score_against_oracle_mode"] is None and second["oracle_mode_command"] is None
    assert records[2].revision == "unknown"
    json.dumps(out)  # plain JSON types only


def test_teacher_records_score_each_teacher_against_oracle_mode_with_its_own_target():
    """docs/exp_teachers.json: the mistake teacher's target is the task's less 0.05, and a
    seed with unacceptable evaluation steps does not meet it whatever its score."""
    exp = _load_benchmark("exp_teachers")
    sweep = sw.Sweep(root=Path("/runs"), seeds=(0,))
    task = "reacher_keepout"
    oracle_teacher, _, mistake, lapse, oracle_mode = exp.variants([task])
    assert [v.name for v in (oracle_teacher, mistake, lapse, oracle_mode)] == [
        f"{task}/demo",
        f"{task}/teacher_mistake",
        f"{task}/teacher_mistake_lapse",
        f"{task}/oracle_mode",
    ]
    assert "feedback=mistake" in mistake.overrides
    assert {"feedback=mistake", "reward_model.lapse=0.1"} <= set(lapse.overrides)
    records = [
        sw.RunRecord(oracle_teacher, 0, Path("/r/a"), _summary(task, 86.0), []),
        sw.RunRecord(mistake, 0, Path("/r/b"), _summary(task, 82.0, eval_unacceptable_steps=2), []),
        sw.RunRecord(oracle_mode, 0, Path("/r/c"), _summary(task, 90.0), []),
    ]
    first, second = exp.json_records(records, sweep)
    assert (first["teacher"], second["teacher"]) == ("oracle", "mistake")
    assert first["score_against_oracle_mode"] == pytest.approx(76 / 80)
    assert first["target"] == pytest.approx(0.95) and first["meets_target"] is True
    assert second["score_against_oracle_mode"] == pytest.approx(72 / 80)
    assert second["target"] == pytest.approx(0.90) and second["meets_target"] is False
    assert second["command"].startswith("mbrm demo seed=0 task=reacher_keepout")
    assert "| reacher_keepout | mistake |" in exp.table([first, second])
    json.dumps([first, second])


def test_red_team_scores_misses_on_held_out_states_at_the_boundary():
    """Near-boundary states are those one small move turns to the other side of the rule;
    the miss rate counts the unacceptable ones a calibrated classifier lets pass."""
    exp = _load_benchmark("exp_red_team")

    class Line:  # unacceptable: x > 1
        @staticmethod
        def unacceptable(s):
            return s[..., 0] > 1.0

    rng = np.random.default_rng(0)
    pool = rng.uniform(-2.0, 2.0, size=(4000, 2))  # per-dimension std ~1.15
    states, flags = exp.near_boundary_states(Line, pool, rng, scale=0.05)
    assert len(states) > 50 and flags.any() and (~flags).any()
    np.testing.assert_array_equal(flags, states[:, 0] > 1.0)
    assert np.abs(states[:, 0] - 1.0).max() < 0.05 * 1.2 * 6  # within a few noise sds

    class Cut:  # flags x > 1.02: misses the unacceptable states in (1, 1.02]
        threshold = 0.5

        @staticmethod
        def evaluate(s, y):
            flagged = s[:, 0] > 1.02
            fn = int((~flagged & y).sum())
            return {"false_negative_rate": fn / int(y.sum())}

    rate = exp.near_false_negative_rate(Cut, states, flags)
    inside = states[flags, 0]
    assert rate == pytest.approx(float((inside <= 1.02).mean()))
    assert 0.0 < rate < 1.0
    Cut.threshold = None  # not calibrated: no rate, not a made-up number
    assert math.isnan(exp.near_false_negative_rate(Cut, states, flags))


def test_label_budgets_scale_the_demos_queries_and_random_queries_replace_acquisition():
    from types import SimpleNamespace

    exp = _load_benchmark("exp_labels")
    assert exp.apportion({"a": 24, "b": 6, "c": 5, "d": 5}, 10) == {"a": 6, "b": 2, "c": 1, "d": 1}
    assert sum(exp.apportion({"a": 1, "b": 1, "c": 1}, 7).values()) == 7
    demo = SimpleNamespace(
        preferences={"disagreement": 24, "novelty": 6, "min_reward": 5, "max_reward": 5},
        unacceptable=12,
        synthesised=6,
    )
    same = exp.scaled_overrides("acquisition", 1792, demo, 1792.0)  # the demo itself
    assert same == [
        "experiment.solicit.label_budget=1792",
        "experiment.solicit.preferences={disagreement: 24, novelty: 6, min_reward: 5, max_reward: 5}",
        "experiment.solicit.unacceptable=12",
        "experiment.solicit.synthesised=6",
    ]
    small = exp.scaled_overrides("acquisition", 448, demo, 1792.0)  # a quarter
    assert (
        "experiment.solicit.preferences={disagreement: 6, novelty: 2, min_reward: 1, max_reward: 1}"
        in small
    )
    rand = exp.scaled_overrides("random", 448, demo, 1792.0)
    assert "+experiment.solicit.preferences.random=10" in rand
    assert (
        "experiment.solicit.synthesised=0" in rand and "experiment.solicit.unacceptable=0" in rand
    )
    with pytest.raises(ValueError, match="unknown arm"):
        exp.scaled_overrides("greedy", 100, demo, 1792.0)
