"""mbrl-lib's PETS-CEM planning step beside this project's planner, measured alternately.

    make bench-mbrl
    python benchmarks/mbrl_lib_pets.py [--rounds 5] [--repeats 2] [--task half_cheetah_safe]

mbrl-lib 0.2.0 (Pineda et al. 2021) is installed on first use into ``benchmarks/.mbrl-lib``
(``pip install --no-deps --target``; gitignored, not a dependency of this project) together
with the one module its ``mbrl.models`` and ``mbrl.planning`` imports need that this
environment lacks (termcolor, pinned); it runs on this environment's torch, numpy,
gymnasium, hydra-core and omegaconf. mbrl-lib 0.2.0 was written for Hydra 1.0, which did
not instantiate nested configs; Hydra 1.3 does, so its model and agent configs get
``_recursive_: false``, Hydra 1.0's behaviour.

Theirs is built as ``mbrl.algorithms.pets`` builds it: ``create_one_dim_tr_model`` with a
``GaussianMLP`` ensemble of this project's configured world-model size (members, elites,
width, hidden layers, SiLU), input normalisation in double precision and delta targets;
``ModelEnv`` with PETS HalfCheetah's hand-written reward (``learned_rewards: false``) and no
termination; ``create_trajectory_optim_agent_for_model`` with ``CEMOptimizer`` (truncated
normal, momentum 0.1, mean of the elites returned) and ``TrajectoryOptimizerAgent.act``
(warm start by shifting the last plan). Particles use "random_model" propagation, mbrl-lib's
TS1 ("fixed_model" is TS-infinity), as this project's ``propagation: ts1``.
Ours is ``benchmarks/planner.py --no-peak``: the agent's imagination built by the
composition root, with the reward ensemble, the constraint classifier and the task's
constraint set on every imagined step.

The shape is mbrl-lib's PETS HalfCheetah setting: 400 sequences, 40 elites, 5 iterations,
horizon 30, 20 particles. Each round runs both sides, each in a fresh process on one torch
thread timing ``--repeats`` warm-started planning steps after one untimed step; the side that
goes first alternates between rounds. Transitions are counted the same way for both:
sequences x particles x horizon per planning step. Prints a line per run, then one JSON
line: the medians of transitions/s over all timed steps of each side, ours / theirs, the
median of the per-round ratios, the same ratio in CPU seconds per step (``cpu_ratio``: on a
shared machine wall time includes waiting for a core), and the medians of both sides' splits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sweep

HERE = Path(__file__).resolve().parent
PLANNER = HERE / "planner.py"
MBRL_DIR = HERE / ".mbrl-lib"
PINS = ("mbrl==0.2.0", "termcolor==3.3.0")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def install() -> None:
    """mbrl-lib 0.2.0 into its own folder, once."""
    if (MBRL_DIR / "mbrl" / "__init__.py").exists():
        return
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(MBRL_DIR)]
    subprocess.run([*cmd, *PINS], check=True)
    # The wheel also ships a top-level ``tests`` package; on sys.path it would shadow ours.
    shutil.rmtree(MBRL_DIR / "tests", ignore_errors=True)


def mbrl_lib_step(spec: dict[str, Any]) -> dict[str, Any]:
    """Time mbrl-lib's PETS planning step (in a process of its own: ``--worker``)."""
    sys.path.insert(0, str(MBRL_DIR))
    import gymnasium as gym
    import mbrl
    import mbrl.env.reward_fns
    import mbrl.env.termination_fns
    import mbrl.models
    import mbrl.planning
    import mbrl.util.common
    import numpy as np
    import omegaconf
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)  # "random_model" draws its permutations from the global generator
    S, low, high = spec["state_dim"], spec["action_low"], spec["action_high"]
    cfg = omegaconf.OmegaConf.create(
        {
            "dynamics_model": {
                "_target_": "mbrl.models.GaussianMLP",
                "_recursive_": False,
                "device": "cpu",
                "num_layers": spec["layers"],
                "ensemble_size": spec["members"],
                "hid_size": spec["hidden"],
                "deterministic": False,
                "propagation_method": spec["propagation"],
                "learn_logvar_bounds": False,
                "activation_fn_cfg": {"_target_": "torch.nn.SiLU"},
            },
            "algorithm": {
                "learned_rewards": False,
                "target_is_delta": True,
                "normalize": True,
                "normalize_double_precision": True,
                "agent": {
                    "_target_": "mbrl.planning.TrajectoryOptimizerAgent",
                    "_recursive_": False,
                    "action_lb": low,
                    "action_ub": high,
                    "planning_horizon": spec["horizon"],
                    "optimizer_cfg": {
                        "_target_": "mbrl.planning.CEMOptimizer",
                        "num_iterations": spec["iters"],
                        "elite_ratio": spec["elites"] / spec["pop"],
                        "population_size": spec["pop"],
                        "alpha": 0.1,
                        "lower_bound": "???",
                        "upper_bound": "???",
                        "return_mean_elites": True,
                        "device": "cpu",
                        "clipped_normal": False,
                    },
                    "replan_freq": 1,
                    "verbose": False,
                },
            },
            "overrides": {"num_elites": spec["wm_elites"]},
        }
    )
    model = mbrl.util.common.create_one_dim_tr_model(cfg, (S,), (len(low),))
    model.set_elite(range(spec["wm_elites"]))  # what model training leaves behind
    env = argparse.Namespace(  # ModelEnv reads only the spaces of the real environment
        observation_space=gym.spaces.Box(-np.inf, np.inf, (S,), np.float32),
        action_space=gym.spaces.Box(np.array(low), np.array(high), dtype=np.float32),
    )
    model_env = mbrl.models.ModelEnv(
        env,
        model,
        mbrl.env.termination_fns.no_termination,
        mbrl.env.reward_fns.halfcheetah,
        generator=torch.Generator().manual_seed(0),
    )
    agent = mbrl.planning.create_trajectory_optim_agent_for_model(
        model_env, cfg.algorithm.agent, num_particles=spec["particles"]
    )
    assert agent.optimizer.optimizer.elite_num == spec["elites"]
    model_s, call_s = timed(model, "sample"), timed(model_env, "evaluate_action_sequences")
    obs = np.zeros(S, dtype=np.float32)
    wall, cpu = [], []
    for r in range(spec["repeats"] + 1):
        if r == 1:  # the first step is untimed, as in planner.py
            model_s.clear()
            call_s.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        agent.act(obs)
        if r > 0:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    sequences = spec["pop"] * spec["iters"]
    per_call = sum(call_s) / len(call_s)
    return {
        "mbrl_version": mbrl.__version__,
        "sequences": sequences,
        "s_per_step_all": [round(t, 4) for t in wall],
        "cpu_s_per_step": round(statistics.median(cpu), 4),
        "transitions_per_s": round(
            sequences * spec["particles"] * spec["horizon"] / statistics.median(wall)
        ),
        "imagination_s_per_call": round(per_call, 4),
        "world_model_s_per_call": round(sum(model_s) / len(call_s), 4),
        "planner_s_per_call": round((sum(wall) - sum(call_s)) / len(call_s), 4),
    }


