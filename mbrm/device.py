"""The one device every model, buffer and planner tensor of a run lives on.

The ``device`` setting is ``auto`` (CUDA when torch sees a CUDA device, else the CPU),
``cpu``, ``cuda`` or ``cuda:N``. MuJoCo stays on the CPU: a real state crosses to the
device once per planning step and the chosen plan comes back once per step
(:mod:`mbrm.agent`). Random numbers are drawn from CPU generators and moved, so a seed
gives the same samples on every device.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import fields, is_dataclass, replace
from typing import TypeVar

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
_CUDA_INDEX = re.compile(r"cuda:(\d+)")

T = TypeVar("T")


def resolve_device(name: str, *, cuda_count: Callable[[], int] | None = None) -> torch.device:
    """The torch device a ``device`` setting names; a one-line ValueError if it names none.

    ``cuda_count`` says how many CUDA devices torch sees (default:
    ``torch.cuda.device_count()`` when ``torch.cuda.is_available()``, else 0).
    """
    count = _cuda_devices() if cuda_count is None else cuda_count()
    allowed = ", ".join(DEVICE_CHOICES)
    if not isinstance(name, str):
        raise ValueError(f"device must be one of {allowed}; got {name!r}")
    if name == "auto":
        return torch.device("cuda" if count > 0 else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = _CUDA_INDEX.fullmatch(name)
    if name != "cuda" and match is None:
        raise ValueError(f"device must be one of {allowed}; got {name!r}")
    if count == 0:
        raise ValueError(
            f"device={name}: torch sees no CUDA device (torch.cuda.is_available() is False); "
            f"device must be one of {allowed} with a CUDA build of torch on a GPU, or auto or cpu"
        )
    if match is not None and int(match.group(1)) >= count:
        raise ValueError(
            f"device={name}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return torch.device(name)


def device_available(name: str) -> bool:
    """Whether :func:`resolve_device` accepts ``name`` on this machine."""
    try:
        resolve_device(name)
    except ValueError:
        return False
    return True


def _cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s parameters (else buffers): where its inputs must be."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        return t.device
    return torch.device("cpu")


def to_host(value: T) -> T:
    """``value`` with every tensor in it on the CPU (a dataclass, dict, list or tuple of
    tensors and plain values; nested ones too). A tensor already on the CPU is kept as
    it is, not copied, so on the CPU this returns the same numbers."""
    if isinstance(value, torch.Tensor):
        return value.cpu()  # type: ignore[return-value]
    if is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: to_host(getattr(value, f.name)) for f in fields(value) if f.init}
        return replace(value, **changes)  # type: ignore[return-value]
    if isinstance(value, dict):
        return {k: to_host(v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list | tuple):
        return type(value)(to_host(v) for v in value)  # type: ignore[return-value]
    return value
