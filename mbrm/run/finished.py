"""Reading a finished (or interrupted) run directory: one loader for every reader.

``mbrm eval``, ``mbrm report``, the labelling UI's assistant and the experiment
scripts read runs through :class:`FinishedRun`. Each part is loaded on first use,
so a reader that needs two state dicts loads two state dicts: no planner, no
constraint set, no store connection it would have to close.

Devices: checkpoints load onto the CPU and the models a reader asks for are built
there, whatever device the run trained on. The whole loop (:meth:`FinishedRun.loop`,
to evaluate or continue) runs on the run's ``device``, or on ``auto`` where this
machine lacks it (a run trained on a GPU is evaluated on a CPU-only machine).
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mbrm.run.compose import (
    build_classifier,
    build_loop,
    build_reward_model,
    build_world_model,
    constraint_spec,
    run_settings,
    run_signature,
)
from mbrm.run.schema import RunConfig
from mbrm.rundir import CONFIG, FEEDBACK, REPLAY, SUMMARY, load_run_checkpoint

log = logging.getLogger(__name__)


class NotARunError(ValueError):
    """A directory that holds no mbrm run."""


class FinishedRun:
    """The run in ``run_dir``: its config, checkpoint, models, replay and labels.

    device: where :meth:`loop` runs; None: the run's own device if this machine has it,
            else ``auto``
    """

    def __init__(self, run_dir: str | Path, device: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        if not (self.run_dir / CONFIG).is_file():
            raise NotARunError(f"{self.run_dir} is not a run directory (no {CONFIG})")
        self._device = device

    @cached_property
    def config(self) -> DictConfig:
        """The run's saved config (``config.yaml``), progress bars off, on a device this
        machine has (see the class docstring)."""
        from mbrm.device import device_available

        cfg = OmegaConf.load(self.run_dir / CONFIG)
        assert isinstance(cfg, DictConfig)
        cfg.progress = False
        saved = cfg.get("device", "auto")
        if self._device is not None:
            cfg.device = self._device
        elif not device_available(saved):
            log.warning(
                "%s ran on device=%s, which this machine lacks; using device=auto",
                self.run_dir,
                saved,
            )
            cfg.device = "auto"
        return cfg

    @cached_property
    def settings(self) -> RunConfig:
        """The typed settings of the saved config."""
        return run_settings(self.config)

    @cached_property
    def task(self) -> Any:
        from mbrm.tasks import get_task

        return get_task(self.settings.task.name)

    @cached_property
    def checkpoint(self) -> dict[str, Any]:
        """The latest checkpoint, checked against the run's task and model sizes."""
        return load_run_checkpoint(self.run_dir, run_signature(self.task, self.settings))

    @property
    def summary(self) -> dict[str, Any] | None:
        """``summary.json`` of a finished run; None while it is still running."""
        path = self.run_dir / SUMMARY
        return json.loads(path.read_text()) if path.exists() else None

    def reward_model(self) -> Any | None:
        """The reward ensemble with its checkpointed weights, on the CPU (None: hidden
        reward)."""
        rm = build_reward_model(self.task, self.settings)
        if rm is not None and self.checkpoint["reward_model"]:
            rm.load_state_dict(self.checkpoint["reward_model"])
        return rm

    def classifier(self) -> Any | None:
        """The classifier with its checkpointed weights and threshold, on the CPU (None:
        hidden rule)."""
        clf = build_classifier(self.task, self.settings, constraint_spec(self.task, self.settings))
        if clf is not None and self.checkpoint["classifier"]:
            clf.load_state_dict(self.checkpoint["classifier"])
        return clf

    def world_model(self) -> Any:
        """The world model with its checkpointed weights, on the CPU."""
        wm = build_world_model(self.task, self.settings)
        wm.load_state_dict(self.checkpoint["world_model"])
        return wm

    def replay(self) -> Any:
        """The transitions the checkpoint counts (later appends are dropped)."""
        from mbrm.replay import ReplayBuffer

        buf = ReplayBuffer.load(self.run_dir / REPLAY)
        buf.truncate(int(self.checkpoint["loop"]["replay_size"]))
        return buf

    def store(self) -> Any:
        """The run's feedback store (the caller closes it)."""
        from mbrm.feedback.store import FeedbackStore

        return FeedbackStore(self.run_dir / FEEDBACK)

    def loop(self) -> Any:
        """The whole loop, resumed from the checkpoint (to evaluate or continue it)."""
        loop = build_loop(self.settings, self.run_dir)
        loop.resume()
        return loop
