"""Variants x seeds of ``mbrm demo`` with Hydra multirun, reusing finished runs.

Every experiment script in ``benchmarks/`` describes its arms as :class:`Variant`
objects (a name and Hydra overrides on top of ``mbrm demo``) and hands them to
:meth:`Sweep.run`. For each variant the seeds without a finished run are started
by one Hydra multirun call (joblib launcher)::

    mbrm demo hydra.mode=MULTIRUN seed=0,1,2 <overrides> progress=false \\
        hydra.launcher.n_jobs=2 hydra.sweep.dir=<root> 'hydra.sweep.subdir=<variant>/seed_${seed}'

A run directory holding ``summary.json`` and a ``sweep.json`` with the same
overrides is reused, so experiments that share a variant (the plain demo on
reacher_keepout appears in several) share its runs. ``--smoke`` appends tiny
models and a 6-episode schedule to every variant and writes to a separate root, so
the whole pipeline (runs, tables, plots) can be checked in a minute or two; its
figures mean nothing.

``hydra.mode=MULTIRUN`` rather than ``-m``: ``mbrm demo`` puts its own overrides
before the arguments it is given, and Hydra's parser takes no flag after them.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "configs"
DOCS = REPO / "docs"
DEFAULT_ROOT = REPO / "benchmarks" / "runs"
SMOKE_ROOT = REPO / "benchmarks" / "runs_smoke"

# What `mbrm demo` composes before the arguments it is given (mbrm/cli.py).
DEMO_OVERRIDES = ("experiment=demo", "world_model=small", "planner=cem_fast")

# Schedules per task. reacher_keepout runs the demo as it is: 4 random then 20 acting
# episodes of 50 steps, 10 particles and 10 evaluation episodes (~5 min a run on one
# core). inverted_pendulum runs its preset (configs/experiment/inverted_pendulum.yaml:
# 200-step episodes, 2 random + 10 acting, the experimenter's reset) with the PETS world
# model and an 18-step horizon (~20 min a run). half_cheetah_safe runs its preset
# (configs/experiment/half_cheetah_safe.yaml: 1 random + 19 acting episodes of 1,000
# steps) with icem_fast (~60-90 min a run). hopper_safe, whose preset is not settled
# yet, gets a short budget: episodes cut to 100 steps, 2 random + 10 acting episodes, 5
# particles and 3 evaluation episodes (~4 min a run).
SHORT_BUDGET = (
    "task.episode_length=100",
    "experiment.explore_episodes=2",
    "experiment.iterations=10",
    "experiment.particles=5",
    "experiment.eval_episodes=3",
)
TASK_BUDGET: dict[str, tuple[str, ...]] = {
    "reacher_keepout": (),
    "inverted_pendulum": ("experiment=inverted_pendulum", "world_model=pets", "planner.horizon=18"),
    "half_cheetah_safe": (
        "experiment=half_cheetah_safe",
        "task.episode_length=1000",
        "planner=icem_fast",
    ),
    "hopper_safe": SHORT_BUDGET,
}

# --smoke: the sizes of tests/test_loop.py's tiny runs and a 6-episode schedule. Keys
# that define an experiment's arms (imagined_every, solicit.synthesised, the planner,
# the constraint mode, frozen_reward_after) are left alone.
SMOKE_OVERRIDES = (
    "world_model.ensemble_size=2",
    "world_model.elites=2",
    "world_model.hidden=16",
    "world_model.layers=1",
    "reward_model.hidden=16",
    "reward_model.layers=1",
    "reward_model.ensemble_size=2",
    "classifier.hidden=16",
    "classifier.layers=1",
    "classifier.ensemble_size=2",
    "task.episode_length=20",
    "experiment.explore_episodes=1",
    "experiment.iterations=5",
    "experiment.eval_episodes=1",
    "experiment.particles=2",
    "experiment.world_model_epochs=2",
    "experiment.reward_epochs=2",
    "experiment.classifier_epochs=2",
    "experiment.solicit.segment_length=4",
    "experiment.solicit.real_candidates=6",
    "experiment.solicit.unacceptable=2",
    "experiment.solicit.preferences={disagreement: 2, novelty: 1, min_reward: 1}",
)
SMOKE_PLANNER = {
    "cem": (
        "planner.population=12",
        "planner.elites=3",
        "planner.iterations=2",
        "planner.horizon=4",
    ),
    "mcts": ("planner.simulations=16", "planner.batch_size=8", "planner.horizon=4"),
}
POLL_SECONDS = 5.0


class SweepError(RuntimeError):
    """A run of a sweep failed; the message names the variant, the seeds and the log."""


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment: Hydra overrides on top of ``mbrm demo``.

    ``name`` is also the run's directory under the root (``<task>/<arm>``), so two
    experiments that build the same variant share its runs.
    """

    name: str
    overrides: tuple[str, ...]
    label: str = ""  # shown in tables and legends; the name's last part when empty

    @property
    def title(self) -> str:
        return self.label or self.name.rsplit("/", 1)[-1]


