"""``benchmarks/planner.py`` runs the agent's whole imagination and reports its split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--pop", "8", "--elites", "2", "--horizon", "3", "--iters", "1", "--particles", "2",
    "--repeats", "1", "--hidden", "16", "--layers", "1", "--threads", "1",
]  # fmt: skip
# What benchmarks/exp7_throughput.py reads from each run.
EXP7_KEYS = {
    "s_per_step", "cpu_s_per_step", "transitions_per_s", "gflops", "gemm_peak_gflops",
    "fraction_of_gemm_peak", "activation_s_per_step", "activation_bound_fraction",
    "square_gemm_gflops", "planner_overhead_s", "peak_rss_gib",
}  # fmt: skip


@pytest.fixture(scope="module")
def planner_json() -> dict:
    env = os.environ | {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "planner.py"), *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def test_the_split_covers_the_planning_step(planner_json: dict) -> None:
    parts = {"world_model", "reward", "classifier", "constraint_entries", "imagination_other"}
    parts.add("planner")
    fractions = planner_json["split_fraction"]
    assert set(fractions) == parts == set(planner_json["split_s_per_call"])
    assert all(v >= 0 for k, v in fractions.items() if k != "imagination_other")
    assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-3)
    assert 0 < planner_json["alignment_fraction"] < 1


def test_the_whole_stack_at_the_configured_sizes(planner_json: dict) -> None:
    # the learned entry joined the set beside the task's hard entries
    assert planner_json["constraint_set"] == ["unacceptable", "speed", "box"]
    assert 0.0 <= planner_json["classifier_threshold"] <= 1.0
    # size flags override; the other sizes are the configured ones
    assert (planner_json["hidden"], planner_json["layers"]) == (16, 1)
    for name, folder in (("reward", "reward_model"), ("classifier", "classifier")):
        group = OmegaConf.load(ROOT / "configs" / folder / "ensemble.yaml")
        sizes = [planner_json[f"{name}_{k}"] for k in ("ensemble", "hidden", "layers")]
        assert sizes == [group.ensemble_size, group.hidden, group.layers]
    assert planner_json["particles"] == 2 and planner_json["imagination_calls"] >= 1


def test_exp7_still_finds_its_keys(planner_json: dict) -> None:
    assert EXP7_KEYS <= set(planner_json)
