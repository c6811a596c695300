"""The final evaluation's episodes, in this process or in several.

Every evaluation episode is a function of (models, policy, environment seed) alone: it
draws from generators of its own (:func:`mbrm.evaluation.episode_generators`). So the
episodes of the learned agent, the random policy and the reference agent can run in
any order, in ``experiment.eval_workers`` processes, with exactly the figures of a
serial run. The run's own process is one of them: it takes episodes from the same
queue as the ``eval_workers - 1`` spawned ones, so it works while they start (a worker
imports torch, MuJoCo and cvxpy first: about 4 CPU seconds here).

Each worker gets the run's parts once, pickled, and rebuilds the agent from them for
every episode as the run's process does. The task is not pickled by value (its derived
features are lambdas): it travels by name and each worker takes its own registered
copy; a task defined outside mbrm (``task.file``/``task.module``) is registered again
in the worker from its fields, its modules' folders put on the worker's ``sys.path``.
Workers start with "spawn" (a forked child of a process whose torch thread pool is
running can deadlock) and run torch on one thread each, so two processes do not
oversubscribe two cores; the figures are those of one process at the default
``threads=1`` (another thread count may round a matmul differently). A failed episode
or a dead worker raises :class:`EvaluationWorkerError`; nothing waits on a worker that
is gone.

Why ``eval_workers`` defaults to 1: on the 2-core machine this project is measured on
(AMD EPYC, shared with other jobs, load average about 3), the demo's evaluation (10
episodes x 3 policies of 50 steps) took a median 124 s in one process and 136 s in two
(3 runs each, identical figures): the other jobs leave no idle core, and a worker's
start costs about 5 CPU seconds. Where cores are idle, ``eval_workers=0`` uses them.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import multiprocessing
import os
import pickle
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch

from mbrm.episodes import Capture
from mbrm.evaluation import POLICIES, FinalEpisodes, evaluation_seeds
from mbrm.feedback.gatherers import HumanGatherer
from mbrm.parts import RunParts
from mbrm.progress import StepProgress
from mbrm.tasks import TASKS, Task, register_task

log = logging.getLogger(__name__)
Rows = dict[str, list[dict[str, Any]]]  # policy -> one row per seed, in seed order
Job = tuple[str, int]  # (policy, environment seed)
Result = tuple[dict[str, Any], Capture | None]  # an episode's figures and its capture


class EvaluationWorkerError(RuntimeError):
    """An evaluation episode failed in a worker process, or a worker died."""


class NotPortable(Exception):
    """The run's parts cannot be rebuilt in another process (the reason says why)."""


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_workers(setting: int, jobs: int) -> int:
    """Processes for ``jobs`` episodes, this one included: ``setting`` (0: one per
    available core), never more than there are episodes; 1: this process alone."""
    wanted = available_cores() if setting == 0 else setting
    return max(1, min(wanted, jobs))


# ---------------------------------------------------------------------- shipping the parts


def _task_state(task: Task) -> bytes | None:
    """The task's fields pickled (its functions by reference), to register it again in a
    worker; None for a task every worker registers itself on ``import mbrm.tasks``."""
    if task.reward_fn.__module__.startswith("mbrm.tasks."):
        return None
    fields = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}
    try:
        return pickle.dumps(fields)
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        raise NotPortable(f"task {task.name!r} cannot be pickled ({e})") from None


def _module_roots(task: Task) -> list[str]:
    """Folders that make the modules of the task's functions importable (a task file's
    module is imported from next to the file, a folder not on ``sys.path``)."""
    roots: list[str] = []
    for fn in (task.reward_fn, task.unacceptable_fn, task.reset_fn, task.xml):
        module = sys.modules.get(getattr(fn, "__module__", "") or "")
        path = getattr(module, "__file__", None)
        if not callable(fn) or module is None or path is None:
            continue
        root = Path(path).parent
        for _ in range(module.__name__.count(".")):
            root = root.parent
        if str(root) not in roots:
            roots.append(str(root))
    return roots


class _Pickler(pickle.Pickler):
    """Pickles the task and its derived-feature functions as references to a task name."""

    def __init__(self, file: io.BytesIO, task: Task) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.refs: dict[int, tuple[Any, ...]] = {id(task): ("task", task.name)}
        for i, (_, _, fn) in enumerate(task.derived_features):
            self.refs[id(fn)] = ("derived", task.name, i)

    def persistent_id(self, obj: Any) -> tuple[Any, ...] | None:
        return self.refs.get(id(obj))


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: tuple[Any, ...]) -> Any:
        task = TASKS[pid[1]]
        return task if pid[0] == "task" else task.derived_features[pid[2]][2]


def pack(episodes: FinalEpisodes) -> tuple[bytes, bytes | None, list[str]]:
    """What a worker needs to run ``episodes``: the parts pickled (no feedback gatherer:
    evaluation asks nothing), the task's own fields where a worker must register it,
    and the folders its modules import from. Raises :class:`NotPortable`."""
    task = episodes.parts.task
    parts = dataclasses.replace(
        episodes.parts, gatherer=HumanGatherer(0.0, progress=False), progress=False
    )
    buf = io.BytesIO()
    try:
        _Pickler(buf, task).dump(dataclasses.replace(episodes, parts=parts))
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        raise NotPortable(f"the run's parts cannot be pickled ({e})") from None
    state = _task_state(task)
    return buf.getvalue(), state, [] if state is None else _module_roots(task)


