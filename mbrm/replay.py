"""Replay buffer of real transitions, with atomic save and validated load.

Stores what the agent saw: ``(s, a, s')`` and the episode each transition
belongs to. No reward is stored -- the agent never sees one (Leike et al. 2018,
Sec. 3.1: the reward is learned from feedback, not observed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mbrm.checkpoint import replace_durably
from mbrm.feedback.segments import Segment, SegmentSource
from mbrm.tasks import Task

_FORMAT = "mbrm-replay"
_VERSION = 1


class ReplayBuffer:
    """Fixed-capacity FIFO of transitions ``(s, a, s', episode, step)``."""

    def __init__(self, state_dim: int, action_dim: int, capacity: int = 1_000_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.state_dim, self.action_dim, self.capacity = state_dim, action_dim, capacity
        self.states = np.zeros((capacity, state_dim))
        self.actions = np.zeros((capacity, action_dim))
        self.next_states = np.zeros((capacity, state_dim))
        self.episode = np.zeros(capacity, dtype=np.int64)
        self.step = np.zeros(capacity, dtype=np.int64)
        self._next = 0  # write position
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(
        self, s: np.ndarray, a: np.ndarray, s_next: np.ndarray, episode: int, step: int
    ) -> None:
        """Append one transition (oldest is overwritten when full)."""
        s, a, s_next = np.asarray(s), np.asarray(a), np.asarray(s_next)
        if (
            s.shape != (self.state_dim,)
            or s_next.shape != (self.state_dim,)
            or a.shape != (self.action_dim,)
        ):
            raise ValueError(
                f"transition shapes {s.shape}, {a.shape}, {s_next.shape} do not match the "
                f"buffer's state_dim={self.state_dim}, action_dim={self.action_dim}"
            )
        i = self._next
        self.states[i], self.actions[i], self.next_states[i] = s, a, s_next
        self.episode[i], self.step[i] = episode, step
        self._next = (i + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def truncate(self, n: int) -> None:
        """Keep the oldest ``n`` transitions (undo appends made after a checkpoint)."""
        if not 0 <= n <= self._size:
            raise ValueError(f"cannot truncate a buffer of {self._size} transitions to {n}")
        if self._size == self.capacity and self._next != 0 and n < self._size:
            raise ValueError("cannot truncate a buffer that has wrapped around")
        self._size, self._next = n, n % self.capacity

    def with_capacity(self, capacity: int) -> ReplayBuffer:
        """This buffer's transitions, in order, in a buffer of ``capacity`` (>= their count)."""
        if capacity < self._size:
            raise ValueError(f"capacity {capacity} is below the {self._size} stored transitions")
        if capacity == self.capacity:
            return self
        out = ReplayBuffer(self.state_dim, self.action_dim, capacity)
        o = self._order()
        n = len(o)
        out.states[:n], out.actions[:n] = self.states[o], self.actions[o]
        out.next_states[:n] = self.next_states[o]
        out.episode[:n], out.step[:n] = self.episode[o], self.step[o]
        out._size, out._next = n, n % capacity
        return out

    def _order(self) -> np.ndarray:
        """Indices of stored transitions, oldest first."""
        if self._size < self.capacity:
            return np.arange(self._size)
        return (np.arange(self.capacity) + self._next) % self.capacity

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(states, actions, next_states) of every stored transition, oldest first."""
        o = self._order()
        return self.states[o], self.actions[o], self.next_states[o]

    @property
    def num_episodes(self) -> int:
        return len(np.unique(self.episode[self._order()])) if self._size else 0

    def sample_segments(self, count: int, length: int, rng: np.random.Generator) -> list[Segment]:
        """Random contiguous windows of ``length`` transitions inside one episode."""
        o = self._order()
        ep, st = self.episode[o], self.step[o]
        # A window starting at position i is valid if the next length-1 rows continue it.
        if len(o) < length:
            return []
        ok = np.ones(len(o) - length + 1, dtype=bool)
        for k in range(1, length):
            ok &= (ep[k : len(o) - length + 1 + k] == ep[: len(o) - length + 1]) & (
                st[k : len(o) - length + 1 + k] == st[: len(o) - length + 1] + k
            )
        starts = np.flatnonzero(ok)
        if len(starts) == 0:
            return []
        chosen = rng.choice(starts, size=min(count, len(starts)), replace=False)
        out = []
        for i in chosen:
            rows = o[i : i + length]
            states = np.concatenate([self.states[rows], self.next_states[rows[-1:]]])
            out.append(
                Segment(
                    states,
                    self.actions[rows],
                    SegmentSource.REAL,
                    {"episode": int(ep[i]), "step": int(st[i])},
                )
            )
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file + rename): a crash never leaves half a file."""
        path = Path(path)
        s, a, s2 = self.arrays()
        o = self._order()
        header = {
            "format": _FORMAT,
            "version": _VERSION,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "capacity": self.capacity,
        }
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                header=np.array(json.dumps(header)),
                states=s,
                actions=a,
                next_states=s2,
                episode=self.episode[o],
                step=self.step[o],
            )
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReplayBuffer:
        """Load a buffer written by :meth:`save`; anything else is a clear error."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                data = {k: z[k] for k in ("states", "actions", "next_states", "episode", "step")}
        except Exception as e:  # numpy and zipfile raise many types for damaged files
            raise ValueError(f"{path} is not an mbrm replay buffer ({e!r})") from None
        if header.get("format") != _FORMAT:
            raise ValueError(
                f"{path} is not an mbrm replay buffer (format {header.get('format')!r})"
            )
        if header.get("version", 0) > _VERSION:
            raise ValueError(
                f"{path} has replay format version {header['version']}, newer than {_VERSION}"
            )
        buf = cls(header["state_dim"], header["action_dim"], header["capacity"])
        n = len(data["states"])
        shapes = {
            "states": (n, buf.state_dim),
            "actions": (n, buf.action_dim),
            "next_states": (n, buf.state_dim),
            "episode": (n,),
            "step": (n,),
        }
        for k, want in shapes.items():
            if data[k].shape != want:
                raise ValueError(f"{path}: {k} has shape {data[k].shape}, expected {want}")
        if n > buf.capacity:
            raise ValueError(f"{path}: {n} transitions exceed the stored capacity {buf.capacity}")
        buf.states[:n], buf.actions[:n], buf.next_states[:n] = (
            data["states"],
            data["actions"],
            data["next_states"],
        )
        buf.episode[:n], buf.step[:n] = data["episode"], data["step"]
        buf._size, buf._next = n, n % buf.capacity
        return buf


def collect_random(
    task: Task, episodes: int, *, seed: int, episode_length: int | None = None
) -> ReplayBuffer:
    """Random-action episodes in the agent's environment (uniform in the action box)."""
    length = episode_length or task.episode_length
    low, high = task.action_bounds
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(task.state_dim, task.action_dim, capacity=max(episodes * length, 1))
    env = task.make_env(seed)
    for ep in range(episodes):
        s, _ = env.reset(seed=seed + ep)
        for t in range(length):
            a = rng.uniform(low, high)
            s2, _, terminated, truncated, _ = env.step(a)
            buf.add(s, a, s2, ep, t)
            s = s2
            if terminated or truncated:
                break
    env.close()
    return buf
