"""Atomic checkpoints of a training run, loaded with ``weights_only=True``.

A checkpoint is a plain dictionary of state dicts, numbers and strings. It is
written to a temporary file and renamed into place, so a run killed while
writing keeps its previous checkpoint. Loading checks that the checkpoint was
made for the same task and model sizes and says what differs if not. Every tensor
loads onto the CPU (``map_location``), so a checkpoint written on a GPU loads on a
machine without one; ``load_state_dict`` then copies it to the model's device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FORMAT = "mbrm-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run (wrong task, sizes, or not one)."""


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` over ``path`` and fsync the directory, so the rename survives a crash."""
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    path: str | os.PathLike, payload: dict[str, Any], signature: dict[str, Any]
) -> None:
    """Write ``payload`` with a ``signature`` (task and model sizes) atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "version": VERSION, "signature": signature, **payload}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    replace_durably(tmp, path)


def load_checkpoint(path: str | os.PathLike, signature: dict[str, Any]) -> dict[str, Any]:
    """Load and check a checkpoint against the expected ``signature``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for foreign or corrupt files
        raise CheckpointError(f"{path} is not a readable mbrm checkpoint: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mbrm checkpoint")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {ckpt['version']}, newer than {VERSION}"
        )
    saved = ckpt.get("signature", {})
    diffs = [
        f"{k}: checkpoint has {saved.get(k)!r}, this run has {v!r}"
        for k, v in signature.items()
        if saved.get(k) != v
    ]
    if diffs:
        raise CheckpointError(
            f"{path} was made for another task or model size: " + "; ".join(diffs)
        )
    return ckpt
