"""The command line: refusals are one line with exit status 2 and leave no folder;
--debug shows the traceback; resume continues a run with its own config."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_loop import PLANNER, TINY

REFUSED = [
    ("task.episode_length=0", "task.episode_length must be an integer >= 1, got 0"),
    ("experiment.iterations=-1", "experiment.iterations must be an integer >= 0, got -1"),
    ("experiment.eval_episodes=0", "experiment.eval_episodes must be an integer >= 1, got 0"),
    ("experiment.particles=0", "experiment.particles must be an integer >= 1, got 0"),
    ("experiment.alpha=1.5", "experiment.alpha must be a number in (0, 1], got 1.5"),
    ("world_model.lr=0", "world_model.lr must be in (0, inf), got 0"),
    ("reward_model.ensemble_size=0", "reward_model.ensemble_size must be an integer >= 1"),
    ("feedback.eps_mistake=2", "feedback.eps_mistake must be in [0, 1], got 2"),
    ("feedback.seed=3", "Could not override 'feedback.seed'"),
    ("experiment.foo=1", "Key 'foo' not in 'LoopSettings'"),
    ("task.name=walker", "task.name must be one of half_cheetah_safe, hopper_safe"),
    ("planner.population=0", "planner.population must be an integer"),
    ("constraints.entries.unacceptable.alpha=2", "'unacceptable': alpha 2 is outside (0, 1)"),
    ("planner.reject_above=0.3", "planner.reject_above=0.3: with a learned constraint entry"),
]


def mbrm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["MUJOCO_GL"] = "egl"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    code = f"import sys; from mbrm.cli import main; main({list(args)!r})"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env
    )


@pytest.mark.parametrize("override, message", REFUSED)
def test_a_bad_setting_is_one_line_exit_2_and_no_folder(
    override, message, tmp_path, monkeypatch, capsys
):
    from mbrm.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["train", override])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mbrm: error: "), lines
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == []  # no outputs/<date>/<time>/ left behind


def test_debug_shows_the_traceback(tmp_path):
    r = mbrm("--debug", "train", "task.episode_length=0", cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "task.episode_length must be" in r.stderr


def test_a_missing_run_directory_is_one_line(tmp_path, capsys):
    from mbrm.cli import main

    for args in (["eval", str(tmp_path / "nope")], ["train", f"resume={tmp_path / 'nope'}"]):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2
        want = f"mbrm: error: {tmp_path / 'nope'} is not a run directory (no config.yaml)"
        assert capsys.readouterr().err.strip() == want


def test_resume_keeps_the_run_and_may_extend_it(tmp_path):
    run_dir = tmp_path / "run"
    tiny = [*TINY, *PLANNER["cem"], "task=inverted_pendulum"]
    r = mbrm(
        "train",
        *[t for t in tiny if t != "progress=false"],
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    # the run's log: the resolved config first, a line per iteration, the summary; no
    # progress bar in a redirected output
    log = (run_dir / "run.log").read_text()
    assert log.index("config:\ntask:") < log.index("iteration 1/2 explore: return")
    assert log.index("iteration 2/2 act: return") < log.index("summary: {")
    assert "\r" not in r.stdout + r.stderr and "OpenGL" not in log
    before = sorted(p.name for p in tmp_path.iterdir())
    # an override that would change the run is refused, naming it
    r = mbrm("train", f"resume={run_dir}", "task=hopper_safe", "seed=4", cwd=tmp_path)
    assert r.returncode == 2
    assert "task=hopper_safe, seed=4" in r.stderr and "experiment.iterations" in r.stderr
    r = mbrm("train", f"resume={run_dir}", "experiment.iterations=0", cwd=tmp_path)
    assert r.returncode == 2 and "not shorten it" in r.stderr
    # extending: one more acting episode, in the same folder, none created elsewhere
    r = mbrm("train", f"resume={run_dir}", "experiment.iterations=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [int(row["iteration"]) for row in rows] == [0, 1, 2]
    assert int(rows[-1]["env_steps"]) == 3 * 12
    assert "iterations: 2" in (run_dir / "config.yaml").read_text()
    assert "iteration 3/3 act: return" in (run_dir / "run.log").read_text()  # appended
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_options_lists_every_key_with_its_path_default_and_whole_help(capsys):
    from mbrm.cli import main
    from mbrm.options import all_options
    from mbrm.resources import config_dir

    main(["options"])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "least_violation" in rows["qp_filter.options.fallback"]  # nested: the full path
    # a comment over two lines is joined
    assert "spin-wait stalls when cores are shared (measured:" in rows["threads"]
    assert rows["task="].split()[1] == "reacher_keepout"  # group choices with their default
    for rel, description, _ in all_options(config_dir()):
        assert description, f"{rel} has no description line"
    missing = [r for r in rows.values() if len(r.strip().split("  ")) < 2]
    assert not missing
    main(["options", "planner"])
    out = capsys.readouterr().out
    files = [line for line in out.splitlines() if line.startswith("[")]
    assert sum(f.startswith("[planner/") for f in files) == 6  # the group's files...
    assert all(f.startswith(("[planner/", "[config.yaml]")) for f in files)  # ...and its choice
    assert "  planner=  " in out
    main(["options", "reject_above"])
    keys = {
        line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")
    }
    assert keys == {"planner.reject_above"}


def test_a_swept_value_out_of_range_leaves_no_folder(tmp_path):
    """Only the first value of a sweep is checked before Hydra starts; a bad later value
    is refused inside its job, whose fresh folder (Hydra's files and the log) is removed."""
    tiny = [t for t in TINY if not t.startswith("experiment.particles")]
    sweep = tmp_path / "sweep"
    r = mbrm(
        "train", "-m", "hydra/launcher=basic", "experiment.particles=2,0", *tiny,
        *PLANNER["cem"], f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "mbrm: error: experiment.particles must be an integer >= 1, got 0"
    )
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_experiment.particles=2"]