def task_variant(task: str, arm: str, *overrides: str, label: str = "") -> Variant:
    """``<task>/<arm>``: the task's schedule (:data:`TASK_BUDGET`) plus ``overrides``."""
    if task not in TASK_BUDGET:
        raise ValueError(f"no schedule for task {task!r}; known: {sorted(TASK_BUDGET)}")
    return Variant(f"{task}/{arm}", (f"task={task}", *TASK_BUDGET[task], *overrides), label)


@dataclass(frozen=True)
class RunRecord:
    """A finished run: its ``summary.json`` and the per-episode rows of ``metrics.csv``."""

    variant: Variant
    seed: int
    run_dir: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]  # numbers as float, empty cells as NaN, text as str
    meta: dict[str, Any] = field(default_factory=dict)  # sweep.json: overrides, revision

    @property
    def revision(self) -> str:
        """The git revision the run was started from (``unknown`` for runs of old sweeps)."""
        return str(self.meta.get("revision", "unknown"))

    def column(self, key: str) -> np.ndarray:
        """One metrics column over episodes, NaN where a row lacks it."""
        return np.array([_as_float(row.get(key, math.nan)) for row in self.metrics])

    def acting_unacceptable_steps(self) -> int:
        """Unacceptable steps of the planner's training episodes (random exploration left
        out: its episodes are the same in every arm of an experiment)."""
        return int(
            sum(
                row.get("unacceptable_steps", 0)
                for row in self.metrics
                if row.get("phase") == "act"
            )
        )


# Keys that say how a run was started, not what it computes.
_RUN_ONLY_KEYS = ("progress", "resume", "device")
# Keys inside a group that change how a run is carried out, never its figures.
_RUN_ONLY_GROUP_KEYS = (("experiment", "eval_workers"),)
# Settings added after runs were saved, with the value that computes what those runs did:
# a saved config without the key matches a composed one at that value.
_ADDED_KEYS = {
    "reward_model.lapse": 0.0,
    "experiment.plan_review": {
        "when": [],
        "every": 25,
        "reward_std_above": 1.0,
        "risk_above": 0.25,
        "plans": 3,
        "near": 0.25,
        "on_reject": "replan",
        "max_per_episode": 5,
        "mistake": 0.0,
    },
}


def config_changes(composed: Any, saved_path: Path) -> list[str]:
    """Dotted keys whose value differs between ``composed`` and a run's saved config.yaml
    (a missing config.yaml counts as changed)."""
    from omegaconf import OmegaConf

    if not saved_path.exists():
        return ["config.yaml missing"]
    a = OmegaConf.to_container(composed, resolve=True)
    b = OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True)
    for key in _RUN_ONLY_KEYS:
        a.pop(key, None)
        b.pop(key, None)
    for group, key in _RUN_ONLY_GROUP_KEYS:
        a.get(group, {}).pop(key, None)
        b.get(group, {}).pop(key, None)
    out: list[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y), key=str):
                walk(x.get(k, "<absent>"), y.get(k, "<absent>"), f"{prefix}{k}.")
        elif x != y and not (y == "<absent>" and _ADDED_KEYS.get(prefix.rstrip("."), y) == x):
            out.append(prefix.rstrip("."))

    walk(a, b, "")
    return out


