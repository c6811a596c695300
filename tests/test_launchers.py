"""Sweeps through the submitit launcher (the Slurm launcher's code path, with local worker
processes), and the install command named when its plugin is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException
from test_loop import PLANNER, TINY

from mbrm.resources import explain_missing_launcher
from mbrm.run import compose_config

FIXED = ["planner=cem", *TINY, *PLANNER["cem"]]
INSTALL = "pip install 'mbrm[slurm]' (or pip install -e '.[slurm]' in a checkout)"
PLUGIN = "hydra_plugins.hydra_submitit_launcher"
# Python code that makes the submitit plugin invisible: Hydra finds plugins by walking the
# hydra_plugins namespace package (which bypasses sys.meta_path), an import goes through it.
HIDE_PLUGIN = f"""
import pkgutil, sys

_walk = pkgutil.walk_packages

def _hidden(name):
    return name == {PLUGIN!r} or name.startswith({PLUGIN!r} + ".")

def walk_packages(path=None, prefix="", onerror=None):
    return (m for m in _walk(path, prefix, onerror) if not _hidden(m.name))

class HidePlugin:
    def find_spec(self, name, path=None, target=None):
        if _hidden(name):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

pkgutil.walk_packages = walk_packages
sys.meta_path.insert(0, HidePlugin())
"""


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": "egl"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _hydra_error(overrides: list[str]) -> str:
    with pytest.raises(MissingConfigException) as raised:
        compose_config(overrides)
    return str(raised.value)


def test_submitit_local_workers_name_folders_by_the_swept_keys(tmp_path):
    """Each job runs in a process submitit starts from the pickled launcher: the resolver
    and the swept keys reach it through the SweepNames callback."""
    sweep = tmp_path / "sweep"
    argv = ["train", "-m", "hydra/launcher=local", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    done = _python(f"from mbrm.cli import main; main({[*argv, *FIXED]!r})", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in runs] == ["0_seed=0", "1_seed=1"]
    for seed, run in enumerate(runs):
        assert json.loads((run / "summary.json").read_text())["seed"] == seed
    # submitit's record of each job: it ran, and returned, in a worker of its own
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2


def test_launcher_configs_compose_onto_the_plugin():
    from hydra import compose, initialize_config_dir

    from mbrm.resources import config_dir

    compose_config()  # registers the resolvers and schemas
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        local = compose("config", ["hydra/launcher=local"], return_hydra_config=True)
        slurm = compose("config", ["hydra/launcher=slurm"], return_hydra_config=True)
    assert local.hydra.launcher._target_.endswith(".LocalLauncher")
    assert local.hydra.launcher.timeout_min == 240
    assert slurm.hydra.launcher._target_.endswith(".SlurmLauncher")
    assert (slurm.hydra.launcher.partition, slurm.hydra.launcher.array_parallelism) == (None, 32)


def test_explain_missing_launcher_names_the_extra():
    # Hydra's messages without the plugin: through configs/hydra/launcher/slurm.yaml, and direct
    through_ours = (
        "In 'hydra/launcher/slurm': Could not load 'hydra/launcher/submitit_slurm'.\n\n"
        "Config search path:\n\tprovider=hydra, path=pkg://hydra.conf"
    )
    direct = (
        "In 'hydra/config': Could not find 'hydra/launcher/submitit_local'\n\n"
        "Available options in 'hydra/launcher':\n\tbasic\n\tjoblib\n\tlocal\n\tslurm"
    )
    assert explain_missing_launcher(through_ours) == (
        f"the slurm launcher needs the submitit plugin: {INSTALL}"
    )
    assert explain_missing_launcher(direct) == (
        f"the submitit_local launcher needs the submitit plugin: {INSTALL}"
    )
    # any other missing config is not the plugin's
    assert explain_missing_launcher(_hydra_error(["hydra/launcher=submitit_nope"])) is None
    assert explain_missing_launcher(_hydra_error(["task=nope"])) is None


def test_without_the_plugin_the_error_names_the_install_command(tmp_path):
    code = f"""{HIDE_PLUGIN}
from mbrm.cli import compose_checked, main
from mbrm.resources import explain_missing_launcher

for launcher in ("slurm", "local", "submitit_slurm", "submitit_local"):
    try:
        compose_checked([f"hydra/launcher={{launcher}}"])
    except Exception as e:
        print(explain_missing_launcher(str(e)))
    else:
        print("composed")
main(["train", "-m", "hydra/launcher=slurm", "seed=0,1", "hydra.sweep.dir=sweep"])
"""
    done = _python(code, cwd=tmp_path)
    assert done.stdout.splitlines() == [
        f"the {launcher} launcher needs the submitit plugin: {INSTALL}"
        for launcher in ("slurm", "local", "submitit_slurm", "submitit_local")
    ]
    # refused at start-up: one line, status 2, no sweep folder
    assert done.returncode == 2, done.stderr[-4000:]
    assert done.stderr.startswith("mbrm: error: ") and len(done.stderr.splitlines()) == 1
    assert "pip install 'mbrm[slurm]'" in done.stderr
    assert not (tmp_path / "sweep").exists()
