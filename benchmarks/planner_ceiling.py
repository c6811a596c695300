"""The planner's ceiling on a task: the configured planner with a perfect world model.

Is it the world model or the planner that limits a task? Here the planner's imagination
is MuJoCo itself (``mujoco.rollout`` from the real state, the task's frame skip), scored
with the hidden reward and judged by the hidden unacceptable rule, one particle (the
simulator is deterministic). What a learned agent reaches below this figure is the
world model's (and the learned reward's) share; what this figure lacks of a target is
the planner's. The agent's plan reuse is left out: the planner plans every step
(``replan_every`` 1), warm-started from its last plan.

    python benchmarks/planner_ceiling.py [--tasks half_cheetah_safe,hopper_safe]
        [--planners cem_fast,cem] [--steps 300] [--seeds 0] [--set planner.horizon=18]

Prints a table and writes ``docs/planner_ceiling.json`` and ``.md`` (``--stem``):
return, mean forward speed (root x travelled per second; pendulum and reacher: none),
unacceptable steps and seconds per planning step, per task, planner and seed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from typing import Any

import mujoco
import numpy as np
import sweep as sw
import torch
from mujoco import rollout
from omegaconf import OmegaConf

from mbrm.run import compose_config
from mbrm.tasks import TASKS, get_task
from planners import PLANNERS, ImaginedBatch, make_planner

LOCOMOTION = ("half_cheetah_safe", "hopper_safe")
FULL = mujoco.mjtState.mjSTATE_FULLPHYSICS


class SimImagination:
    """Imagined futures by simulation: ``self(state, actions)`` for the planners."""

    def __init__(self, task: Any, env: Any) -> None:
        self.task = task
        self.model = env.unwrapped.model
        self.data = mujoco.MjData(self.model)
        self.skip = int(env.unwrapped.frame_skip)
        self.nq, self.nv = self.model.nq, self.model.nv

    def full_state(self, s: np.ndarray) -> np.ndarray:
        self.data.qpos[:] = s[: self.nq]
        self.data.qvel[:] = s[self.nq : self.nq + self.nv]
        out = np.empty(mujoco.mj_stateSize(self.model, FULL))
        mujoco.mj_getState(self.model, self.data, out, FULL)
        return out

    def __call__(self, state: torch.Tensor, actions: torch.Tensor) -> ImaginedBatch:
        s0 = state.double().cpu().numpy()
        a = actions.double().cpu().numpy()  # [n, H, A]
        n, H, _ = a.shape
        control = np.repeat(a, self.skip, axis=1)  # the env repeats an action frame_skip times
        full, _ = rollout.rollout(self.model, self.data, self.full_state(s0)[None], control)
        full = full[:, self.skip - 1 :: self.skip]  # [n, H, nstate]: after each env step
        qpos_qvel = full[..., 1 : 1 + self.nq + self.nv]  # FULLPHYSICS starts with the time
        S = np.concatenate([np.broadcast_to(s0, (n, 1, s0.shape[0])), qpos_qvel], axis=1)
        reward = self.task.true_reward(S[:, :-1], a, S[:, 1:])
        bad = self.task.unacceptable(S[:, 1:]).astype(np.float64)

        def f(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(x, dtype=torch.float32)[:, None]  # one particle

        return ImaginedBatch(f(S), f(reward), torch.zeros(n, 1, H), f(bad))


def episode(task_name: str, planner_name: str, steps: int, seed: int, extra: list[str]) -> dict:
    """One episode of ``steps`` steps of the planner on the simulator; its figures."""
    cfg = compose_config(
        [f"task={task_name}", f"planner={planner_name}", "planner.replan_every=1", *extra]
    )
    task = get_task(task_name)
    low, high = task.action_bounds
    settings_type, _ = PLANNERS[cfg.planner.kind]
    settings = settings_type(**OmegaConf.to_container(cfg.planner, resolve=True))
    planner = make_planner(settings, low.tolist(), high.tolist())
    env = task.make_env(seed)
    s, _ = env.reset(seed=seed)
    imagine = SimImagination(task, env)
    generator = torch.Generator().manual_seed(seed)
    previous, seconds, states, actions, no_safe = None, [], [s], [], 0
    for _ in range(steps):
        t0 = time.perf_counter()
        res = planner.plan(
            torch.as_tensor(s, dtype=torch.float32),
            imagine,
            generator=generator,
            previous_plan=previous,
        )
        seconds.append(time.perf_counter() - t0)
        previous, no_safe = res.plan, no_safe + int(res.no_safe_plan)
        a = res.action.double().numpy()
        s, *_ = env.step(a)
        states.append(s)
        actions.append(a)
    env.close()
    S, A = np.array(states), np.array(actions)
    out = {
        "task": task_name,
        "planner": planner_name,
        "overrides": extra,
        "seed": seed,
        "steps": steps,
        "return": float(task.true_reward(S[:-1], A, S[1:]).sum()),
        "unacceptable_steps": int(task.unacceptable(S[1:]).sum()),
        "no_safe_plan_steps": no_safe,
        "s_per_step": statistics.median(seconds),
    }
    if task_name in LOCOMOTION:
        out["mean_speed"] = float((S[-1, 0] - S[0, 0]) / (steps * task.layout.dt))
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", default="half_cheetah_safe,hopper_safe")
    p.add_argument("--planners", default="cem_fast,cem")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", default="0")
    p.add_argument(
        "--set", action="append", default=[], help="an override, e.g. planner.horizon=18"
    )
    p.add_argument("--stem", default="planner_ceiling")
    args = p.parse_args()
    if args.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}")
    unknown = [t for t in args.tasks.split(",") if t not in TASKS]
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; known: {sorted(TASKS)}")
    planners = sorted(p.stem for p in (sw.CONFIG_DIR / "planner").glob("*.yaml"))
    unknown = [x for x in args.planners.split(",") if x not in planners]
    if unknown:
        raise SystemExit(f"--planners: unknown {unknown}; known: {planners}")
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds: comma-separated integers, got {args.seeds!r}") from None
    started = time.monotonic()
    records = []
    for task_name in args.tasks.split(","):
        for planner_name in args.planners.split(","):
            for seed in seeds:
                r = episode(task_name, planner_name, args.steps, seed, args.set)
                records.append(r)
                print(json.dumps(r), flush=True)
    command = shlex.join(["python", "benchmarks/planner_ceiling.py", *sys.argv[1:]])
    header = ["task", "planner", "seed", "steps", "return", "mean speed (m/s)"]
    header += ["unacceptable steps", "steps without a safe plan", "s per step"]
    rows = [
        [
            r["task"],
            " ".join([r["planner"], *r["overrides"]]),
            r["seed"],
            r["steps"],
            f"{r['return']:.1f}",
            f"{r['mean_speed']:.2f}" if "mean_speed" in r else "-",
            r["unacceptable_steps"],
            r["no_safe_plan_steps"],
            f"{r['s_per_step']:.3f}",
        ]
        for r in records
    ]
    table = sw.markdown_table(header, rows)
    meta = {"command": command, "cpu": sw.cpu_name(), "revision": sw.git_revision()}
    sw.DOCS.mkdir(exist_ok=True)
    (sw.DOCS / f"{args.stem}.json").write_text(
        json.dumps({**meta, "records": records}, indent=1) + "\n"
    )
    minutes = (time.monotonic() - started) / 60
    (sw.DOCS / f"{args.stem}.md").write_text(
        "# The planner's ceiling: the configured planner with a perfect world model\n\n"
        f"{table}\n\n```bash\n{command}\n```\n\nCPU: {meta['cpu']}; revision {meta['revision']}; "
        f"{minutes:.1f} min.\n"
    )
    print(f"\n{table}\n\nwrote docs/{args.stem}.json and .md ({minutes:.1f} min)")


if __name__ == "__main__":
    main()
