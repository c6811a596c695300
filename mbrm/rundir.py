"""A run directory's files: metrics (CSV and TensorBoard), summary, checkpoint, replay.

Every file is written to a temporary name and renamed into place, so a run killed at
any moment keeps its previous complete state (labels live in ``feedback.sqlite``,
which commits each label itself).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from mbrm.checkpoint import load_checkpoint, save_checkpoint

CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
FEEDBACK = "feedback.sqlite"
METRICS = "metrics.csv"
REPLAY = "replay.npz"
SUMMARY = "summary.json"


class MetricsLog:
    """One row per iteration: ``metrics.csv`` rewritten whole, TensorBoard appended."""

    def __init__(self, run_dir: Path, rows: list[dict[str, Any]] | None = None) -> None:
        self.run_dir = run_dir
        self.rows: list[dict[str, Any]] = list(rows or [])
        self._tb = None  # opened with the first row

    def append(self, row: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.rows.append(row)
        if self._tb is None:
            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        for k, v in row.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "iteration":
                self._tb.add_scalar(k, v, row["iteration"])
        self._tb.flush()
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        tmp = self.run_dir / (METRICS + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        tmp.replace(self.run_dir / METRICS)

    def to_json(self) -> str:
        return json.dumps(self.rows)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    path = run_dir / SUMMARY
    tmp = path.with_name(SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(path)
    return path


def save_run_checkpoint(run_dir: Path, payload: dict[str, Any], signature: dict[str, Any]) -> None:
    """``checkpoint.pt``: model state dicts, loop counters, generator states."""
    save_checkpoint(run_dir / CHECKPOINT, payload, signature)


def load_run_checkpoint(run_dir: Path, signature: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint of ``run_dir``, checked against the run's ``signature``."""
    return load_checkpoint(run_dir / CHECKPOINT, signature)
