"""Sweep job folders are named by the job number and the swept keys only, in the launching
process and in joblib's worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_loop import PLANNER, TINY

from mbrm.resources import (
    MAX_SUBDIR_LENGTH,
    SUBDIR_RESOLVER,
    SweepNames,
    register_resolvers,
    sweep_subdir,
    swept_keys,
)

# 29 fixed overrides: as one folder name (Hydra's override_dirname) far over 255 bytes
FIXED = ["planner=cem", *TINY, *PLANNER["cem"]]


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": "egl", "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_swept_keys_are_the_sweep_overrides():
    line = ["seed=0,1", "lr=range(1,3)", "+extra=a,b", "planner=glob(*)", "task=hopper_safe"]
    assert swept_keys(line) == {"seed", "lr", "extra", "planner"}
    assert swept_keys(["seed=3"], {"task": "hopper_safe,reacher_keepout", "x": "1"}) == {"task"}


def test_subdir_keeps_swept_keys_sorted_and_safe():
    job = ["task=hopper_safe", "progress=false", "seed=2", "+note=a/b c"]
    assert sweep_subdir(3, job, {"seed", "task"}) == "3_seed=2,task=hopper_safe"
    assert sweep_subdir(0, job, {"note"}) == "0_note=a_b_c"
    assert sweep_subdir(5, job, set()) == "5"
    # no sweep recorded: every override, like Hydra's override_dirname, still bounded
    assert sweep_subdir(1, FIXED, None).startswith("1_classifier.ensemble_size=2,")
    assert len(sweep_subdir(1, FIXED, None)) == MAX_SUBDIR_LENGTH


def test_register_resolvers_is_idempotent():
    register_resolvers()
    register_resolvers()
    assert OmegaConf.has_resolver(SUBDIR_RESOLVER)


def test_callback_carries_the_swept_keys_through_pickling():
    import pickle

    names = SweepNames()
    names.on_multirun_start(OmegaConf.create({"hydra": {"overrides": {"task": ["seed=0,1"]}}}))
    assert pickle.loads(pickle.dumps(names)).swept == {"seed"}


def test_sweep_with_many_overrides_gets_short_folders(tmp_path):
    sweep = tmp_path / "sweep"
    argv = ["train", "-m", "seed=0,1", "hydra/launcher=basic", f"hydra.sweep.dir={sweep}", *FIXED]
    assert len(argv) > 25
    _python(f"from mbrm.cli import main; main({argv!r})", cwd=tmp_path)
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0_seed=0", "1_seed=1"]
    for seed, run in enumerate(runs):
        assert json.loads((run / "summary.json").read_text())["seed"] == seed


def test_joblib_workers_name_folders_by_the_swept_keys(tmp_path):
    """The folder is named inside each worker process, which never saw the command line."""
    sweep = tmp_path / "sweep"
    argv = [
        "job",
        "-m",
        "seed=0,1",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        *FIXED,
    ]
    code = f"""
import os, sys
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig
from mbrm.resources import config_dir
from mbrm.run import register_schemas

def job(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "pid").write_text(str(os.getpid()))

print(os.getpid())
register_schemas()
sys.argv = {argv!r}
hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(job)()
"""
    parent = int(_python(code, cwd=tmp_path).stdout.split()[0])
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0_seed=0", "1_seed=1"]
    assert all(int((run / "pid").read_text()) != parent for run in runs)


@pytest.mark.slow
def test_cli_sweep_with_the_joblib_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    argv = ["train", "-m", "seed=0,1", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    _python(f"from mbrm.cli import main; main({[*argv, *FIXED]!r})", cwd=tmp_path)
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0_seed=0", "1_seed=1"]
    assert all((run / "summary.json").exists() for run in runs)