def timed(obj: Any, method: str) -> list[float]:
    """Replace ``obj.method`` by a version that appends its seconds to the returned list."""
    seconds: list[float] = []
    call = getattr(obj, method)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = call(*args, **kwargs)
        seconds.append(time.perf_counter() - t0)
        return out

    setattr(obj, method, wrapper)
    return seconds


def spec_of(args: argparse.Namespace) -> dict[str, Any]:
    """Sizes and shape for both sides: the configured world model and task."""
    from mbrm.run import compose_config, run_settings
    from mbrm.tasks import get_task

    settings = run_settings(compose_config([f"task={args.task}"]))
    task, wm = get_task(args.task), settings.world_model
    low, high = task.action_bounds
    return {
        "state_dim": task.state_dim,
        "action_low": [float(x) for x in low],
        "action_high": [float(x) for x in high],
        "members": wm.ensemble_size,
        "wm_elites": wm.elites,
        "hidden": wm.hidden,
        "layers": wm.layers,
        "pop": args.pop,
        "elites": args.elites,
        "iters": args.iters,
        "horizon": args.horizon,
        "particles": args.particles,
        "repeats": args.repeats,
        "propagation": args.propagation,
    }


def run_json(cmd: list[str]) -> dict[str, Any]:
    env = os.environ | ONE_THREAD
    env.setdefault("MUJOCO_GL", "egl")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{proc.stderr}")
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def ours(args: argparse.Namespace) -> dict[str, Any]:
    shape = ["--pop", args.pop, "--elites", args.elites, "--iters", args.iters]
    shape += ["--horizon", args.horizon, "--particles", args.particles]
    cmd = [sys.executable, str(PLANNER), "--no-peak", "--threads", "1", "--task", args.task]
    return run_json([*cmd, "--repeats", str(args.repeats), *map(str, shape)])


