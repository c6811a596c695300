"""Control quality per unit of planning compute: return against imagined transitions a step.

A planner is judged by the return it gets for the imagined transitions (sequence x
particle x step) it spends on a decision. For each task, this script takes finished runs
of the task's base variant (trained first when missing, through ``sweep.py``), keeps their
final models fixed, and evaluates them with every planner arm below: CEM (Chua et al.
2018, PETS) and iCEM (Pinneri et al. 2020: coloured noise, kept elites, a shrinking
population, the shifted previous solution and the best sequence executed) at shrinking
populations, MCTS at fewer simulations, and plan reuse (``planner.replan_every``: the
plan is executed open-loop for k steps between planning calls, so a step costs 1/k of a
call). Each arm's evaluation is the run's own final evaluation (``Loop.final_evaluation``
on a copy of the run directory): the learned agent, a random policy and the reference
agent (hidden reward and rule, the same world model) on the same environment seeds,
all with the arm's planner.

Per arm and seed it records the evaluation return, the reference's return, unacceptable
steps, planning seconds per step and imagined transitions per environment step, counted
during the evaluation (every imagination call's sequences x steps x particles over the
agents' steps; with plan reuse this includes the one-sequence re-checks and any early
replanning). The score is ``(R - R_random) / (R_ref* - R_random)``
against the reference agent of the *base* planner (a fixed yardstick for every arm), and
``own_score`` against the arm's own reference.

    python benchmarks/planner_efficiency.py [--tasks reacher_keepout,half_cheetah_safe]
        [--seeds 0,1,2] [--arms NAME,...] [--smoke]

Writes ``docs/planner_efficiency.json`` (one record per task, arm and seed), ``.md`` and
``.png`` (return against imagined transitions per step, log scale, mean and spread over
seeds). Budget on the 2-core AMD EPYC: reacher_keepout ~1 min per arm and seed at
today's budget (10 x 3 evaluation episodes of 50 steps), less at smaller ones.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import sweep as sw
import torch
from omegaconf import OmegaConf

from mbrm.run import build_loop, compose_config

STEM = "planner_efficiency"
TASKS = ("reacher_keepout", "half_cheetah_safe")

# The runs whose models are evaluated: the demo itself on reacher_keepout; oracle mode on
# half_cheetah_safe (its learned agent does not yet control the task, so the curve there
# measures planning with the hidden reward in the learned world model).
BASE: dict[str, sw.Variant] = {
    "reacher_keepout": sw.task_variant("reacher_keepout", "demo", label="demo"),
    "half_cheetah_safe": sw.task_variant(
        "half_cheetah_safe",
        "oracle_mode",
        "reward_model=oracle",
        "constraints.kind=hidden_rule",
        label="oracle mode",
    ),
}


@dataclass(frozen=True)
class Arm:
    """A planner setting: its family (for the plot), label and overrides."""

    family: str
    label: str
    overrides: tuple[str, ...]


def _cem(pop: int, iters: int, elites: int = 10, k: int = 1) -> Arm:
    reuse = (f"planner.replan_every={k}",)
    label = f"CEM {pop}x{iters}" + (f", replan every {k}" if k > 1 else "")
    over = ("planner=cem_fast", f"planner.population={pop}", f"planner.iterations={iters}")
    return Arm(
        "CEM" if k == 1 else "CEM + plan reuse", label, (*over, f"planner.elites={elites}", *reuse)
    )


def _icem(pop: int, iters: int, elites: int = 10, k: int = 1) -> Arm:
    reuse = (f"planner.replan_every={k}",)
    label = f"iCEM {pop}/{iters} it" + (f", replan every {k}" if k > 1 else "")
    over = ("planner=icem_fast", f"planner.population={pop}", f"planner.iterations={iters}")
    return Arm(
        "iCEM" if k == 1 else "iCEM + plan reuse",
        label,
        (*over, f"planner.elites={elites}", *reuse),
    )


def _mcts(sims: int, batch: int) -> Arm:
    over = (
        "planner=mcts_fast",
        f"planner.simulations={sims}",
        f"planner.batch_size={batch}",
        "planner.replan_every=1",
    )
    return Arm("MCTS", f"MCTS {sims}", over)


# name -> arm; the first is the base planner (the demo's cem_fast).
ARMS: dict[str, Arm] = {
    "cem_100x3": _cem(100, 3),  # the demo's planner until plan reuse
    "cem_50x3": _cem(50, 3),
    "cem_25x3": _cem(25, 3, elites=5),
    "icem_60x3": _icem(60, 3),
    "icem_40x2": _icem(40, 2, elites=8),
    "icem_24x2": _icem(24, 2, elites=5),
    "mcts_300": _mcts(300, 100),
    "mcts_75": _mcts(75, 25),
    "cem_48x3_k2": _cem(48, 3, k=2),  # the demo's planner now (planner=cem_fast)
    "cem_25x3_k2": _cem(25, 3, elites=5, k=2),
    "icem_40x2_k2": _icem(40, 2, elites=8, k=2),
}
BASE_ARM = "cem_100x3"


def arm_config(sweep: sw.Sweep, base: sw.Variant, seed: int, arm: Arm, saved: Path) -> Any:
    """The saved run's config with the arm's planner and agent settings composed in."""
    over = [*base.overrides, f"seed={seed}", *arm.overrides]
    if sweep.smoke:  # the smoke sizes, the planner's for the arm's planner family
        over += sw.smoke_overrides(over)
    composed = compose_config([*sw.DEMO_OVERRIDES, *over])
    cfg = OmegaConf.load(saved)
    cfg.planner = composed.planner
    cfg.progress = False
    return cfg


def transitions_per_step(cfg: Any) -> dict[str, float]:
    """Imagined sequences of one planning call (counted), and transitions per env step."""
    plan = sw.count_planning_step(cfg)
    horizon = int(cfg.planner.horizon)
    per_call = plan.n_candidates * horizon * int(cfg.experiment.particles)
    return {
        "sequences_per_call": plan.n_candidates,
        "replan_every": int(cfg.planner.get("replan_every", 1)),
        "transitions_per_planner_call": per_call,
    }


class Counter:
    """Counts imagined transitions and agent steps while an evaluation runs in-process."""

    def __init__(self) -> None:
        self.transitions = 0
        self.steps = 0

    @contextmanager
    def watching(self) -> Iterator[None]:
        from mbrm.agent import Agent
        from mbrm.imagination import ModelImagination

        call, act = ModelImagination.__call__, Agent.act
        counter = self

        def counted_call(self: Any, state: torch.Tensor, actions: torch.Tensor) -> Any:
            counter.transitions += actions.shape[0] * actions.shape[1] * self.particles
            return call(self, state, actions)

        def counted_act(self: Any, *args: Any, **kwargs: Any) -> Any:
            counter.steps += 1
            return act(self, *args, **kwargs)

        ModelImagination.__call__, Agent.act = counted_call, counted_act  # type: ignore[method-assign]
        try:
            yield
        finally:
            ModelImagination.__call__, Agent.act = call, act  # type: ignore[method-assign]


def evaluate(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """The run's final evaluation with ``cfg``'s planner, on a copy of the run directory,
    in this process (one worker) so that the imagined transitions per step are counted
    (the learned and the reference agent together)."""
    if "eval_workers" in cfg.experiment:
        cfg.experiment.eval_workers = 1
    counter = Counter()
    with tempfile.TemporaryDirectory(prefix="mbrm-eff-") as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("videos", "*.mp4", "*.gif"))
        loop = build_loop(cfg, copy)
        loop.resume()
        t0 = time.perf_counter()
        with counter.watching():
            summary = loop.final_evaluation(video_episodes=0)
        summary["eval_wall_seconds"] = time.perf_counter() - t0
        summary["measured_transitions_per_step"] = counter.transitions / max(counter.steps, 1)
        loop.store.close()
    return summary


def records_for(
    sweep: sw.Sweep, task: str, seed: int, run_dir: Path, arms: list[str]
) -> list[dict[str, Any]]:
    """Every arm's evaluation of one finished run (the base arm first: the yardstick)."""
    torch.set_num_threads(1)
    base = BASE[task]
    out = []
    yardstick = float("nan")
    for name in [BASE_ARM, *[a for a in arms if a != BASE_ARM]]:
        arm = ARMS[name]
        cfg = arm_config(sweep, base, seed, arm, run_dir / "config.yaml")
        budget = transitions_per_step(cfg)
        s = evaluate(cfg, run_dir)
        if name == BASE_ARM:
            yardstick = s["oracle_return"]
        gap = yardstick - s["random_return"]
        rec = {
            "task": task,
            "seed": seed,
            "arm": name,
            "family": arm.family,
            "label": arm.label,
            "overrides": list(arm.overrides),
            **budget,
            "transitions_per_step": s["measured_transitions_per_step"],
            "eval_return": s["eval_return"],
            "random_return": s["random_return"],
            "oracle_return": s["oracle_return"],
            "base_oracle_return": yardstick,
            "score": (s["eval_return"] - s["random_return"]) / gap if gap > 0 else float("nan"),
            "own_score": s["normalised_score"],
            "eval_unacceptable_steps": s["eval_unacceptable_steps"],
            "oracle_unacceptable_steps": s["oracle_unacceptable_steps"],
            "plan_seconds_per_step": s["plan_seconds_per_step"],
            "eval_wall_seconds": s["eval_wall_seconds"],
        }
        print(
            f"{task} seed {seed} {arm.label}: {rec['transitions_per_step']:,.0f} transitions "
            f"per step, return {rec['eval_return']:.2f} (reference {rec['oracle_return']:.2f}),"
            f" score {rec['score']:.3f}, {rec['eval_unacceptable_steps']} unacceptable steps,"
            f" {rec['plan_seconds_per_step'] * 1000:.0f} ms per step",
            flush=True,
        )
        out.append(rec)
    return out


