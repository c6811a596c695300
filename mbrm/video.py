"""Videos of evaluation episodes and strips of the plans the agent imagined.

People judge an agent by watching it (Leike et al. 2018, Sec. 5.2: outcomes are
rendered for the user). Each filmed evaluation episode gives

* ``videos/eval_<seed>.mp4``: the real episode rendered with the task's renderer,
  with a panel under each frame: the step, the true return so far, whether the state
  is unacceptable, and a bar per speed, height or angle limit of the task (the value
  against its limit; reacher_keepout's keep-out disc is drawn in the scene itself);
* ``videos/eval_<seed>_plans.png``: every k steps, the best imagined future of the
  plan the agent chose (first particle) above the real states that followed.

Everything here reads states captured during the episode (:class:`mbrm.episodes.Capture`)
after the evaluation is over, so filming changes no result.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mbrm.episodes import Capture
from mbrm.tasks import Task
from mbrm.tasks.half_cheetah_safe import CHEETAH_FLIP_ANGLE, CHEETAH_SPEED_LIMIT
from mbrm.tasks.hopper_safe import HOPPER_ANGLE_MAX, HOPPER_SPEED_LIMIT, HOPPER_Z_MIN
from mbrm.tasks.inverted_pendulum import (
    PENDULUM_MAX_ANGLE,
    PENDULUM_RAIL_LIMIT,
    cart_position,
    pole_angle,
)
from mbrm.tasks.physics import forward_velocity, torso_angle, torso_height
from mbrm.tasks.reacher_keepout import KEEPOUT_CENTER, KEEPOUT_RADIUS, fingertip_position

VIDEOS = "videos"  # the folder of a run directory they go in
VIDEO_SIZE = 320  # pixels, square (a multiple of 16, as H.264 encoders want)
TILE_SIZE = 160  # pixels of one state in a plan strip
PLANS_PER_EPISODE = 4  # plans kept per filmed episode
STRIP_COLUMNS = 6  # imagined steps shown per plan
MIN_SECONDS = 5.0  # short episodes are slowed down to this length, down to MIN_FPS
MIN_FPS, MAX_FPS = 10, 30
ROW = 18  # pixels per line of the panel under a frame

RED, GREEN, GREY, WHITE = (220, 40, 40), (60, 170, 80), (90, 90, 90), (235, 235, 235)


@dataclass(frozen=True)
class Gauge:
    """One limit of a task, drawn as a bar: the current value against the limit.

    upper: the value must stay below ``limit`` (else above it)
    """

    name: str
    unit: str
    value: Callable[[np.ndarray], np.ndarray]  # states [T, S] -> [T]
    limit: float
    upper: bool = True


# Tasks whose fixed camera leaves a wide margin around where things happen: the frame's
# centre, enlarged this many times.
ZOOM: dict[str, float] = {"reacher_keepout": 1.3}

# The limits of the hidden unacceptable rules, task by task (values from each task module).
GAUGES: dict[str, tuple[Gauge, ...]] = {
    "reacher_keepout": (
        Gauge(
            "keep-out distance",
            "m",
            lambda s: np.linalg.norm(fingertip_position(s) - np.asarray(KEEPOUT_CENTER), axis=-1),
            KEEPOUT_RADIUS,
            upper=False,
        ),
    ),
    "hopper_safe": (
        Gauge("speed", "m/s", forward_velocity, HOPPER_SPEED_LIMIT),
        Gauge("height", "m", torso_height, HOPPER_Z_MIN, upper=False),
        Gauge("|torso angle|", "rad", lambda s: np.abs(torso_angle(s)), HOPPER_ANGLE_MAX),
    ),
    "half_cheetah_safe": (
        Gauge("speed", "m/s", forward_velocity, CHEETAH_SPEED_LIMIT),
        Gauge("|torso angle|", "rad", lambda s: np.abs(torso_angle(s)), CHEETAH_FLIP_ANGLE),
    ),
    "inverted_pendulum": (
        Gauge("|pole angle|", "rad", lambda s: np.abs(pole_angle(s)), PENDULUM_MAX_ANGLE),
        Gauge("|cart|", "m", lambda s: np.abs(cart_position(s)), PENDULUM_RAIL_LIMIT),
    ),
}


def render(task: Task, states: np.ndarray, size: int) -> np.ndarray:
    """Square frames [T, size, size, 3] of states [T, S], zoomed in where ``ZOOM`` says."""
    zoom = ZOOM.get(task.name, 1.0)
    big = round(size * zoom)
    frames = task.render(states, big, big)
    lo = (big - size) // 2
    return np.ascontiguousarray(frames[:, lo : lo + size, lo : lo + size])


def plan_interval(length: int) -> int:
    """Steps between kept plans, so an episode of ``length`` steps keeps about four."""
    return max(1, math.ceil(length / PLANS_PER_EPISODE))


def frame_rate(frames: int, dt: float) -> int:
    """Frames per second: real time at most, slowed to last ``MIN_SECONDS`` when short."""
    return int(np.clip(round(frames / MIN_SECONDS), MIN_FPS, min(MAX_FPS, round(1 / dt))))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _panel_height(task: Task) -> int:
    rows = 1 + len(GAUGES.get(task.name, ()))
    return 16 * math.ceil((rows * ROW + 6) / 16)


def annotate(task: Task, frames: np.ndarray, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Frames [T+1, H, W, 3] with the panel under each (see the module docstring)."""
    T, H, W, _ = frames.shape
    bad = task.unacceptable(states)  # [T+1]
    rewards = task.true_reward(states[:-1], actions, states[1:])  # [T]
    returns = np.concatenate([[0.0], np.cumsum(rewards)])
    gauges = GAUGES.get(task.name, ())
    values = [g.value(states) for g in gauges]
    font = _font(12)
    out = np.zeros((T, H + _panel_height(task), W, 3), dtype=np.uint8)
    for t in range(T):
        img = Image.new("RGB", (W, out.shape[1]), (25, 25, 25))
        img.paste(Image.fromarray(frames[t]), (0, 0))
        draw = ImageDraw.Draw(img)
        if bad[t]:
            draw.rectangle([0, 0, W - 1, H - 1], outline=RED, width=4)
        y = H + 3
        draw.text((6, y), f"step {t}/{T - 1}   return {returns[t]:.2f}", font=font, fill=WHITE)
        status = "UNACCEPTABLE" if bad[t] else "acceptable"
        draw.text((W - 6, y), status, font=font, fill=RED if bad[t] else GREEN, anchor="ra")
        for g, v in zip(gauges, values, strict=True):
            y += ROW
            _gauge(draw, g, float(v[t]), y, W, font)
        out[t] = np.asarray(img)
    return out