def theirs(spec: dict[str, Any]) -> dict[str, Any]:
    return run_json([sys.executable, __file__, "--worker", json.dumps(spec)])


def transitions_per_s(runs: list[dict[str, Any]], per_step: int) -> int:
    """Transitions per second at the median of all timed steps of these runs."""
    return round(per_step / statistics.median(t for r in runs for t in r["s_per_step_all"]))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--task", default="half_cheetah_safe")
    p.add_argument("--rounds", type=int, default=5, help="rounds of (ours, theirs)")
    p.add_argument("--repeats", type=int, default=2, help="timed planning steps per run")
    p.add_argument("--pop", type=int, default=400)
    p.add_argument("--elites", type=int, default=40)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--horizon", type=int, default=30)
    p.add_argument("--particles", type=int, default=20)
    p.add_argument("--propagation", default="random_model", choices=["random_model", "fixed_model"])
    p.add_argument("--worker", help=argparse.SUPPRESS)  # the mbrl-lib side, in its own process
    args = p.parse_args()
    if args.worker:
        print(json.dumps(mbrl_lib_step(json.loads(args.worker))))
        return
    install()
    spec = spec_of(args)
    per_step = args.pop * args.iters * args.particles * args.horizon
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "theirs": []}
    for r in range(args.rounds):
        order = ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")
        for side in order:
            out = ours(args) if side == "ours" else theirs(spec)
            runs[side].append(out)
            steps = ", ".join(f"{t:.2f}" for t in out["s_per_step_all"])
            print(f"round {r + 1} {side:<6} s per step: {steps}", flush=True)
    ours_tps = transitions_per_s(runs["ours"], per_step)
    theirs_tps = transitions_per_s(runs["theirs"], per_step)
    ratios = [
        transitions_per_s([a], per_step) / transitions_per_s([b], per_step)
        for a, b in zip(runs["ours"], runs["theirs"], strict=True)
    ]
    first = runs["ours"][0]
    split = {
        k: round(statistics.median(r["split_fraction"][k] for r in runs["ours"]), 4)
        for k in first["split_fraction"]
    }

    def median(side: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[side]), 4)

    result = {
        "cpu": sweep.cpu_name(),
        "threads": 1,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "shape": {k: spec[k] for k in ("pop", "elites", "iters", "horizon", "particles")},
        "world_model": [spec["members"], spec["wm_elites"], spec["hidden"], spec["layers"]],
        "reward": [first["reward_ensemble"], first["reward_hidden"], first["reward_layers"]],
        "classifier": [
            first["classifier_ensemble"],
            first["classifier_hidden"],
            first["classifier_layers"],
        ],
        "constraint_set": first["constraint_set"],
        "mbrl_lib": runs["theirs"][0]["mbrl_version"],
        "propagation": {"ours": "ts1", "theirs": args.propagation},
        "transitions_per_step": per_step,
        "ours_transitions_per_s": ours_tps,
        "theirs_transitions_per_s": theirs_tps,
        "ratio": round(ours_tps / theirs_tps, 3),
        "round_ratios": [round(x, 3) for x in ratios],
        "median_round_ratio": round(statistics.median(ratios), 3),
        # CPU seconds leave out the waits for a core on a shared machine
        "cpu_ratio": round(
            median("theirs", "cpu_s_per_step") / median("ours", "cpu_s_per_step"), 3
        ),
        "ours_cpu_s_per_step": median("ours", "cpu_s_per_step"),
        "theirs_cpu_s_per_step": median("theirs", "cpu_s_per_step"),
        "ours_split_fraction": split,
        "ours_alignment_fraction": median("ours", "alignment_fraction"),
        "ours_imagination_s_per_call": median("ours", "imagination_s_per_call"),
        "theirs_imagination_s_per_call": median("theirs", "imagination_s_per_call"),
        "ours_world_model_s_per_call": median("ours", "rollout_s_per_call"),
        "theirs_world_model_s_per_call": median("theirs", "world_model_s_per_call"),
        "theirs_planner_s_per_call": median("theirs", "planner_s_per_call"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
