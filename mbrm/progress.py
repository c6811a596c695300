"""One progress bar over a whole run, counted in environment steps, and the run's wall time.

A run's work is known from its schedule up front: ``explore_episodes + iterations``
training episodes and ``3 * eval_episodes`` evaluation episodes (learned agent, random
policy, reference agent), each of at most ``episode_length`` steps. Counting steps of
all of them on one bar gives an ETA for the whole job; the world-model, reward and
classifier fits and the query rounds between episodes take no steps and so show up in
the rate. The rate is the average since the bar started (``smoothing=0``): a moving
average would swing between fast random steps and pauses for fitting.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mbrm.evaluation import POLICIES
from mbrm.settings import LoopSettings


def run_steps(*, episodes: int, eval_episodes: int, length: int) -> int:
    """Environment steps a schedule takes at most: ``episodes`` training episodes and
    ``eval_episodes`` evaluation episodes of each policy, ``length`` steps each."""
    return (episodes + len(POLICIES) * eval_episodes) * length


def job_progress(
    settings: LoopSettings,
    iteration: int | None,
    length: int,
    done: int,
    desc: str,
    enabled: bool,
) -> StepProgress:
    """The bar of a job from ``iteration`` (None: the final evaluation alone) to the end
    of the final evaluation, with ``done`` steps in already (a resumed run's, or 0)."""
    left = 0
    if iteration is not None:
        left = max(settings.explore_episodes + settings.iterations - iteration, 0)
    total = done + run_steps(episodes=left, eval_episodes=settings.eval_episodes, length=length)
    return StepProgress(total, initial=done, desc=desc, enabled=enabled)


@dataclass
class JobClock:
    """The wall time of a training job, summed over its sessions (``wall_seconds``).

    earlier:  seconds of the earlier sessions, each up to its last checkpoint (time since
              a killed session's last checkpoint is lost with its work)
    started:  this session's start (``time.perf_counter``): when its loop was built, so
              the interpreter's start-up and the config's composition are not counted
    """

    earlier: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        """The job's wall seconds so far."""
        return self.earlier + time.perf_counter() - self.started

    def summary_figure(self, previous: Path, *, running: bool) -> dict[str, float]:
        """``wall_seconds`` for a summary: the job's so far while it is ``running`` (its
        final evaluation); else (a re-evaluation) the one the ``previous`` summary
        recorded, none when there is none."""
        if running:
            return {"wall_seconds": self.seconds()}
        earlier = (
            json.loads(previous.read_text()).get("wall_seconds") if previous.exists() else None
        )
        return {} if earlier is None else {"wall_seconds": float(earlier)}


class StepProgress:
    """A bar over environment steps (drawn only when ``enabled``).

    total:    the steps of the whole job, including those already done
    initial:  steps already done (a resumed run starts its bar there)
    """

    def __init__(self, total: int, *, initial: int = 0, desc: str, enabled: bool) -> None:
        self.bar: Any = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="step",
            smoothing=0,
            dynamic_ncols=True,
            disable=not enabled,
        )

    def step(self, n: int = 1) -> None:
        """``n`` environment steps are done."""
        self.bar.update(n)

    def episode_ended(self, steps: int, budget: int) -> None:
        """An episode took ``steps`` of its ``budget``: an early end (the simulation
        became unstable, or an experimenter's reset) shrinks the job by the rest, so the
        bar still ends at the steps actually run."""
        if steps < budget:
            self.bar.total -= budget - steps
            self.bar.refresh()

    def show(self, **figures: Any) -> None:
        """Figures shown after the bar (the last episode's return, the labels so far)."""
        self.bar.set_postfix(figures)

    def describe(self, desc: str) -> None:
        """What the run is doing now (training, evaluating)."""
        self.bar.set_description(desc)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