def _gauge(draw: ImageDraw.ImageDraw, g: Gauge, v: float, y: int, W: int, font) -> None:
    """``name value / limit unit`` and a bar whose tick marks the limit (at 2/3 of it)."""
    ok = v <= g.limit if g.upper else v >= g.limit
    draw.text((6, y), f"{g.name} {v:.2f} / {g.limit:.2f} {g.unit}", font=font, fill=WHITE)
    x0, x1 = W - 100, W - 8
    span = 1.5 * g.limit
    fill = x0 + (x1 - x0) * float(np.clip(v / span if span else 0.0, 0.0, 1.0))
    draw.rectangle([x0, y + 2, x1, y + 12], outline=GREY)
    draw.rectangle([x0, y + 2, fill, y + 12], fill=GREEN if ok else RED)
    tick = x0 + (x1 - x0) * 2 / 3
    draw.line([tick, y - 1, tick, y + 15], fill=WHITE, width=2)


def write_video(path: Path, frames: np.ndarray, fps: int) -> Path:
    """An H.264 MP4 of frames [T, H, W, 3] (written beside, then renamed into place)."""
    tmp = path.with_name("." + path.name)  # hidden: no glob of videos matches it
    with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=16) as w:
        for frame in frames:
            w.append_data(frame)
    tmp.replace(path)
    return path


def _tile(task: Task, state: np.ndarray | None) -> tuple[np.ndarray, bool, str]:
    """One rendered state, whether it is unacceptable, and why nothing is shown (or "")."""
    blank = np.full((TILE_SIZE, TILE_SIZE, 3), 40, dtype=np.uint8)
    if state is None:
        return blank, False, "episode over"
    if not np.isfinite(state).all():
        return blank, False, "non-finite"
    return render(task, state[None], TILE_SIZE)[0], bool(task.unacceptable(state)), ""


