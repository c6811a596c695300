"""Evaluation videos, plan strips and the report, on tiny runs: files that decode, results
that filming does not change, a report with no warnings and no empty panel, and the
rule that leaves a normalised score undefined when the reference is no yardstick."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from mbrm import video
from mbrm.cli import _print_summary, main
from mbrm.episodes import Capture, run_episode
from mbrm.evaluation import evaluation_seeds, normalised_score, summarise
from mbrm.report import write_report
from mbrm.run import FinishedRun, build_loop, compose_config
from mbrm.settings import LoopSettings
from tests.test_loop import PLANNER, TINY

LENGTH = 12  # TINY's episode length
TIMING = ("plan_seconds_per_step",)


def _train(run_dir: Path, *extra: str) -> dict:
    cfg = compose_config(["task=reacher_keepout", "planner=cem", *TINY, *PLANNER["cem"], *extra])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return build_loop(cfg, run_dir).run()


def _figures(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished run with two evaluation episodes, the first filmed."""
    d = tmp_path_factory.mktemp("filmed") / "run"
    _train(d, "experiment.eval_episodes=2", "experiment.video_episodes=1")
    return d


def test_the_first_evaluation_episode_is_filmed_and_decodes(run_dir: Path) -> None:
    first = evaluation_seeds(0, 2)[0]
    videos = run_dir / "videos"
    assert sorted(p.name for p in videos.iterdir()) == [
        f"eval_{first}.mp4",
        f"eval_{first}_plans.png",
    ]
    with imageio.get_reader(videos / f"eval_{first}.mp4") as reader:
        frames = [reader.get_data(i) for i in range(reader.count_frames())]
    assert len(frames) == LENGTH + 1  # the first state and one per step
    assert frames[0].ndim == 3 and frames[0].shape[2] == 3 and frames[0].std() > 0
    strip = imageio.imread(videos / f"eval_{first}_plans.png")
    assert strip.ndim == 3 and min(strip.shape[:2]) > 100


def test_a_capture_keeps_the_real_states_and_every_kth_plan(run_dir: Path) -> None:
    loop = FinishedRun(run_dir).loop()
    capture = Capture(plan_every=3)
    out = run_episode(
        loop.task, loop.agent(), seed=1, length=LENGTH, generator=loop.torch_gen, capture=capture
    )
    assert capture.states.shape == (out["steps"] + 1, loop.task.state_dim)
    assert capture.actions.shape == (out["steps"], loop.task.action_dim)
    assert [p.step for p in capture.plans] == [0, 3, 6, 9]
    horizon = 4  # PLANNER["cem"]
    assert all(p.states.shape == (horizon + 1, loop.task.state_dim) for p in capture.plans)
    # the plan starts where the agent stood
    np.testing.assert_allclose(capture.plans[1].states[0], capture.states[3], atol=1e-5)


def test_filming_changes_no_result(run_dir: Path, capsys) -> None:
    trained = json.loads((run_dir / "summary.json").read_text())  # filmed one episode
    main(["eval", str(run_dir)])  # films none
    plain = json.loads((run_dir / "summary.json").read_text())
    capsys.readouterr()
    main(["eval", str(run_dir), "--video"])  # films every evaluation episode
    filmed = json.loads((run_dir / "summary.json").read_text())
    assert _figures(trained) == _figures(plain) == _figures(filmed)
    printed = capsys.readouterr().out
    for seed in evaluation_seeds(0, 2):
        assert str(run_dir / "videos" / f"eval_{seed}.mp4") in printed
        assert (run_dir / "videos" / f"eval_{seed}_plans.png").is_file()


def test_eval_refuses_a_bad_video_count(run_dir: Path, capsys) -> None:
    for count in ("3", "x"):
        with pytest.raises(SystemExit) as e:
            main(["eval", str(run_dir), "--video", count] if count.isdigit() else
                 ["eval", str(run_dir), f"--video={count}"])  # fmt: skip
        assert e.value.code == 2
    assert "2 evaluation episodes" in capsys.readouterr().err


