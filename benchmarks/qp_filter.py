"""Time the QP safety filter per step on a task's constraint set and a world model.

Prints, per solver and set size, the median and 95th percentile of

* step:       the whole filter call (linearisation + QP + bookkeeping);
* linearise:  the batched forward/backward pass through ``mean_next_state``;
* qp:         the cvxpy solve on steps that needed a projection (target: median <= 2 ms);
* qp+fallback: all solves of a step whose linearised problem was infeasible;

in wall-clock time, and the step's CPU time of this process (``process_time``),
which other processes on a shared machine disturb much less.

States come from a real episode with random actions; plans are uniform in the
actuator range. The world model has random weights (its speed is what matters
here, not its accuracy), so each state bound is placed from the spread of its
predicted next values (an upper bound at the 75th percentile, a two-sided band
at the median +- 1.5 interquartile ranges): some plans are safe, some need a
projection, and some give an infeasible linearisation (the least-violation
fallback then solves a second, softened QP; timed separately).

    python benchmarks/qp_filter.py [--task half_cheetah_safe] [--steps 500]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from constraints.entries import StateBoundsEntry
from constraints.qp_filter import SOLVERS, QPFilter
from constraints.spec import constraint_set
from mbrm.tasks import get_task
from mbrm.world_model import WorldModel

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "constraints"


def episode_states(task, steps: int, seed: int) -> np.ndarray:
    """[steps, S] states of one random-action episode (reset when truncated)."""
    env = task.make_env(seed)
    s, _ = env.reset()
    out = []
    for _ in range(steps):
        out.append(s)
        s, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            s, _ = env.reset()
    env.close()
    return np.asarray(out)


def constraint_entries(task, extra_joint_speed: bool) -> dict:
    """The task's configured hard entries (the filter skips ``learned`` ones)."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{task.name}.yaml"))["entries"]
    entries = {k: v for k, v in cfg.items() if v and v["kind"] != "learned"}
    if extra_joint_speed:  # every actuated joint's speed bounded on both sides
        joints = [n for n in task.layout.names[task.layout.nq + 3 :]]
        entries["joint_speed"] = {"kind": "state_bounds", "dims": joints, "lower": -1.0,
                                  "upper": 1.0}  # fmt: skip
    return entries


def centred_bounds(entries: dict, task, model, states, plans) -> dict:
    """Place every state bound from the predicted spread (see the module docstring)."""
    with torch.no_grad():
        pred = model.mean_next_state(torch.as_tensor(states), torch.as_tensor(plans)).numpy()
    for entry in entries.values():
        if entry["kind"] != "state_bounds":
            continue
        idx = [task.layout.index(d) for d in entry["dims"]]
        q25, med, q75 = np.percentile(pred[:, idx], [25, 50, 75], axis=0)
        if "lower" in entry and "upper" in entry:  # a band around the median
            iqr = q75 - q25
            entry["lower"], entry["upper"] = (med - 1.5 * iqr).tolist(), (med + 1.5 * iqr).tolist()
        elif "upper" in entry:
            entry["upper"] = q75.tolist()
        else:
            entry["lower"] = q25.tolist()
    return entries


def time_steps(filt: QPFilter, states: np.ndarray, plans: np.ndarray):
    """Per-step wall and CPU times of the whole call, the linearisation and the solves."""
    calls: dict[str, list[tuple[float, float]]] = {"linearise": [], "qp": []}

    def timed(fn, sink):
        def wrapper(*args, **kwargs):
            t, c = time.perf_counter(), time.process_time()
            out = fn(*args, **kwargs)
            sink.append((time.perf_counter() - t, time.process_time() - c))
            return out

        return wrapper

    filt.linearise = timed(filt.linearise, calls["linearise"])
    filt._solve = timed(filt._solve, calls["qp"])
    names = ("step", "linearise", "qp", "qp+fallback")
    times = {k: {"wall": [], "cpu": []} for k in names}
    statuses: dict[str, int] = {}
    for s, a in zip(states, plans, strict=True):
        n_qp = len(calls["qp"])
        t, c = time.perf_counter(), time.process_time()
        res = filt(s, a)
        step = (time.perf_counter() - t, time.process_time() - c)
        solves = np.sum(calls["qp"][n_qp:], axis=0) if len(calls["qp"]) > n_qp else None
        parts = {"step": step, "linearise": calls["linearise"][-1]}
        if res.status == "optimal":
            parts["qp"] = solves
        elif res.fallback is not None and solves is not None:
            parts["qp+fallback"] = solves
        for k, (wall, cpu) in parts.items():
            times[k]["wall"].append(wall)
            times[k]["cpu"].append(cpu)
        statuses[res.status] = statuses.get(res.status, 0) + 1
    return times, statuses


def summary(name: str, xs: list[float]) -> str:
    if not xs:
        return f"{name} n/a"
    ms = np.asarray(xs) * 1e3
    return f"{name} {np.median(ms):6.3f} / {np.percentile(ms, 95):6.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="half_cheetah_safe")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    task = get_task(args.task)
    rng = np.random.default_rng(args.seed)
    states = episode_states(task, args.steps, args.seed).astype(np.float32)  # [T, S]
    low, high = task.action_bounds
    plans = rng.uniform(low, high, size=(args.steps, task.action_dim)).astype(np.float32)
    # Plans slightly outside the actuator range too, so the box rows bind at times.
    plans *= 1.1
    model = WorldModel(task.state_dim, task.action_dim, input_mask=task.layout.input_mask, seed=0)
    model.eval()

    print(f"{args.task}: S={task.state_dim}, A={task.action_dim}, {args.steps} steps, "
          f"torch threads=1; median / p95")  # fmt: skip
    for extra in (False, True):
        entries = centred_bounds(constraint_entries(task, extra), task, model, states, plans)
        cs = constraint_set(
            entries, layout=task.layout, action_dim=task.action_dim,
            action_bounds=task.action_bounds,
        )  # fmt: skip
        n_state = sum(
            np.isfinite(e.lower).sum() + np.isfinite(e.upper).sum()
            for e in cs.entries
            if isinstance(e, StateBoundsEntry)
        )
        for solver in SOLVERS:
            filt = QPFilter(cs, model.mean_next_state, solver=solver)
            filt(states[0], plans[0])  # first call: solver set-up
            times, statuses = time_steps(filt, states, plans)
            print(f"  rows={len(filt.row_names):2d} (state {n_state:2d}) {solver:8s} {statuses}")
            for clock in ("wall", "cpu"):
                print(
                    f"    {clock:4s} " + " | ".join(summary(k, v[clock]) for k, v in times.items())
                )


if __name__ == "__main__":
    main()