def _as_float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _parse_cell(text: str) -> float | str:
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        return text


def read_record(variant: Variant, seed: int, run_dir: Path) -> RunRecord:
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]
    meta_path = run_dir / "sweep.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return RunRecord(variant, seed, run_dir, summary, rows, meta)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, as ``lscpu`` reports it) and its core count."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    return f"{model or 'unknown CPU'}, {os.cpu_count()} cores"


def git_revision() -> str:
    """``git describe --always --dirty`` of the repository (``unknown`` outside a checkout)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def group_choice(overrides: Sequence[str], group: str, default: str) -> str:
    """The option a config group gets: its last ``group=`` override, else ``default``."""
    chosen = default
    for o in overrides:
        if o.startswith(f"{group}="):
            chosen = o.split("=", 1)[1]
    return chosen


def planner_family(overrides: Sequence[str]) -> str:
    """``cem`` or ``mcts``: the family of the planner (the demo's cem_fast by default)."""
    return "mcts" if group_choice(overrides, "planner", "cem_fast").startswith("mcts") else "cem"


def smoke_overrides(overrides: Sequence[str]) -> list[str]:
    """The smoke sizes that exist in the chosen configs (oracle mode has no reward network)."""
    out = list(SMOKE_OVERRIDES)
    if group_choice(overrides, "reward_model", "ensemble") != "ensemble":
        out = [o for o in out if not o.startswith("reward_model.")]
    return out + list(SMOKE_PLANNER[planner_family(overrides)])


def mbrm_executable() -> str:
    """The ``mbrm`` console script of this interpreter's environment."""
    beside = Path(sys.executable).parent / "mbrm"
    found = str(beside) if beside.exists() else shutil.which("mbrm")
    if found is None:
        raise SweepError(
            "the `mbrm` command is not installed in this environment: run `make test` "
            "or `pip install -e .` first"
        )
    return found


@dataclass(frozen=True)
class Sweep:
    """Where runs live and how many run at once; :meth:`run` fills in what is missing."""

    root: Path
    seeds: tuple[int, ...]
    jobs: int = 2
    smoke: bool = False

    def overrides(self, variant: Variant) -> list[str]:
        """The variant's overrides, then the smoke sizes when ``smoke``."""
        out = list(variant.overrides)
        if self.smoke:
            out += smoke_overrides(out)
        return out

    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.root / variant.name / f"seed_{seed}"

    def command(
        self, variant: Variant, seeds: Sequence[int], executable: str = "mbrm"
    ) -> list[str]:
        return [
            executable,
            "demo",
            "hydra.mode=MULTIRUN",
            "seed=" + ",".join(str(s) for s in seeds),
            *self.overrides(variant),
            "progress=false",
            f"hydra.launcher.n_jobs={min(self.jobs, len(seeds))}",
            f"hydra.sweep.dir={self.root}",
            f"hydra.sweep.subdir={variant.name}/seed_${{seed}}",
        ]

    def run_command_text(self, variant: Variant, seed: int) -> str:
        """The one ``mbrm demo`` command that reproduces a single run of ``variant``."""
        return shlex.join(["mbrm", "demo", f"seed={seed}", *self.overrides(variant)])

    def command_text(self, variant: Variant) -> str:
        """The command as a reader reruns it from the repository root."""
        args = self.command(variant, self.seeds)
        if self.root.is_relative_to(REPO):
            args = [
                f"hydra.sweep.dir={self.root.relative_to(REPO)}"
                if a.startswith("hydra.sweep.dir=")
                else a
                for a in args
            ]
        return shlex.join(args)

    def compose(self, variant: Variant, seed: int | None = None) -> Any:
        """The configuration a run of ``variant`` gets (no run is started)."""
        from mbrm.run import compose_config

        extra = [] if seed is None else [f"seed={seed}"]
        return compose_config([*DEMO_OVERRIDES, *self.overrides(variant), *extra])

    def _finished(self, variant: Variant, seed: int) -> bool:
        """A finished run of these overrides and seed whose configuration is still the
        one the config files compose (a changed default, e.g. in experiment/demo.yaml,
        makes it stale: it is run again, not reused)."""
        d = self.run_dir(variant, seed)
        if not (d / "summary.json").exists() or not (d / "sweep.json").exists():
            return False
        stored = json.loads((d / "sweep.json").read_text())
        if stored.get("overrides") != self.overrides(variant) or stored.get("seed") != seed:
            return False
        changed = config_changes(self.compose(variant, seed), d / "config.yaml")
        if changed:
            print(
                f"sweep: {variant.name} seed {seed}: the configuration changed since the run "
                f"({', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''}); running it again",
                flush=True,
            )
        return not changed

    def _mark(self, variant: Variant, seed: int, revision: str) -> None:
        meta = {
            "variant": variant.name,
            "seed": seed,
            "overrides": self.overrides(variant),
            "revision": revision,
        }
        (self.run_dir(variant, seed) / "sweep.json").write_text(json.dumps(meta, indent=2))

    def run(self, variants: Sequence[Variant]) -> list[RunRecord]:
        """Run what is missing, one multirun per variant, then read every run.

        Raises :class:`SweepError` after all variants were tried if any run failed.
        """
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        failures: list[str] = []
        # The plain demo arms are shared between experiments: run them last, so that a
        # second script running beside this one finds them done instead of waiting.
        order = sorted(variants, key=lambda v: v.name.endswith("/demo"))
        for variant in order:
            try:
                self._run_variant(variant)
            except SweepError as e:
                failures.append(str(e))
                print(f"sweep: {e}", flush=True)
        if failures:
            raise SweepError("\n".join(failures))
        return [read_record(v, s, self.run_dir(v, s)) for v in variants for s in self.seeds]

    def _run_variant(self, variant: Variant) -> None:
        with _locked(self.root / variant.name / ".sweep.lock"):
            missing = [s for s in self.seeds if not self._finished(variant, s)]
            reused = len(self.seeds) - len(missing)
            if not missing:
                print(f"sweep: {variant.name}: reusing {reused} finished runs", flush=True)
                return
            for s in missing:
                stale = self.run_dir(variant, s)
                if stale.exists():  # an interrupted run or one with other overrides
                    if not (stale / ".hydra").is_dir():
                        raise SweepError(
                            f"{variant.name}: {stale} exists but is not a run directory "
                            "(no .hydra/); move it away or choose another --root"
                        )
                    print(f"sweep: {variant.name}: removing unfinished or outdated {stale}")
                    shutil.rmtree(stale)
            log = self.root / variant.name / "sweep.log"
            cmd = self.command(variant, missing, mbrm_executable())
            revision = git_revision()
            print(
                f"sweep: {variant.name}: running seeds {missing}"
                + (f" (reusing {reused})" if reused else "")
                + f"; log {log}",
                flush=True,
            )
            env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
            t0 = time.monotonic()
            with open(log, "w") as out:
                out.write(shlex.join(cmd) + "\n")
                out.flush()
                proc = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env
                )
                pending = list(missing)
                try:
                    while True:
                        rc = proc.poll()
                        for s in [s for s in pending if self._report_done(variant, s, t0)]:
                            pending.remove(s)
                        if rc is not None:
                            break
                        time.sleep(POLL_SECONDS)
                except BaseException:  # interrupted: stop the runs too, then say so
                    proc.terminate()
                    proc.wait()
                    raise
            for s in missing:
                if (self.run_dir(variant, s) / "summary.json").exists():
                    self._mark(variant, s, revision)
            failed = [
                s for s in missing if not (self.run_dir(variant, s) / "summary.json").exists()
            ]
            if failed or rc != 0:
                tail = "\n".join(log.read_text().splitlines()[-15:])
                what = f"seeds {failed} have no summary.json" if failed else f"exit status {rc}"
                raise SweepError(
                    f"{variant.name}: {what}; run directories under {self.root / variant.name}, "
                    f"full output in {log}; its last lines:\n{tail}"
                )

    def _report_done(self, variant: Variant, seed: int, t0: float) -> bool:
        """Print one line when a run's summary.json has appeared; False while it has not."""
        path = self.run_dir(variant, seed) / "summary.json"
        try:
            s = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # absent or half written
            return False
        print(
            f"sweep: {variant.name} seed {seed} done after {(time.monotonic() - t0) / 60:.1f} min: "
            f"normalised score {s['normalised_score']:.3f}, eval return {s['eval_return']:.2f}, "
            f"unacceptable steps eval/train {s['eval_unacceptable_steps']}/{s['train_unacceptable_steps']}",
            flush=True,
        )
        return True


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One sweep at a time per variant: two scripts sharing a variant wait, not collide."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------- scripts


