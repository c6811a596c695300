"""One progress bar over a whole run, in environment steps, and the run's wall time:
the bar's total is the steps actually run (a resumed run's bar starts at the steps it
had done), and summary.json records the job's wall seconds, summed over its sessions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
from omegaconf import OmegaConf

import mbrm.evaluation
import mbrm.loop
from mbrm import progress
from mbrm.cli import _print_summary
from mbrm.progress import StepProgress
from mbrm.run import build_loop
from mbrm.rundir import load_run_checkpoint
from tests.test_loop import tiny_cfg

LENGTH = 12  # TINY's episode length


class FakeBar:
    """Stands in for tqdm: keeps what a bar is told, drawn or not."""

    made: ClassVar[list[FakeBar]] = []

    def __init__(self, *, total: int, initial: int = 0, disable: bool, **kwargs: Any) -> None:
        self.total, self.initial, self.n, self.disable = total, initial, initial, disable
        self.kwargs, self.closed, self.postfix = kwargs, False, {}
        FakeBar.made.append(self)

    def update(self, n: int = 1) -> None:
        assert not self.closed, "a step counted on a closed bar"
        self.n += n

    def refresh(self) -> None:
        pass

    def set_postfix(self, figures: dict[str, Any]) -> None:
        self.postfix = figures

    def set_description(self, desc: str) -> None:
        self.kwargs["desc"] = desc

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def bars(monkeypatch) -> list[FakeBar]:
    FakeBar.made = []
    monkeypatch.setattr(progress, "tqdm", FakeBar)
    return FakeBar.made


def _cfg(*extra: str):
    return tiny_cfg("reacher_keepout", "cem", "experiment.eval_episodes=2", *extra)


EVAL_STEPS = 3 * 2 * LENGTH  # three policies x two evaluation episodes, none ended early


def test_one_bar_counts_every_step_of_the_run(tmp_path: Path, bars: list[FakeBar]) -> None:
    loop = build_loop(_cfg(), tmp_path)
    summary = loop.run()
    assert len(bars) == 1, "one bar over the whole run"
    bar = bars[0]
    steps = summary["env_steps"] + EVAL_STEPS
    assert summary["env_steps"] == len(loop.replay) == 2 * LENGTH
    assert bar.initial == 0 and bar.n == bar.total == steps
    assert bar.kwargs["unit"] == "step" and bar.closed
    assert bar.disable  # progress=false (and no terminal): counted, not drawn
    assert set(bar.postfix) == {"R", "unacc", "labels"}
    # no module of the run draws a bar of its own
    assert not hasattr(mbrm.loop, "tqdm") and not hasattr(mbrm.evaluation, "tqdm")


def test_a_resumed_run_starts_its_bar_at_the_steps_done(tmp_path: Path, bars: list[FakeBar]):
    cfg = _cfg("experiment.iterations=3")
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    loop = build_loop(cfg, tmp_path)

    class Killed(Exception):
        pass

    rounds = {"n": 0}
    original = loop.solicit

    def solicit_then_die(data):
        rounds["n"] += 1
        if rounds["n"] == 3:  # the third iteration's round, before its checkpoint
            raise Killed
        return original(data)

    loop.solicit = solicit_then_die
    with pytest.raises(Killed):
        loop.run()
    killed = bars[0]
    assert killed.closed and killed.n == 3 * LENGTH  # its third episode ran, then it died
    assert killed.total == (1 + 3) * LENGTH + EVAL_STEPS
    resumed = build_loop(cfg, tmp_path)
    resumed.resume()
    done = len(resumed.replay)
    assert done == 2 * LENGTH  # the checkpoint counts two iterations
    summary = resumed.run()
    bar = bars[1]
    assert bar.initial == done
    assert bar.n == bar.total == summary["env_steps"] + EVAL_STEPS
    assert summary["env_steps"] == 4 * LENGTH


def test_re_evaluating_draws_a_bar_over_the_evaluation(tmp_path: Path, bars: list[FakeBar]):
    loop = build_loop(_cfg(), tmp_path)
    loop.run()
    loop.final_evaluation()
    bar = bars[1]
    assert bar.initial == 0 and bar.n == bar.total == EVAL_STEPS and bar.closed


def test_an_episode_that_ends_early_shrinks_the_job(bars: list[FakeBar]) -> None:
    with StepProgress(100, desc="job", enabled=False) as bar:
        bar.step(30)
        bar.episode_ended(30, 50)  # 20 steps of the schedule will never run
        bar.step(50)
        bar.episode_ended(50, 50)
    assert bars[0].n == bars[0].total == 80


def test_the_summary_has_the_job_wall_time_summed_over_sessions(tmp_path: Path) -> None:
    cfg = _cfg("experiment.iterations=2")
    loop = build_loop(cfg, tmp_path)
    loop.run()
    first = json.loads((tmp_path / "summary.json").read_text())
    rows = loop.metrics.rows
    assert first["wall_seconds"] >= sum(r["seconds"] for r in rows) > 0
    # a second session extends the run: its wall time adds to the first's
    checkpointed = load_run_checkpoint(tmp_path, loop.parts.signature)["loop"]["wall_seconds"]
    assert 0 < checkpointed <= first["wall_seconds"]
    longer = build_loop(_cfg("experiment.iterations=3"), tmp_path)
    longer.resume()
    summary = longer.run()
    added = longer.metrics.rows[-1]["seconds"]
    assert summary["wall_seconds"] >= checkpointed + added
    # re-evaluating (mbrm eval) keeps the job's wall time
    again = build_loop(_cfg("experiment.iterations=3"), tmp_path)
    again.resume()
    assert again.final_evaluation()["wall_seconds"] == summary["wall_seconds"]


def test_the_printed_summary_shows_the_wall_time(tmp_path: Path, capsys) -> None:
    summary = {
        "task": "reacher_keepout",
        "seed": 0,
        "env_steps": 100,
        "eval_return": -10.0,
        "random_return": -40.0,
        "oracle_return": -2.0,
        "normalised_score": 0.79,
        "eval_unacceptable_steps": 0,
        "train_unacceptable_steps": 1,
        "random_unacceptable_steps": 2,
        "labels": {},
        "labels_by_source": {},
        "plan_seconds_per_step": 0.01,
    }
    _print_summary({**summary, "wall_seconds": 425.2}, tmp_path, None, [])
    assert "wall time              7 min 05 s" in capsys.readouterr().out
    _print_summary(summary, tmp_path, None, [])  # a summary from before wall_seconds
    assert "wall time" not in capsys.readouterr().out
