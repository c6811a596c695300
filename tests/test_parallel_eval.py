"""The final evaluation in worker processes: the same figures and captures as in one
process, episodes that do not depend on which ran before them, a task defined outside
mbrm rebuilt in the workers, a refused worker count, and failures that raise at once."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mbrm.evaluation import FinalEpisodes, episode_generators, evaluation_seeds
from mbrm.progress import StepProgress
from mbrm.run import FinishedRun, build_loop, compose_config
from mbrm.settings import LoopSettings
from mbrm.workers import (
    EvaluationWorkerError,
    available_cores,
    evaluation_jobs,
    pack,
    resolve_workers,
    run_evaluation,
    share_jobs,
)
from tests.test_loop import PLANNER, TINY

ROOT = Path(__file__).resolve().parent.parent
TIMING = ("plan_seconds_per_step", "wall_seconds")
WALKER = ROOT / "tests" / "task_examples" / "walker_speed.yaml"


def _train(run_dir: Path, *overrides: str) -> dict[str, Any]:
    cfg = compose_config(["planner=cem", *TINY, *PLANNER["cem"], *overrides])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return build_loop(cfg, run_dir).run()


def _figures(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in TIMING}


def _evaluate(loop: Any, workers: int, filmed: int = 0) -> tuple[dict, dict]:
    """The comparison of ``loop``'s final models on ``workers`` processes."""
    settings = dataclasses.replace(loop.settings, eval_workers=workers)
    parts = dataclasses.replace(loop.parts, settings=settings)
    bar = StepProgress(1, desc="", enabled=False)
    return run_evaluation(parts, loop.classifier_ready, filmed, bar)


def _rows(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {
        p: [{k: v for k, v in r.items() if k != "plan_seconds"} for r in rs]
        for p, rs in rows.items()
    }


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fail a test that waits on workers for more than two minutes instead of hanging."""

    def expired(*_: Any) -> None:
        raise TimeoutError("the evaluation waited on its workers for 120 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny run whose final evaluation ran in two workers, its first episode filmed."""
    d = tmp_path_factory.mktemp("parallel") / "run"
    _train(
        d,
        "task=reacher_keepout",
        "experiment.eval_episodes=2",
        "experiment.video_episodes=1",
        "experiment.eval_workers=2",
    )
    return d


def test_two_workers_give_the_figures_and_videos_of_one(run_dir: Path, deadline) -> None:
    two = json.loads((run_dir / "summary.json").read_text())
    first = evaluation_seeds(0, 2)[0]
    assert (run_dir / "videos" / f"eval_{first}.mp4").is_file()  # captured in a worker
    run = FinishedRun(run_dir)
    run.config.experiment.eval_workers = 1
    one = run.loop().final_evaluation()
    assert _figures(one) == _figures(two)
    assert one["wall_seconds"] == two["wall_seconds"]  # re-evaluating keeps the job's


def test_per_episode_rows_and_captures_match(run_dir: Path, deadline) -> None:
    loop = FinishedRun(run_dir).loop()
    rows_1, captures_1 = _evaluate(loop, 1, filmed=2)
    rows_2, captures_2 = _evaluate(loop, 2, filmed=2)
    assert _rows(rows_1) == _rows(rows_2)
    assert [len(rows_1[p]) for p in ("learned", "random", "reference")] == [2, 2, 2]
    assert sorted(captures_1) == sorted(captures_2) == evaluation_seeds(0, 2)
    for seed, a in captures_1.items():
        b = captures_2[seed]
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.actions, b.actions)
        assert [p.step for p in a.plans] == [p.step for p in b.plans]
        for pa, pb in zip(a.plans, b.plans, strict=True):
            np.testing.assert_array_equal(pa.states, pb.states)


def test_this_process_and_a_worker_share_the_jobs(run_dir: Path, deadline) -> None:
    loop = FinishedRun(run_dir).loop()
    episodes = FinalEpisodes(loop.parts, loop.classifier_ready)
    jobs = evaluation_jobs(evaluation_seeds(0, 3))
    here: list[tuple[str, int]] = []
    there: list[int] = []

    def run_here(job: tuple[str, int]) -> tuple[dict, Any]:
        here.append(job)
        return episodes(*job)

    results: dict = {}
    share_jobs(jobs, 1, pack(episodes), results, there.append, run_here)
    assert sorted(results) == sorted(jobs)
    assert here and len(there) == len(jobs) - len(here) > 0  # both did some
    assert there == [12] * len(there)  # steps of each episode a worker ran