def parser(doc: str, tasks: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The arguments every experiment script takes (``--tasks`` when it has a task list)."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (hydra.launcher.n_jobs)")
    p.add_argument(
        "--root",
        type=Path,
        default=None,
        help=f"run directories (default {DEFAULT_ROOT.relative_to(REPO)}, "
        f"{SMOKE_ROOT.relative_to(REPO)} with --smoke)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny models and 6 short episodes to check the pipeline; outputs go under the root",
    )
    if tasks is not None:
        p.add_argument(
            "--tasks", default=",".join(tasks), help=f"comma-separated (default {','.join(tasks)})"
        )
    return p


def make_sweep(args: argparse.Namespace, min_seeds: int = 1) -> Sweep:
    try:
        seeds = tuple(int(s) for s in str(args.seeds).split(","))
    except ValueError:
        raise SystemExit(f"--seeds: comma-separated integers, got {args.seeds!r}") from None
    if len(seeds) < min_seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds: need at least {min_seeds} distinct seeds, got {args.seeds}")
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    root = args.root or (SMOKE_ROOT if args.smoke else DEFAULT_ROOT)
    return Sweep(root=Path(root).resolve(), seeds=seeds, jobs=args.jobs, smoke=args.smoke)


def task_list(args: argparse.Namespace) -> list[str]:
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASK_BUDGET]
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; known: {sorted(TASK_BUDGET)}")
    return tasks