def table(records: list[dict[str, Any]]) -> str:
    rows = []
    keys = list(dict.fromkeys((r["task"], r["arm"]) for r in records))
    for task, arm in keys:
        rs = [r for r in records if r["task"] == task and r["arm"] == arm]
        rows.append(
            [
                task,
                rs[0]["label"],
                f"{rs[0]['transitions_per_step']:,.0f}",
                sw.mean_sd([r["score"] for r in rs]),
                sw.per_seed([r["score"] for r in rs]),
                sw.mean_sd([r["eval_return"] for r in rs], ".2f"),
                sw.mean_sd([r["own_score"] for r in rs]),
                str(sum(r["eval_unacceptable_steps"] for r in rs)),
                sw.mean_sd([r["plan_seconds_per_step"] * 1000 for r in rs], ".0f"),
            ]
        )
    header = [
        "task",
        "planner",
        "imagined transitions per step",
        "score vs base reference",
        "per seed",
        "eval return",
        "score vs own reference",
        "unacceptable steps, eval (all seeds)",
        "ms per step",
    ]
    return sw.markdown_table(header, rows)


def figure(records: list[dict[str, Any]]):
    """Score against the base planner's reference, against transitions per step (log)."""
    tasks = list(dict.fromkeys(r["task"] for r in records))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rs = [r for r in records if r["task"] == task]
        for i, fam in enumerate(dict.fromkeys(r["family"] for r in rs)):
            arms = list(dict.fromkeys(r["arm"] for r in rs if r["family"] == fam))
            xs, ms, lo, hi = [], [], [], []
            for a in arms:
                v = [r["score"] for r in rs if r["arm"] == a]
                xs.append(float(np.mean([r["transitions_per_step"] for r in rs if r["arm"] == a])))
                ms.append(np.mean(v))
                lo.append(np.min(v))
                hi.append(np.max(v))
            order = np.argsort(xs)
            x, m = np.array(xs)[order], np.array(ms)[order]
            ax.plot(x, m, "o-", color=f"C{i}", label=fam)
            ax.fill_between(x, np.array(lo)[order], np.array(hi)[order], color=f"C{i}", alpha=0.15)
            unsafe = [
                a for a in arms if any(r["eval_unacceptable_steps"] for r in rs if r["arm"] == a)
            ]
            for a in unsafe:
                j = arms.index(a)
                ax.plot(xs[j], ms[j], "x", color="red", ms=12, mew=2)
        ax.axhline(1.0, color="k", ls="--", lw=1, label=f"reference agent, {ARMS[BASE_ARM].label}")
        ax.plot([], [], "x", color="red", ms=8, mew=2, label="unacceptable steps in evaluation")
        ax.set_xscale("log")
        ax.set_xlabel("imagined transitions per environment step (counted)")
        ax.set_ylabel("score (mean; band: min-max over seeds)")
        ax.set_title(f"{task}: score against planning compute")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def publish(
    out: Path,
    stem: str,
    records: list[dict[str, Any]],
    command: str,
    sweep: sw.Sweep,
    tasks: list[str],
    started: float,
    wall_note: str = "finished runs found under the root are reused",
) -> None:
    seeds = sorted({r["seed"] for r in records})
    sw.publish(
        out,
        stem,
        title="Planning efficiency: score against imagined transitions per step",
        intro=(
            "Each task's finished runs (reacher_keepout: the demo; half_cheetah_safe: oracle mode)"
            " evaluated with their final models fixed and each planner arm; mean ± sd over seeds "
            f"{seeds}. Score against the reference agent of the base planner "
            f"({ARMS[BASE_ARM].label}). Machine-readable: {stem}.json."
        ),
        budget=sw.budget_text(sweep, tasks),
        table=table(records),
        commands=[command],
        figure=figure(records),
        started=started,
        wall_note=wall_note,
    )


