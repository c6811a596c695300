"""A regular install carries the configs and UI files and runs from any directory.

The wheel is built from a copy of the source (no build folders in the checkout), installed
with ``--no-deps`` into a folder put first on PYTHONPATH (its dependencies come from this
environment), and run from a directory that is not the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CODE = ("mbrm", "planners", "constraints")
UI = REPO / "mbrm" / "labeling" / "static"


def _sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in (*CODE, "configs"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    _sh(*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(out))
    (built,) = out.glob("mbrm-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    _sh(*pip, "install", "--no-deps", "--no-compile", "-q", "--target", str(target), str(wheel))
    return target


def _source_files() -> set[str]:
    """Every file the wheel must hold, as its path inside the wheel."""
    files = {
        str(p.relative_to(REPO))
        for top in CODE
        for pattern in ("*.py", "*.yaml", "*.xml")
        for p in (REPO / top).rglob(pattern)
        if "__pycache__" not in p.parts
    }
    files |= {
        f"mbrm/configs/{p.relative_to(REPO / 'configs')}"
        for p in (REPO / "configs").rglob("*.yaml")
    }
    files |= {f"mbrm/labeling/static/{p.name}" for p in UI.iterdir() if p.is_file()}
    return files


def test_wheel_ships_code_configs_and_labelling_ui(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _source_files()
    assert "mbrm/configs/config.yaml" in expected
    assert {"mbrm/labeling/static/index.html", "mbrm/labeling/static/app.js"} <= expected
    groups = {
        Path(n).parts[2] for n in expected if n.startswith("mbrm/configs/") and n.count("/") > 2
    }
    assert {"task", "planner", "world_model", "constraints", "feedback", "experiment"} <= groups
    missing = sorted(expected - names)
    assert not missing, (
        f"the wheel lacks {missing}: a new package must be listed in pyproject.toml "
        "([tool.setuptools] packages), a new kind of data file in its package-data"
    )


def _run(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed), "MUJOCO_GL": "egl"}
    return _sh(*args, cwd=cwd, env=env)


def test_installed_wheel_finds_its_configs_from_another_directory(installed, tmp_path):
    probe = """
import json, mbrm
from mbrm.resources import config_dir
from mbrm.run import compose_config
cfg = compose_config(["task=hopper_safe"])
print(json.dumps({"package": mbrm.__file__, "configs": str(config_dir()),
                  "task": cfg.task.name, "seed": cfg.seed}))
"""
    seen = json.loads(_run(installed, tmp_path, sys.executable, "-c", probe).stdout)
    # the installed copy, not the checkout, is what ran
    assert Path(seen["package"]).is_relative_to(installed)
    assert Path(seen["configs"]) == installed / "mbrm" / "configs"
    assert (seen["task"], seen["seed"]) == ("hopper_safe", 0)


def test_installed_mbrm_options_lists_every_config_file(installed, tmp_path):
    script = installed / "bin" / "mbrm"
    assert script.exists(), "the wheel installs no `mbrm` command"
    out = _run(installed, tmp_path, sys.executable, str(script), "options").stdout
    assert "[config.yaml]" in out and "[planner/cem.yaml]" in out, out[:2000]
    keys = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert {"seed", "resume", "threads"} <= set(keys)