def output_dir(root: Path, smoke: bool) -> Path:
    """``docs/`` for real runs; ``<root>/docs`` for smoke runs, whose figures mean nothing."""
    out = root / "docs" if smoke else DOCS
    out.mkdir(parents=True, exist_ok=True)
    return out


def budget_text(sweep: Sweep, tasks: Sequence[str]) -> str:
    """Each task's schedule, read from the configuration its runs get."""
    parts = []
    for task in tasks:
        cfg = sweep.compose(task_variant(task, "budget"))
        e = cfg.experiment
        parts.append(
            f"{task}: {e.explore_episodes} random + {e.iterations} acting episodes of "
            f"{cfg.task.episode_length} steps, {e.eval_episodes} evaluation "
            + ("episode" if e.eval_episodes == 1 else "episodes")
        )
    text = "; ".join(parts)
    if sweep.smoke:
        text = f"smoke (tiny models, the figures check the pipeline only): {text}"
    return text


def publish(
    out: Path,
    stem: str,
    *,
    title: str,
    intro: str,
    budget: str,
    table: str,
    commands: Sequence[str],
    figure: Any | None,
    started: float,
    wall_note: str = "finished runs found under the root are reused",
) -> Path:
    """Print the table and commands; write ``out/<stem>.md`` (and ``.png`` from ``figure``)."""
    minutes = (time.monotonic() - started) / 60
    lines = [f"# {title}", "", intro, "", f"Budget: {budget}.", "", table, ""]
    if figure is not None:
        png = out / f"{stem}.png"
        figure.savefig(png, dpi=100, bbox_inches="tight")
        lines += [f"![{stem}]({png.name})", ""]
    lines += ["Commands:", "", "```bash", *commands, "```", ""]
    lines += [f"Wall time of the script: {minutes:.1f} min ({wall_note})."]
    md = out / f"{stem}.md"
    md.write_text("\n".join(lines) + "\n")
    print()
    print(table)
    print()
    print("commands:")
    for c in commands:
        print(f"  {c}")
    print(f"budget: {budget}")
    print(f"wrote {md}" + (f" and {md.with_suffix('.png')}" if figure is not None else ""))
    print(f"wall time {minutes:.1f} min")
    return md


