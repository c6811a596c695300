"""The state layout of a task, derived from its MuJoCo model.

Every task's state is the full simulator state ``qpos | qvel``. The layout names
each dimension after its joint and marks two roles the networks need (DESIGN.md,
"positions that do not change the dynamics are not network inputs"):

* *excluded* positions: unbounded translations of a root body perpendicular to
  gravity (HalfCheetah's and Hopper's root x, a free body's x and y). Moving
  the whole robot along them changes nothing in its dynamics, and they grow
  without bound, so the networks do not read them (their deltas are still
  predicted);
* *periodic* positions: angles of unlimited hinges, which wrap around; networks
  see them as (sin, cos).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mujoco
import numpy as np

from mbrm.nn import DerivedFeature

# per joint type: the suffixes of its qpos and qvel entries (hinge and slide: one each)
_FREE = ((".x", ".y", ".z", ".qw", ".qx", ".qy", ".qz"), (".x", ".y", ".z", ".wx", ".wy", ".wz"))
_BALL = ((".qw", ".qx", ".qy", ".qz"), (".wx", ".wy", ".wz"))
_SUFFIXES = {
    int(mujoco.mjtJoint.mjJNT_FREE): _FREE,
    int(mujoco.mjtJoint.mjJNT_BALL): _BALL,
    int(mujoco.mjtJoint.mjJNT_SLIDE): (("",), ("",)),
    int(mujoco.mjtJoint.mjJNT_HINGE): (("",), ("",)),
}


@dataclass(frozen=True)
class StateLayout:
    """Names and roles of the state dimensions ``qpos | qvel``.

    names:     one name per dimension, ``qpos.<joint>`` then ``qvel.<joint>`` (free and
               ball joints: ``qpos.<joint>.x`` ... ``.qw`` ..., ``qvel.<joint>.x`` ... ``.wx`` ...)
    nq, nv:    sizes of qpos and qvel
    excluded:  indices that are not network inputs (unbounded root positions that
               do not change the dynamics); their deltas are still predicted
    dt:        seconds per environment step (frame_skip * timestep)
    periodic:  qpos indices of unlimited hinges, whose angles wrap around; networks
               see them as (sin, cos)
    derived:   features computed from the state that the reward model and the
               classifier also read (e.g. reacher's fingertip position)
    """

    names: tuple[str, ...]
    nq: int
    nv: int
    excluded: tuple[int, ...]
    dt: float
    periodic: tuple[int, ...] = ()
    derived: tuple[DerivedFeature, ...] = ()

    @property
    def dim(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Index of a named dimension, with an error listing the valid names."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(
                f"unknown state dimension {name!r}; this task has {list(self.names)}"
            ) from None

    @property
    def periodic_mask(self) -> np.ndarray:
        """Boolean [S]: True for angles of unlimited hinges."""
        mask = np.zeros(self.dim, dtype=bool)
        mask[list(self.periodic)] = True
        return mask

    @property
    def input_mask(self) -> np.ndarray:
        """Boolean [S]: True for dimensions fed to the networks."""
        mask = np.ones(self.dim, dtype=bool)
        mask[list(self.excluded)] = False
        return mask


def state_names(model: mujoco.MjModel) -> tuple[str, ...]:
    """``qpos.<joint>`` for every qpos entry, then ``qvel.<joint>`` for every qvel entry."""
    qpos, qvel = [""] * model.nq, [""] * model.nv
    for j in range(model.njnt):
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j) or f"joint{j}"
        pos_suffixes, vel_suffixes = _SUFFIXES[int(model.jnt_type[j])]
        for k, suffix in enumerate(pos_suffixes):
            qpos[model.jnt_qposadr[j] + k] = f"qpos.{name}{suffix}"
        for k, suffix in enumerate(vel_suffixes):
            qvel[model.jnt_dofadr[j] + k] = f"qvel.{name}{suffix}"
    return tuple(qpos + qvel)


def periodic_positions(model: mujoco.MjModel) -> tuple[int, ...]:
    """qpos indices of unlimited hinges."""
    hinge = int(mujoco.mjtJoint.mjJNT_HINGE)
    return tuple(
        int(model.jnt_qposadr[j])
        for j in range(model.njnt)
        if int(model.jnt_type[j]) == hinge and not model.jnt_limited[j]
    )


def unbounded_root_positions(model: mujoco.MjModel) -> tuple[int, ...]:
    """qpos indices of translations that move a whole body tree perpendicular to gravity.

    A slide joint counts when it is unlimited, sits on a child of the world body with
    only slides before it (so its axis does not turn with a hinge), and its world axis
    is perpendicular to gravity; a free joint contributes its world x, y, z entries
    that are. Without gravity nothing counts: a floor may still make a position matter.
    """
    gravity = np.asarray(model.opt.gravity, dtype=np.float64)
    g = float(np.linalg.norm(gravity))
    if g == 0.0:
        return ()
    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)
    slide, free = int(mujoco.mjtJoint.mjJNT_SLIDE), int(mujoco.mjtJoint.mjJNT_FREE)

    def horizontal(axis: np.ndarray) -> bool:
        return abs(float(axis @ gravity)) <= 1e-9 * g * float(np.linalg.norm(axis))

    out: list[int] = []
    for j in range(model.njnt):
        body, kind = int(model.jnt_bodyid[j]), int(model.jnt_type[j])
        if int(model.body_parentid[body]) != 0:
            continue
        adr = int(model.jnt_qposadr[j])
        if kind == free:
            out += [adr + k for k, axis in enumerate(np.eye(3)) if horizontal(axis)]
        elif kind == slide and not model.jnt_limited[j]:
            earlier = [i for i in range(j) if int(model.jnt_bodyid[i]) == body]
            if all(int(model.jnt_type[i]) == slide for i in earlier):
                if horizontal(np.asarray(data.xaxis[j], dtype=np.float64)):
                    out.append(adr)
    return tuple(out)


def derive_layout(
    model: mujoco.MjModel,
    frame_skip: int,
    *,
    excluded: Sequence[str] | None = None,
    derived_features: Sequence[Any] = (),
) -> StateLayout:
    """The layout of ``model``'s state: names, excluded and periodic dimensions.

    ``excluded`` names the dimensions to leave out of network inputs instead of the
    derived unbounded root positions; ``derived_features`` are ``(name, names of the
    dimensions it reads, torch function of states [..., S])`` triples.
    """
    names = tuple(state_names(model))

    def index(name: str) -> int:
        try:
            return names.index(name)
        except ValueError:
            raise KeyError(
                f"unknown state dimension {name!r}; this task has {list(names)}"
            ) from None

    skip = (
        unbounded_root_positions(model) if excluded is None else tuple(index(n) for n in excluded)
    )
    derived = tuple(
        DerivedFeature(name, tuple(index(n) for n in reads), fn)
        for name, reads, fn in derived_features
    )
    dt = float(model.opt.timestep * frame_skip)
    return StateLayout(names, model.nq, model.nv, skip, dt, periodic_positions(model), derived)
