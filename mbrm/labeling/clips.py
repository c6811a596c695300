"""Clips of segments, rendered once with MuJoCo and cached on disk.

A person judges a hypothetical future by looking at it (Leike et al. 2018, Sec. 5.2:
feedback on imagined and synthesised rollouts), so every segment in a query is
rendered from its states, real or imagined, with the task's own renderer and
camera. Rendering is the slow part of serving a query, so each clip is rendered
once per render size and kept in ``RUN_DIR/clips/`` under a name built from the
segment id and the size. Clips are encoded with imageio: H.264 mp4 through
imageio-ffmpeg where it is installed (it ships its own ffmpeg), otherwise an
animated webp (or gif) through pillow.

Serving a clip never opens a path that came from a request: a requested name must
match the cache's own naming pattern exactly and is resolved inside the cache
directory, and symbolic links are refused.
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np

from mbrm.feedback.segments import Segment

FORMATS = ("mp4", "webp", "gif")
MEDIA_TYPES = {"mp4": "video/mp4", "webp": "image/webp", "gif": "image/gif"}
_NAME = re.compile(
    r"^seg(?P<id>[1-9][0-9]{0,17})_(?P<w>[0-9]{2,4})x(?P<h>[0-9]{2,4})\.(?P<ext>mp4|webp|gif)$"
)

# An offscreen MuJoCo renderer draws only in the thread that made its OpenGL context
# current (other threads get black frames), so every clip is rendered on this one
# thread, with renderers it made itself.
_RENDER_THREAD = ThreadPoolExecutor(1, thread_name_prefix="mbrm-render")
_RENDERERS: dict[tuple[str, int, int], Any] = {}  # touched by the render thread only


class ClipNotFoundError(LookupError):
    """A clip name that is not one this cache serves (bad pattern, other size, unknown segment)."""


def render_states(task: Any, states: np.ndarray, width: int, height: int) -> np.ndarray:
    """Frames uint8 [N, height, width, 3] of states [N, S], as ``task.render`` draws them.

    Runs on the module's render thread (see ``_RENDER_THREAD``); safe to call from any
    thread. An all-black result means the renderer has no usable context: an error,
    never a cached clip.
    """
    states = np.asarray(states, dtype=np.float64)  # [N, S]
    if states.ndim != 2 or states.shape[1] != task.state_dim:
        raise ValueError(
            f"{task.name}: render expects states [N, {task.state_dim}]; got {states.shape}"
        )
    if not np.isfinite(states).all():
        raise ValueError(f"{task.name}: cannot render non-finite states")
    frames = _RENDER_THREAD.submit(_render_here, task, states, width, height).result()
    if frames.max() == 0:
        raise RuntimeError(f"{task.name}: the renderer returned black frames (no GL context?)")
    return frames


def _render_here(task: Any, states: np.ndarray, width: int, height: int) -> np.ndarray:
    key = (task.name, width, height)
    env = _RENDERERS.get(key)
    if env is None:
        # The same environment, camera and reset as Task.render, made on this thread.
        env = task.make_raw_env(render_mode="rgb_array", width=width, height=height)
        env.reset(seed=0)
        _RENDERERS[key] = env
    nq = task.layout.nq
    frames = []
    for s in states:
        env.unwrapped.set_state(s[:nq], s[nq:])
        frames.append(env.render())
    return np.stack(frames)  # [N, H, W, 3]


def mp4_available() -> bool:
    """True where imageio-ffmpeg (with its bundled ffmpeg binary) is installed."""
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def default_format() -> str:
    """mp4 where an encoder is installed, otherwise animated webp."""
    return "mp4" if mp4_available() else "webp"


def encode_clip(frames: np.ndarray, path: Path, fmt: str, fps: float) -> None:
    """Write frames uint8 [N, H, W, 3] to ``path`` as ``fmt``, atomically (temp file + rename)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"clip frames must be uint8 [N, H, W, 3]; got {frames.dtype} {frames.shape}"
        )
    if fmt not in FORMATS:
        raise ValueError(f"clip format must be one of {FORMATS}; got {fmt!r}")
    if not fps > 0:
        raise ValueError(f"clip fps must be positive; got {fps}")
    # The extension stays last: the encoders choose the container by it.
    tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
    try:
        if fmt == "mp4":
            # yuv420p and even sizes: what browsers decode; no B-frames so every
            # frame is reachable by seeking; macro_block_size=2 avoids imageio's
            # resize to multiples of 16.
            iio.imwrite(
                tmp,
                frames,
                extension=".mp4",
                plugin="FFMPEG",
                fps=fps,
                codec="libx264",
                pixelformat="yuv420p",
                macro_block_size=2,
                ffmpeg_log_level="error",
                output_params=["-bf", "0", "-g", "1", "-crf", "20"],
            )
        else:
            duration_ms = 1000.0 / fps
            kwargs: dict[str, object] = {"duration": duration_ms, "loop": 0}
            if fmt == "webp":
                kwargs.update(lossless=False, quality=85)
            iio.imwrite(tmp, frames, extension=f".{fmt}", plugin="pillow", **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class ClipInfo:
    """What the page needs to play a clip."""

    name: str
    format: str
    media_type: str
    n_frames: int
    fps: float
    width: int
    height: int


class ClipCache:
    """Rendered clips of one run's segments in ``directory``.

    ``render(states [N, S], width, height) -> uint8 [N, H, W, 3]`` is the task's
    renderer; ``load_segment(id)`` reads a segment from the feedback store (it raises
    LookupError for an unknown id).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        render: Callable[[np.ndarray, int, int], np.ndarray],
        load_segment: Callable[[int], Segment],
        *,
        width: int = 240,
        height: int = 240,
        fps: float = 10.0,
        fmt: str | None = None,
    ) -> None:
        fmt = default_format() if fmt is None else fmt
        if fmt not in FORMATS:
            raise ValueError(f"clip format must be one of {FORMATS}; got {fmt!r}")
        if fmt == "mp4" and not mp4_available():
            raise ValueError("clip format mp4 needs imageio-ffmpeg; install it or use webp")
        for what, v in (("width", width), ("height", height)):
            if not (16 <= v <= 1024) or v % 2:
                raise ValueError(f"clip {what} must be an even number in 16..1024; got {v}")
        if not 0 < fps <= 120:
            raise ValueError(f"clip fps must be in (0, 120]; got {fps}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._root = self.directory.resolve()
        self._render = render
        self._load_segment = load_segment
        self.width, self.height, self.fps, self.format = width, height, float(fps), fmt
        self._locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def name(self, segment_id: int) -> str:
        """The cache file name of a segment's clip at this cache's size and format."""
        return f"seg{int(segment_id)}_{self.width}x{self.height}.{self.format}"

    def info(self, segment_id: int, n_states: int) -> ClipInfo:
        return ClipInfo(
            self.name(segment_id),
            self.format,
            MEDIA_TYPES[self.format],
            n_states,
            self.fps,
            self.width,
            self.height,
        )

    def segment_id(self, name: str) -> int:
        """The segment id a clip name stands for; ClipNotFoundError unless it is one of ours."""
        m = _NAME.match(name) if isinstance(name, str) else None
        if m is None or name != self.name(int(m["id"])):
            raise ClipNotFoundError(f"no clip named {name!r} in this cache")
        return int(m["id"])

    def path(self, name: str) -> Path:
        """The cached file for ``name``, rendering it first if needed.

        The returned path is inside the cache directory and is a regular file, not a
        link; anything else raises ClipNotFoundError.
        """
        segment_id = self.segment_id(name)
        path = self.directory / name
        if path.is_symlink():
            raise ClipNotFoundError(f"clip {name!r} is a symbolic link; refusing to serve it")
        if not path.exists():
            self._build(segment_id, path)
        real = path.resolve(strict=True)
        if real.parent != self._root or path.is_symlink() or not real.is_file():
            raise ClipNotFoundError(f"clip {name!r} does not resolve to a file in the cache")
        return real

    def _build(self, segment_id: int, path: Path) -> None:
        with self._locks_guard:
            lock = self._locks.setdefault(segment_id, threading.Lock())
        with lock:  # two requests for one clip render it once
            if path.exists():
                return
            try:
                segment = self._load_segment(segment_id)
            except LookupError as e:
                raise ClipNotFoundError(f"no segment {segment_id} for clip {path.name!r}") from e
            frames = self._render(segment.states, self.width, self.height)  # [T+1, H, W, 3]
            encode_clip(frames, path, self.format, self.fps)


__all__ = [
    "FORMATS",
    "MEDIA_TYPES",
    "ClipCache",
    "ClipInfo",
    "ClipNotFoundError",
    "default_format",
    "encode_clip",
    "mp4_available",
    "render_states",
]