def main() -> None:
    p = sw.parser(__doc__, TASKS)
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated arm names")
    p.add_argument("--stem", default=STEM, help=f"output file names in docs/ (default {STEM})")
    p.add_argument(
        "--replot", action="store_true", help="redraw the table and plot from docs/<stem>.json"
    )
    args = p.parse_args()
    started = time.monotonic()
    sweep = sw.make_sweep(args)
    tasks = sw.task_list(args)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; known: {', '.join(ARMS)}")
    out = sw.output_dir(sweep.root, sweep.smoke)
    if args.replot:
        saved = json.loads((out / f"{args.stem}.json").read_text())
        recs = saved["records"]
        ran = list(dict.fromkeys(r["task"] for r in recs))
        note = f"redrawn from {args.stem}.json, git revision {saved['git_revision']}"
        publish(out, args.stem, recs, saved["command"], sweep, ran, started, wall_note=note)
        return
    jobs = [
        (task, r.seed, r.run_dir)
        for task in tasks
        for r in sorted(sweep.run([BASE[task]]), key=lambda r: r.seed)
    ]
    # One process per run at a time (--jobs): the evaluations count in-process.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        futures = [pool.submit(records_for, sweep, t, seed, d, arms) for t, seed, d in jobs]
        records = [rec for f in futures for rec in f.result()]
    named = [("tasks", args.tasks), ("seeds", args.seeds), ("arms", args.arms)]
    if args.stem != STEM:
        named.append(("stem", args.stem))
    command = "python benchmarks/planner_efficiency.py " + " ".join(f"--{k}={v}" for k, v in named)
    (out / f"{args.stem}.json").write_text(
        json.dumps(
            {"git_revision": sw.git_revision(), "command": command, "records": records}, indent=1
        )
        + "\n"
    )
    publish(out, args.stem, records, command, sweep, tasks, started)


if __name__ == "__main__":
    main()