def test_an_episode_does_not_depend_on_what_ran_before_it(run_dir: Path) -> None:
    loop = FinishedRun(run_dir).loop()
    torch_state, numpy_state = loop.torch_gen.get_state(), loop.rng.bit_generator.state
    episodes = FinalEpisodes(loop.parts, loop.classifier_ready)
    jobs = evaluation_jobs(evaluation_seeds(0, 2))

    def figures(job: tuple[str, int]) -> dict[str, Any]:
        out, _ = episodes(*job)
        return {k: v for k, v in out.items() if k != "plan_seconds"}

    forward = {job: figures(job) for job in jobs}
    backward = {job: figures(job) for job in reversed(jobs)}
    assert forward == backward
    assert figures(jobs[-1]) == forward[jobs[-1]]  # alone, after all the others
    # the evaluation draws nothing from the run's own generators
    assert torch.equal(loop.torch_gen.get_state(), torch_state)
    assert loop.rng.bit_generator.state == numpy_state


def test_episode_generators_depend_on_run_policy_and_seed_only() -> None:
    def draws(*key: Any) -> tuple[float, float]:
        g, rng = episode_generators(*key)
        return float(torch.rand(1, generator=g)), float(rng.random())

    assert draws(0, "learned", 7) == draws(0, "learned", 7)
    keys = [(0, "learned", 7), (1, "learned", 7), (0, "random", 7), (0, "learned", 8)]
    assert len({draws(*k) for k in keys}) == len(keys)
    with pytest.raises(ValueError):
        episode_generators(0, "greedy", 7)


def test_a_task_file_task_is_rebuilt_in_the_workers(tmp_path: Path, deadline) -> None:
    """walker_speed's functions live in a module imported from beside its file."""
    d = tmp_path / "walker"
    speed = "+constraints.entries.speed={kind: state_bounds, dims: [qvel.rootx], upper: [2.3415]}"
    two = _train(d, "task=custom", f"task.file={WALKER}", speed, "experiment.eval_workers=2")
    assert two["task"] == "walker_speed"
    run = FinishedRun(d)
    run.config.experiment.eval_workers = 1
    assert _figures(run.loop().final_evaluation()) == _figures(two)


def test_worker_counts() -> None:
    assert resolve_workers(1, 30) == 1
    assert resolve_workers(4, 3) == 3  # never more workers than episodes
    assert resolve_workers(0, 30) == min(available_cores(), 30)
    assert resolve_workers(0, 1) == 1
    assert available_cores() <= (os.cpu_count() or 1)


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_a_bad_worker_count_is_refused(value: Any) -> None:
    with pytest.raises(ValueError, match=r"experiment\.eval_workers must be an integer >= 0"):
        LoopSettings(eval_workers=value)


def test_a_bad_worker_count_is_one_line_on_the_command_line(tmp_path, monkeypatch, capsys):
    from mbrm.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "experiment.eval_workers=-1"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["mbrm: error: experiment.eval_workers must be an integer >= 0, got -1"]
    assert list(tmp_path.iterdir()) == []


def test_a_failing_episode_in_a_worker_raises_naming_it(run_dir: Path, deadline) -> None:
    loop = FinishedRun(run_dir).loop()
    shipped = pack(FinalEpisodes(loop.parts, loop.classifier_ready))
    with pytest.raises(EvaluationWorkerError, match=r"episode greedy, seed 3 failed .*greedy"):
        share_jobs([("learned", 1), ("greedy", 3)], 1, shipped, {}, lambda n: None)


class _Exit:
    """Unpickled, it ends the process: a worker that dies while rebuilding the parts."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return os._exit, (3,)


def test_a_dead_worker_raises_instead_of_hanging(deadline) -> None:
    import pickle

    shipped = (pickle.dumps(_Exit()), None, [])
    with pytest.raises(EvaluationWorkerError, match="worker process died"):
        share_jobs([("learned", 1), ("random", 1)], 2, shipped, {}, lambda n: None)


def test_resume_may_change_the_worker_count(run_dir: Path, tmp_path: Path) -> None:
    """It changes no figure, so `mbrm train resume=RUN` accepts it."""
    from tests.test_cli import mbrm

    before = json.loads((run_dir / "summary.json").read_text())
    r = mbrm("train", f"resume={run_dir}", "experiment.eval_workers=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    after = json.loads((run_dir / "summary.json").read_text())
    assert _figures(after) == _figures(before)
    assert "wall time" in r.stdout