def plan_strip(task: Task, capture: Capture, path: Path, title: str) -> Path:
    """The PNG of every kept plan: imagined states above the real states that followed."""
    plans = capture.plans
    if not plans:
        raise ValueError("the capture kept no plan (a random policy, or plan_every=0)")
    horizon = len(plans[0].states) - 1
    offsets = np.unique(np.linspace(0, horizon, min(horizon + 1, STRIP_COLUMNS)).round())
    left, top, head, gap, cell = 104, 30, 18, 22, TILE_SIZE + 8
    block = head + 2 * cell + gap  # one plan: step labels, imagined row, real row
    canvas = Image.new("RGB", (left + len(offsets) * cell + 4, top + len(plans) * block), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    draw.text((8, 8), f"{title}: the chosen plan as imagined (above) and what happened (below); "
              "red frame = unacceptable", font=font, fill="black")  # fmt: skip
    for i, plan in enumerate(plans):
        y0 = top + i * block
        flag = (
            "" if plan.feasible else ("\n(no safe plan)" if plan.no_safe_plan else "\n(rejected)")
        )
        draw.text(
            (8, y0 + head + 8), f"imagined at\nstep {plan.step}{flag}", font=font, fill="black"
        )
        draw.text((8, y0 + head + cell + 8), "real", font=font, fill="black")
        for j, k in enumerate(offsets.astype(int)):
            t = plan.step + k
            x = left + j * cell
            draw.text((x + cell // 2, y0 + 2), f"step {t}", font=font, fill="black", anchor="ma")
            real = capture.states[t] if t < len(capture.states) else None
            for r, state in enumerate((plan.states[k], real)):
                img, bad, note = _tile(task, state)
                y = y0 + head + r * cell
                draw.rectangle([x, y, x + cell - 3, y + cell - 3], fill=RED if bad else GREY)
                canvas.paste(Image.fromarray(img), (x + 3, y + 3))
                if note:
                    centre = (x + cell // 2, y + cell // 2)
                    draw.text(centre, note, font=font, fill=WHITE, anchor="mm")
    tmp = path.with_name("." + path.name)
    canvas.save(tmp, format="png")
    tmp.replace(path)
    return path


def clear_videos(out_dir: Path) -> None:
    """Remove the videos and plan strips of an earlier evaluation from ``out_dir``."""
    for pattern in ("eval_*.mp4", "eval_*_plans.png", "eval_*.gif"):
        for p in out_dir.glob(pattern):
            p.unlink()


def write_evaluation_videos(task: Task, captures: dict[int, Capture], out_dir: Path) -> list[Path]:
    """``eval_<seed>.mp4`` and ``eval_<seed>_plans.png`` for every captured episode.

    The folder keeps this evaluation's files only: earlier ones are removed first.
    Returns the paths written, videos and strips by seed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_videos(out_dir)
    written = []
    for seed, capture in captures.items():
        frames = render(task, capture.states, VIDEO_SIZE)
        frames = annotate(task, frames, capture.states, capture.actions)
        fps = frame_rate(len(frames), task.layout.dt)
        written.append(write_video(out_dir / f"eval_{seed}.mp4", frames, fps))
        if capture.plans:
            written.append(
                plan_strip(task, capture, out_dir / f"eval_{seed}_plans.png", f"seed {seed}")
            )
    return written


def film(task: Task, captures: dict[int, Capture], run_dir: Path, *, strict: bool) -> list[Path]:
    """:func:`write_evaluation_videos` into ``run_dir/videos``; with ``strict=False`` (a run's
    own setting, not a command) a failure is a warning, as the run's figures are saved."""
    if not captures:
        return []
    try:
        return write_evaluation_videos(task, captures, run_dir / VIDEOS)
    except Exception as e:
        if strict:
            raise
        # e.g. a machine without OpenGL or ffmpeg: the run still finishes, and says how
        # to film it where they are
        warnings.warn(
            f"no evaluation videos ({type(e).__name__}: {e}); "
            f"`mbrm eval {run_dir} --video` films them",
            stacklevel=2,
        )
        return []


def list_videos(run_dir: Path) -> list[Path]:
    """The evaluation videos of a run, by seed."""
    return sorted((run_dir / VIDEOS).glob("eval_*.mp4"), key=lambda p: (len(p.name), p.name))


def read_video(path: Path, every: int = 1) -> tuple[list[np.ndarray], float, int]:
    """Every ``every``-th frame [H, W, 3] of a video, its frame rate and its frame count
    (read as a stream: a long episode is never whole in memory)."""
    with imageio.get_reader(path) as reader:  # closes ffmpeg's pipes (iterating does not)
        n = reader.count_frames()
        kept = [reader.get_data(i) for i in range(0, n, every)]
        fps = float(reader.get_meta_data()["fps"])
    return kept, fps, n


def video_frame(path: Path, where: float = 1 / 3) -> np.ndarray:
    """One frame [H, W, 3] of a video, ``where`` of the way through (a poster)."""
    with imageio.get_reader(path) as reader:
        return reader.get_data(int(where * (reader.count_frames() - 1)))


def video_gif(
    video: Path, gif: Path, *, every: int = 2, width: int = 200, frames: int = 100
) -> Path:
    """A small looping GIF of ``video``: every ``every``-th frame (more apart when that
    would make over ``frames``), ``width`` pixels wide, at the video's speed."""
    with imageio.get_reader(video) as reader:
        step = max(every, math.ceil(reader.count_frames() / frames))
    kept, fps, _ = read_video(video, step)
    small = [
        Image.fromarray(f).resize((width, round(f.shape[0] * width / f.shape[1])), Image.LANCZOS)
        for f in kept
    ]
    tmp = gif.with_name("." + gif.name)
    small[0].save(
        tmp, save_all=True, append_images=small[1:], duration=round(1000 * step / fps), loop=0
    )
    tmp.replace(gif)
    return gif
