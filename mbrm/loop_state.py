"""What a run's checkpoint holds of the loop, and how a resumed loop gets it back.

The checkpoint is written after every iteration, after the replay buffer it counts
(:meth:`mbrm.loop.Loop.save`): the models' state dicts, the schedule's position, the
metrics so far and every random generator's state, so that a resumed run continues as
the uninterrupted one would have.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from mbrm.replay import ReplayBuffer
from mbrm.rundir import REPLAY, MetricsLog


def loop_payload(loop: Any) -> dict[str, Any]:
    """The checkpoint's contents of a :class:`mbrm.loop.Loop` (plain state dicts, JSON text)."""
    reviewer = loop.parts.plan_reviewer
    return {
        "world_model": loop.world_model.state_dict(),
        "reward_model": loop.reward_model.state_dict() if loop.reward_model is not None else {},
        "classifier": loop.classifier.state_dict() if loop.classifier is not None else {},
        "loop": {
            "replay_size": len(loop.replay),
            "classifier_ready": loop.classifier_ready,
            "iteration": loop.iteration,
            "episodes": loop.episodes,
            "metrics": loop.metrics.to_json(),
            "wall_seconds": loop.clock.seconds(),
        },
        "rng": {
            "teachers": json.dumps(loop.parts.gatherer.rng_states()),
            "plan_reviewer": json.dumps(reviewer.rng_state() if reviewer else None),
            "torch": loop.torch_gen.get_state(),
            "numpy": json.dumps(loop.rng.bit_generator.state),
        },
        "settings": json.dumps(asdict(loop.settings)),
    }


def restore_loop(loop: Any, ckpt: dict[str, Any]) -> None:
    """A :class:`mbrm.loop.Loop`'s models, schedule position, metrics, generators and replay from ``ckpt``."""
    loop.world_model.load_state_dict(ckpt["world_model"])
    if loop.reward_model is not None and ckpt["reward_model"]:
        loop.reward_model.load_state_dict(ckpt["reward_model"])
    if loop.classifier is not None and ckpt["classifier"]:
        loop.classifier.load_state_dict(ckpt["classifier"])
    state = ckpt["loop"]
    loop.iteration = int(state["iteration"])
    loop.episodes = int(state["episodes"])
    loop.classifier_ready = bool(state["classifier_ready"])
    loop.clock.earlier = float(state.get("wall_seconds", 0.0))  # older checkpoints: none
    loop.metrics = MetricsLog(loop.run_dir, json.loads(state["metrics"]))
    rng = ckpt["rng"]
    loop.torch_gen.set_state(rng["torch"])
    loop.rng.bit_generator.state = json.loads(rng["numpy"])
    loop.parts.gatherer.set_rng_states(json.loads(rng["teachers"]))
    reviewer_state = json.loads(rng.get("plan_reviewer", "null"))  # older checkpoints: none
    if loop.parts.plan_reviewer is not None and reviewer_state is not None:
        loop.parts.plan_reviewer.set_rng_state(reviewer_state)
    replay = ReplayBuffer.load(loop.run_dir / REPLAY)
    # replay.npz is written just before the checkpoint: a run killed in between has
    # transitions the checkpoint does not know about yet
    replay.truncate(int(state["replay_size"]))
    # a resumed run may be extended (more iterations): room for its new episodes
    loop.replay = replay.with_capacity(max(replay.capacity, loop.replay.capacity))