def unpack(payload: bytes, task_state: bytes | None) -> FinalEpisodes:
    """The episodes :func:`pack` shipped, rebuilt in this process."""
    if task_state is not None:
        task = Task(**pickle.loads(task_state))
        if task.name not in TASKS:  # importing its modules may have registered it
            register_task(task)
    episodes = _Unpickler(io.BytesIO(payload)).load()
    assert isinstance(episodes, FinalEpisodes)
    return episodes


# ---------------------------------------------------------------------- in a worker

_shipped: tuple[bytes, bytes | None] | None = None
_episodes: FinalEpisodes | None = None


def _start_worker(payload: bytes, task_state: bytes | None, roots: list[str]) -> None:
    """A worker's initialiser: one torch thread, the task's module folders; the parts are
    rebuilt by the first episode, so a failure to rebuild them is that episode's error."""
    global _shipped
    torch.set_num_threads(1)
    sys.path[:0] = [r for r in roots if r not in sys.path]
    _shipped = (payload, task_state)


def _worker_episode(policy: str, seed: int) -> Result:
    global _episodes
    if _episodes is None:
        assert _shipped is not None, "the worker was not initialised"
        _episodes = unpack(*_shipped)
    return _episodes(policy, seed)


# ---------------------------------------------------------------------- the parent


def evaluation_jobs(seeds: Iterable[int]) -> list[Job]:
    """Every (policy, seed) of the comparison; the planning agents' episodes first, so
    the cheap random ones fill in at the end."""
    seeds = list(seeds)
    return [(p, k) for p in ("learned", "reference", "random") for k in seeds]


def run_evaluation(
    parts: RunParts, classifier_ready: bool, filmed: int, progress: StepProgress
) -> tuple[Rows, dict[int, Capture]]:
    """The final comparison of ``parts`` (models as trained) on ``experiment.eval_episodes``
    seeds, in ``experiment.eval_workers`` processes (1: in this one); the learned agent's
    first ``filmed`` episodes are captured.

    Returns each policy's rows in seed order and the captures by seed. Falls back to this
    process, with a warning, when the parts cannot be shipped to another.
    """
    seeds = evaluation_seeds(parts.seed, parts.settings.eval_episodes)
    episodes = FinalEpisodes(parts, classifier_ready, frozenset(seeds[:filmed]))
    jobs = evaluation_jobs(seeds)
    workers = resolve_workers(parts.settings.eval_workers, len(jobs))
    results: dict[Job, Result] = {}
    length = parts.episode_length

    def here(job: Job) -> Result:
        out = episodes(*job, on_step=progress.step)
        progress.episode_ended(out[0]["steps"], length)
        return out

    t0 = time.perf_counter()
    if workers > 1:
        try:
            shipped = pack(episodes)
        except NotPortable as e:
            log.warning("evaluating in this process, not in %d: %s", workers, e)
            workers = 1
    if workers == 1:
        results = {job: here(job) for job in jobs}
    else:
        ended = functools.partial(_ended, progress, length=length)
        share_jobs(jobs, workers - 1, shipped, results, ended, here)
    log.info("final evaluation: %.1f s in %d process(es)", time.perf_counter() - t0, workers)
    rows = {p: [results[(p, k)][0] for k in seeds] for p in POLICIES}
    captures = {k: c for (p, k), (_, c) in results.items() if c is not None}
    return rows, captures


def _ended(progress: StepProgress, steps: int, length: int) -> None:
    progress.step(steps)
    progress.episode_ended(steps, length)


def share_jobs(
    jobs: list[Job],
    children: int,
    shipped: tuple[bytes, bytes | None, list[str]],
    results: dict[Job, Result],
    ended: Callable[[int], None],
    here: Callable[[Job], Result] | None = None,
) -> None:
    """Run ``jobs`` into ``results`` in ``children`` spawned processes and, with ``here``,
    in this one too: it takes the next job whenever the children have enough queued
    (two each), so it works while they start up instead of waiting for them.
    ``ended(steps)`` is called for each job a child finished."""
    queue = deque(jobs)
    pool = ProcessPoolExecutor(
        max_workers=children,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=shipped,
    )
    running: dict[Future[Result], Job] = {}
    try:
        while queue or running:
            while queue and len(running) < 2 * children:
                job = queue.popleft()
                running[pool.submit(_worker_episode, *job)] = job
            if here is not None and queue:
                job = queue.popleft()
                results[job] = here(job)
            else:
                wait(running, return_when=FIRST_COMPLETED)
            for future in [f for f in running if f.done()]:
                job = running.pop(future)
                results[job] = _result(future, job)
                ended(results[job][0]["steps"])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(future: Future[Result], job: Job) -> Result:
    """A child's result, or the error that says which episode failed and how."""
    try:
        return future.result()
    except BrokenProcessPool as e:
        raise EvaluationWorkerError(
            f"an evaluation worker process died (episode {job[0]}, seed {job[1]}): {e}; "
            "experiment.eval_workers=1 evaluates in this process"
        ) from e
    except Exception as e:
        raise EvaluationWorkerError(
            f"evaluation episode {job[0]}, seed {job[1]} failed in a worker process: "
            f"{type(e).__name__}: {e}"
        ) from e