def count_planning_step(cfg: Any) -> Any:
    """One planning step of ``cfg``'s composed planner on a counting imagination (a
    quadratic objective with an optimum, one particle, no constraint): its ``PlanResult``
    says how many sequences (``n_candidates``) in how many calls (``n_calls``) a step
    imagines. No world model is built."""
    import torch
    from omegaconf import OmegaConf

    from mbrm.tasks import get_task
    from planners import PLANNERS, ImaginedBatch, make_planner

    task = get_task(cfg.task.name)
    low, high = task.action_bounds
    settings_type, _ = PLANNERS[cfg.planner.kind]
    settings = settings_type(**OmegaConf.to_container(cfg.planner, resolve=True))
    planner = make_planner(settings, low.tolist(), high.tolist())
    horizon = int(cfg.planner.horizon)

    def imagine(state: torch.Tensor, actions: torch.Tensor) -> ImaginedBatch:
        n = actions.shape[0]  # [n, H, A]
        reward = -(actions**2).sum(-1)[:, None]  # [n, 1, H]
        states = state.expand(n, 1, horizon + 1, state.shape[-1])
        return ImaginedBatch(states, reward, torch.zeros_like(reward), torch.zeros_like(reward))

    start = torch.zeros(task.state_dim, device="cpu")
    return planner.plan(start, imagine, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------- tables


def mean_sd(values: Sequence[float], fmt: str = ".3f") -> str:
    """``mean ± sd`` over seeds (sample sd) of the finite values; ``n/a`` when none is.

    Seeds left out (NaN: e.g. a score whose oracle equals the random policy) are
    counted in the cell, ``(n=2/3)``, so that a failure does not hide in the mean.
    """
    values = list(values)
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return "n/a"
    dropped = f" (n={len(v)}/{len(values)})" if len(v) < len(values) else ""
    if len(v) == 1:
        return f"{v[0]:{fmt}}{dropped}"
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}{dropped}"


def per_seed(values: Sequence[float], fmt: str = ".3f") -> str:
    return ", ".join("n/a" if not np.isfinite(x) else f"{x:{fmt}}" for x in values)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def by_variant(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """Records grouped by variant name, in the order the variants were given."""
    out: dict[str, list[RunRecord]] = {}
    for r in records:
        out.setdefault(r.variant.name, []).append(r)
    return out


def write_records(out: Path, stem: str, what: str, command: str, rows: Any, **extra: Any) -> Path:
    """``out/<stem>.json``: what the experiment measured, the command, the CPU and its
    run records (plus ``extra`` keys), beside the markdown table."""
    path = out / f"{stem}.json"
    payload = {"what": what, "command": command, "cpu": cpu_name(), **extra, "runs": rows}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def by_arm(rows: Sequence[dict[str, Any]], key: str = "arm") -> dict[str, list[dict[str, Any]]]:
    """JSON run records grouped by ``key`` (their arm), in the order the groups first appear."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row[key], []).append(row)
    return out


def values(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    """One key of JSON run records as floats, NaN where a record has None."""
    return [math.nan if row[key] is None else float(row[key]) for row in rows]


def mean_curve(curves: Sequence[np.ndarray]) -> np.ndarray:
    """Element-wise mean of per-seed curves, over the length they all have."""
    n = min(len(c) for c in curves)
    with warnings.catch_warnings():  # an episode where no seed has a value stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack([c[:n] for c in curves]), axis=0)