def test_a_run_that_cannot_film_warns_and_a_command_that_cannot_fails(
    run_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    def no_opengl(*args, **kwargs):
        raise RuntimeError("no OpenGL context")

    monkeypatch.setattr(video, "write_evaluation_videos", no_opengl)
    task, captures = FinishedRun(run_dir).task, {1: Capture(plan_every=1)}
    with pytest.warns(UserWarning, match="no evaluation videos .*--video"):
        assert video.film(task, captures, tmp_path, strict=False) == []
    with pytest.raises(RuntimeError, match="no OpenGL"):
        video.film(task, captures, tmp_path, strict=True)


def test_report_links_the_videos_and_shows_a_gif(run_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        md = write_report(run_dir).read_text()
    seed = evaluation_seeds(0, 2)[0]
    assert f"![eval_{seed}](videos/eval_{seed}.gif)" in md
    assert f"(videos/eval_{seed}.mp4)" in md and f"(videos/eval_{seed}_plans.png)" in md
    with Image.open(run_dir / "videos" / f"eval_{seed}.gif") as gif:
        assert gif.n_frames == math.ceil((LENGTH + 1) / 2) and gif.size[0] == 200
    page = (run_dir / "report.html").read_text()
    assert page.count("<video ") == 2 and f"src='videos/eval_{seed}.mp4'" in page
    assert "data:image/png;base64," in page
    assert "normalised score" in page and "Per-episode metrics" in page


def test_report_of_a_run_without_labels_has_no_warnings(tmp_path: Path) -> None:
    d = tmp_path / "run"
    summary = _train(
        d, "feedback=human", "experiment.human_wait_seconds=0", "experiment.video_episodes=0"
    )
    assert summary["labels"] == {} and not (d / "videos").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        md = write_report(d).read_text()
    assert "![report](report.png)" in md and "videos/" not in md
    assert "<video" not in (d / "report.html").read_text()


def test_score_is_undefined_when_the_reference_does_not_beat_random() -> None:
    score, note = normalised_score(-17.04, -11.67, -11.84)  # once reported as 31.6
    assert math.isnan(score) and "does not beat the random policy" in note
    assert normalised_score(-10.0, -40.0, -2.0) == (30 / 38, None)  # the demo's kind of gap
    assert math.isnan(normalised_score(0.0, 0.0, 0.05)[0])  # a gap of nothing near 0
    assert normalised_score(0.1, 0.0, 0.2)[0] == pytest.approx(0.5)
    assert math.isnan(normalised_score(1.0, 100.0, 104.0)[0])  # under 5% of |random|

    def rows(R: float) -> list[dict]:
        return [{"true_return": R, "unacceptable_steps": 0, "plan_seconds": 0.0}]

    summary = summarise(
        {"learned": rows(-17.04), "random": rows(-11.67), "reference": rows(-11.84)}, []
    )
    assert math.isnan(summary["normalised_score"]) and summary["normalised_score_note"]
    ok = summarise({"learned": rows(-10), "random": rows(-40), "reference": rows(-2)}, [])
    assert "normalised_score_note" not in ok


def test_an_undefined_score_prints_a_warning(capsys) -> None:
    summary = {
        "task": "t",
        "seed": 0,
        "env_steps": 1,
        "eval_return": -17.04,
        "random_return": -11.67,
        "oracle_return": -11.84,
        "eval_unacceptable_steps": 0,
        "train_unacceptable_steps": 0,
        "random_unacceptable_steps": 0,
        "labels": {},
        "labels_by_source": {},
        "plan_seconds_per_step": 0.0,
    }
    score, note = normalised_score(-17.04, -11.67, -11.84)
    _print_summary(
        {**summary, "normalised_score": score, "normalised_score_note": note}, Path("."), None
    )
    out = capsys.readouterr()
    assert "undefined" in out.out and "31." not in out.out
    assert "warning: normalised score undefined" in out.err


def test_video_episodes_is_range_checked() -> None:
    with pytest.raises(ValueError, match="video_episodes must be an integer >= 0"):
        LoopSettings(video_episodes=-1)
    with pytest.raises(ValueError, match="films more episodes than the 5 evaluation"):
        LoopSettings(video_episodes=6)
