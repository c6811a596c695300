"""A small run directory with pending queries, made in seconds, to try the labelling UI.

``mbrm label --make-sample DIR`` (and the labelling tests) use it instead of a long
training run: real segments from random-action episodes of the task's environment,
imagined segments rolled out by a small world model fitted on those episodes
(Leike et al. 2018, Sec. 5.2), pending preference and unacceptable-state queries,
and, with ``fit_models``, a checkpoint whose reward model and classifier give the
page its assistance. The models are fitted to the task's hidden truth here (a
stand-in for earlier feedback), which a real run never sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mbrm.feedback.segments import Preference, Segment, SegmentSource
from mbrm.feedback.store import FeedbackStore

# Small models, so a sample run with fitted models takes a few seconds on a CPU.
SAMPLE_OVERRIDES = [
    "progress=false",
    "feedback=human",
    "world_model.ensemble_size=2",
    "world_model.elites=2",
    "world_model.hidden=32",
    "world_model.layers=2",
    "reward_model.ensemble_size=3",
    "reward_model.hidden=32",
    "reward_model.layers=2",
    "classifier.ensemble_size=3",
    "classifier.hidden=32",
    "classifier.layers=2",
]


def _episodes(task, n: int, length: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random-action episodes: (states [length+1, S], actions [length, A]) each."""
    rng = np.random.default_rng(seed)
    low, high = task.action_bounds
    env = task.make_env(seed)
    out = []
    for e in range(n):
        s, _ = env.reset(seed=seed * 10_007 + e)
        states, actions = [np.asarray(s, dtype=np.float64)], []
        for _ in range(length):
            a = rng.uniform(low, high)
            s, *_ = env.step(a)
            states.append(np.asarray(s, dtype=np.float64))
            actions.append(a)
        out.append((np.stack(states), np.stack(actions)))
    env.close()
    return out


def make_sample_run(
    run_dir: str | Path,
    *,
    task_name: str = "reacher_keepout",
    preference_queries: int = 4,
    unacceptable_queries: int = 2,
    segment_length: int = 12,
    fit_models: bool = True,
    seed: int = 0,
) -> Path:
    """Write config.yaml, feedback.sqlite (pending queries) and, with ``fit_models``,
    checkpoint.pt and replay.npz into ``run_dir``; returns ``run_dir``.

    Preference queries pair a real segment with an imagined one where they can, so
    the page always has an imagined clip to mark.
    """
    from omegaconf import OmegaConf

    from mbrm.run import build_loop, compose_config

    if preference_queries < 0 or unacceptable_queries < 0:
        raise ValueError("query counts must be non-negative")
    if segment_length < 2:
        raise ValueError(f"segment_length must be at least 2; got {segment_length}")
    run_dir = Path(run_dir)
    if (run_dir / "feedback.sqlite").exists():
        raise FileExistsError(f"{run_dir} already holds a feedback store; not overwriting it")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = compose_config([f"task={task_name}", f"seed={seed}", *SAMPLE_OVERRIDES])
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    loop = build_loop(cfg, run_dir)  # opens (creates) feedback.sqlite with the task's sizes
    task, gen = loop.task, torch.Generator().manual_seed(seed)
    episodes = _episodes(task, 40, segment_length, seed)
    for e, (s, a) in enumerate(episodes):
        for t in range(segment_length):
            loop.replay.add(s[t], a[t], s[t + 1], episode=e, step=t)
    loop.world_model.fit(*loop.replay.arrays(), generator=gen, max_epochs=5)

    # Imagined segments: the world model's rollout of an episode's own actions.
    n_real = max(2, preference_queries + unacceptable_queries)
    n_imagined = max(1, (preference_queries + 1) // 2)
    real = [Segment(s, a, SegmentSource.REAL) for s, a in episodes[:n_real]]
    imagined = []
    for s, a in episodes[n_real : n_real + n_imagined]:
        states = (
            loop.world_model.rollout(
                torch.as_tensor(s[0]), torch.as_tensor(a)[None], particles=1, generator=gen
            )[0, 0]
            .double()
            .numpy()
        )  # [T+1, S]
        imagined.append(Segment(states, a, SegmentSource.IMAGINED, {"model": "world_model"}))

    store: FeedbackStore = loop.store
    real_ids = [store.add_segment(s) for s in real]
    imag_ids = [store.add_segment(s) for s in imagined]
    for k in range(preference_queries):
        right = imag_ids[k // 2] if k % 2 == 0 else real_ids[(k + 1) % n_real]
        store.add_query(
            "preference",
            [real_ids[k], right],
            acquisition="disagreement",
            score=float(preference_queries - k),
            loop_round=0,
        )
    for k in range(unacceptable_queries):
        seg = imag_ids[k % len(imag_ids)] if k % 2 == 0 else real_ids[k % n_real]
        store.add_query("unacceptable", [seg], acquisition="constraint_uncertainty", loop_round=0)

    if fit_models:
        _fit_models(loop, episodes, gen)
        loop.save()
    store.close()
    return run_dir


def _fit_models(loop, episodes, gen: torch.Generator) -> None:
    """Reward model and classifier fitted on the hidden truth of the sample episodes."""
    task = loop.task
    segs = [Segment(s, a) for s, a in episodes]
    returns = [float(task.true_reward(s[:-1], a, s[1:]).sum()) for s, a in episodes]
    pairs = []
    for i in range(len(segs) - 1):
        j = i + 1
        pref = Preference.LEFT if returns[i] > returns[j] else Preference.RIGHT
        pairs.append((segs[i], segs[j], pref))
    if loop.reward_model is not None:
        loop.reward_model.fit(pairs, generator=gen, epochs=15)
    if loop.classifier is None:
        return
    # Random-action episodes rarely reach unacceptable states; states scattered around
    # them (wide Gaussian noise) reach both classes on every task.
    visited = np.concatenate([s for s, _ in episodes])  # [M, S]
    rng = np.random.default_rng(0)
    scattered = visited[rng.integers(0, len(visited), 4 * len(visited))]
    scattered = scattered + rng.normal(0.0, 0.8, scattered.shape)
    states = np.concatenate([visited, scattered])  # [5M, S]
    flags = task.unacceptable(states)  # [5M]
    if flags.sum() < 8 or (~flags).sum() < 8:
        return  # too few of one class to fit and calibrate; the page says "not fitted"
    order = rng.permutation(len(states))
    cal, train = order[: len(order) // 3], order[len(order) // 3 :]
    loop.classifier.fit(states[train], flags[train], generator=gen, epochs=40)
    if flags[cal].sum() >= 4:
        loop.classifier.calibrate(states[cal], flags[cal], alpha=0.2)


__all__ = ["SAMPLE_OVERRIDES", "make_sample_run"]
