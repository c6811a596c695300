"""World-model throughput: training seconds per epoch, imagined transitions per second.

    python benchmarks/world_model.py --task half_cheetah_safe --ensemble 7 --elites 5 \
        --hidden 200 --layers 4 --transitions 20000 --pop 400 --particles 20 --horizon 30

Prints one JSON line. Inference is timed for float32 and bfloat16 (medians over
``--repeats`` rollouts); the model has random weights, which is fine for timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from mbrm.replay import collect_random
from mbrm.tasks import get_task
from mbrm.world_model import WorldModel


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--task", default="half_cheetah_safe")
    p.add_argument("--ensemble", type=int, default=7)
    p.add_argument("--elites", type=int, default=5)
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--transitions", type=int, default=20_000, help="training set size")
    p.add_argument("--epochs", type=int, default=3, help="timed training epochs")
    p.add_argument("--pop", type=int, default=400, help="candidate action sequences")
    p.add_argument("--particles", type=int, default=20)
    p.add_argument("--horizon", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--propagation", default="ts1", choices=["ts1", "tsinf", "expectation"])
    args = p.parse_args()

    task = get_task(args.task)
    length = min(task.episode_length, 1000)
    buf = collect_random(task, max(args.transitions // length, 1), seed=0, episode_length=length)
    wm = WorldModel(
        task.state_dim,
        task.action_dim,
        input_mask=task.layout.input_mask,
        ensemble_size=args.ensemble,
        elites=args.elites,
        hidden=args.hidden,
        layers=args.layers,
    )
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    # patience larger than epochs: every epoch runs, so seconds/epoch is comparable
    report = wm.fit(*buf.arrays(), generator=g, max_epochs=args.epochs, patience=args.epochs + 1)
    train_s = (time.perf_counter() - t0) / report.epochs

    state = torch.tensor(buf.states[0], dtype=torch.float32)
    actions = torch.rand(args.pop, args.horizon, task.action_dim, generator=g) * 2 - 1
    transitions = args.pop * args.particles * args.horizon
    result: dict[str, object] = {
        "task": args.task,
        "ensemble": args.ensemble,
        "elites": args.elites,
        "hidden": args.hidden,
        "layers": args.layers,
        "train_transitions": len(buf),
        "train_s_per_epoch": round(train_s, 3),
        "rollout_transitions": transitions,
        "propagation": args.propagation,
        "threads": torch.get_num_threads(),
    }
    for dtype in ("float32", "bfloat16"):
        times = []
        for r in range(args.repeats + 1):
            t0 = time.perf_counter()
            wm.rollout(
                state,
                actions,
                particles=args.particles,
                generator=g,
                propagation=args.propagation,
                dtype=dtype,
            )
            if r > 0:  # the first call builds the cached inference copy
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        result[f"{dtype}_rollout_s"] = round(med, 4)
        result[f"{dtype}_transitions_per_s"] = round(transitions / med)
    result["bf16_speedup"] = round(result["float32_rollout_s"] / result["bfloat16_rollout_s"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
