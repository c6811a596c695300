"""Planner speed with the agent's whole imagination, and where an imagination call goes.

    python benchmarks/planner.py [--task half_cheetah_safe] [--planner cem|icem|mcts]
        [--dtype float32|bfloat16] [--threads 1] [--repeats 5] [--no-peak]

The imagination is the agent's own: ``build_loop`` on the composed config (``configs/``,
with ``task=...``) and then ``parts.imagination(parts.constraint_set(classifier_ready=True))``,
i.e. the world model's trajectory sampling (TS1), the reward ensemble on every imagined
step, and the task's constraint set (its hard entries and the learned entry, whose
classifier is first fitted for a few epochs on random states labelled by the task's rule
and calibrated, so that the learned entry is in the set). Model sizes default to the
configured ones (``world_model``, ``reward_model``, ``classifier`` groups); flags override
them. The weights are untrained, which does not change the cost.

The default *shape* of a planning step is mbrl-lib's PETS HalfCheetah setting, not the
configured planner: 400 sequences x 30 steps, 5 iterations (40 elites), 20 particles
(``experiment.particles`` is 10 in the config). ``--planner mcts`` runs MCTS with the same
number and size of imagination calls (``iters`` calls of ``pop`` sequences).

Prints a readable split to stderr and one JSON line to stdout:

- ``s_per_step`` / ``cpu_s_per_step``: median wall / process-CPU seconds of one ``plan``
- ``transitions_per_s``: imagined transitions (sequence x particle x step) per second
- ``split_s_per_call`` / ``split_fraction``: one imagination call's (of ``pop`` sequences)
  ``world_model``, ``reward``, ``classifier``, ``constraint_entries`` (the other entries
  and the set's maximum), ``imagination_other`` (the imagination's own tensor glue), and
  ``planner`` (the step's time outside imagination calls, per call); fractions sum to 1
- ``alignment_fraction``: reward + classifier + constraint entries over the imagination call
- ``rejected_fraction``: candidates the constraint set rejected in the timed steps
- ``rollout_s_per_call`` / ``reward_s_per_call``: the world-model and reward parts
- ``peak_rss_gib``: the process's peak resident memory

Unless ``--no-peak``, also the model FLOP rate against this CPU's GEMM peak:
``gflops`` (all three networks' matmuls per second of planning), ``gemm_peak_gflops``
(the same matmuls, dtypes and shapes back to back on preallocated buffers, best of 10 as
one batched call per layer and as one call per member and layer), ``fraction_of_gemm_peak``,
``activation_s_per_step`` (the hidden SiLUs alone, best of 10),
``activation_bound_fraction`` (``gemm / (gemm + activation)``: the most this activation
allows if all else were free), ``square_gemm_gflops``, and ``planner_overhead_s`` (one
``plan`` with an imagination whose cost is one small matmul).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mbrm.nn import INFERENCE_CHUNK, EnsembleMLP
from mbrm.run import build_loop, compose_config
from planners import ImaginedBatch

Gemm = tuple[int, int, int, int, int, torch.dtype]  # calls, E, rows per member, in, out, dtype
SPLIT = ("world_model", "reward", "classifier", "constraint_entries", "imagination_other")


class Timed:
    """``target`` with the seconds of every call of its method ``method`` kept in
    ``seconds``; every other attribute is the target's."""

    def __init__(self, target: Any, method: str) -> None:
        self.target = target
        self.seconds: list[float] = []
        call = getattr(target, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = call(*args, **kwargs)
            self.seconds.append(time.perf_counter() - t0)
            return out

        setattr(self, method, timed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)

    def __len__(self) -> int:
        return len(self.target)


class TimedClassifier(Timed):
    """A timed classifier; ``threshold`` is declared so the ``Classifier`` protocol sees it."""

    def __init__(self, target: Any) -> None:
        super().__init__(target, "predict")

    @property
    def threshold(self) -> float | None:
        return self.target.threshold


def overrides(args: argparse.Namespace) -> list[str]:
    """The composed config's overrides: task, shape, dtype and any size flags given."""
    out = [f"task={args.task}", f"planner={args.planner}", "progress=false"]
    out += [f"experiment.particles={args.particles}", f"experiment.dtype={args.dtype}"]
    if args.planner == "mcts":
        out += [f"planner.simulations={args.pop * args.iters}", f"planner.batch_size={args.pop}"]
    else:
        out += [f"planner.population={args.pop}", f"planner.elites={args.elites}"]
        out += [f"planner.iterations={args.iters}"]
    out.append(f"planner.horizon={args.horizon}")
    if args.threads is not None:
        out.append(f"threads={args.threads}")
    if args.ensemble is not None:  # members, all of them elites
        out += [f"world_model.ensemble_size={args.ensemble}", f"world_model.elites={args.ensemble}"]
    sizes = {
        "world_model.hidden": args.hidden,
        "world_model.layers": args.layers,
        "reward_model.ensemble_size": args.reward_ensemble,
        "reward_model.hidden": args.reward_hidden,
        "reward_model.layers": args.reward_layers,
        "classifier.ensemble_size": args.classifier_ensemble,
        "classifier.hidden": args.classifier_hidden,
        "classifier.layers": args.classifier_layers,
    }
    return out + [f"{k}={v}" for k, v in sizes.items() if v is not None]


def calibrate_classifier(classifier: Any, task: Any, alpha: float) -> float:
    """Fit the classifier for a few epochs on random states labelled by the task's rule and
    calibrate it, so that the learned entry joins the set (its cost does not depend on
    what it learned). Returns the threshold."""
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(4000, task.state_dim, generator=gen) * 2.0  # [M, S]
    flags = task.unacceptable(s.double().numpy())
    if min(flags.sum(), (~flags).sum()) < 100:  # a rule these states rarely (or always) meet
        x = s[:, 0].numpy()
        flags = x > np.quantile(x, 0.9)
    classifier.fit(s[:3000], flags[:3000], generator=gen, epochs=2)
    return classifier.calibrate(s[3000:], flags[3000:], alpha=alpha)


def cheap_imagination(N: int, P: int, H: int, S: int, A: int) -> Callable:
    """An imagination whose cost is one small matmul, to time the planner alone."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(H * A, P * H, generator=gen) / (H * A)  # [H*A, P*H]
    states = torch.zeros(N, P, H + 1, S)  # shared, never written

    def imagine(state: torch.Tensor, actions: torch.Tensor) -> ImaginedBatch:
        n = actions.shape[0]
        r = (actions.reshape(n, H * A) @ w).view(n, P, H)  # [n, P, H]
        p = (r > 2.0).float()
        return ImaginedBatch(states[:n], r, r.abs(), p)

    return imagine


def network_calls(
    nets: list[tuple[EnsembleMLP, int, int]],
) -> list[tuple[int, int, int, EnsembleMLP]]:
    """(calls, E, rows per member, network) of the forward passes of one imagination call,
    from (network, rows per pass, passes) for rows split into ``INFERENCE_CHUNK`` slices
    (passes > 0: that many passes of exactly these rows, as the world model's steps)."""
    out = []
    for net, rows, passes in nets:
        if passes:
            out.append((passes, net.ensemble_size, rows, net))
            continue
        full, rest = divmod(rows, INFERENCE_CHUNK)
        for calls, b in ((full, INFERENCE_CHUNK), (1 if rest else 0, rest)):
            if calls:
                out.append((calls, net.ensemble_size, b, net))
    return out


def model_gemms(calls: list[tuple[int, int, int, EnsembleMLP]]) -> list[Gemm]:
    """(calls, E, rows per member, in, out, dtype) of every matmul of one imagination call."""
    return [
        (c, e, b, lin.in_features, lin.out_features, lin.weight.dtype)
        for c, e, b, net in calls
        for lin in net.linears
    ]


def model_activations(calls: list[tuple[int, int, int, EnsembleMLP]]) -> list[Gemm]:
    """The same for every hidden activation (in = out = its width)."""
    return [
        (c, e, b, lin.out_features, lin.out_features, lin.weight.dtype)
        for c, e, b, net in calls
        for lin in net.linears[:-1]
    ]


def gemm_flops(gemms: list[Gemm]) -> float:
    return float(sum(2 * c * e * b * i * o for c, e, b, i, o, _ in gemms))


def best_seconds(once: Callable[[], None], repeats: int = 10) -> float:
    """Fastest of ``repeats`` timed calls of ``once``, after one untimed warm-up call."""
    once()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_peak(gemms: list[Gemm]) -> float:
    """GFLOP/s of exactly these batched matmuls on preallocated buffers (best of 10)."""
    gen = torch.Generator().manual_seed(0)
    bufs = []
    for _, e, b, i, o, dt in gemms:
        x = torch.randn(e, b, i, generator=gen).to(dt)
        w = torch.randn(e, i, o, generator=gen).to(dt)
        bias = torch.randn(e, 1, o, generator=gen).to(dt)
        bufs.append((x, w, bias, torch.empty(e, b, o, dtype=dt)))

    def batched() -> None:  # one call per layer, as EnsembleMLP.forward
        for (c, *_), (x, w, bias, y) in zip(gemms, bufs, strict=True):
            for _ in range(c):
                torch.baddbmm(bias, x, w, out=y)

    def per_member() -> None:  # one call per member and layer, as EnsembleMLP.infer
        for (c, e, *_), (x, w, bias, y) in zip(gemms, bufs, strict=True):
            for _ in range(c):
                for m in range(e):
                    torch.addmm(bias[m], x[m], w[m], out=y[m])

    # The best of 10 runs of either form: a peak, so that the fraction reported is not
    # flattered by a slow moment or by the form the model happens to use.
    return gemm_flops(gemms) / min(best_seconds(batched), best_seconds(per_member)) / 1e9


def activation_time(acts: list[Gemm]) -> float:
    """Seconds of the hidden activations alone (SiLU into a second buffer, as
    ``EnsembleMLP.infer``), best of 10: with the GEMMs at their peak, the planning
    step cannot be faster than both together, so ``gemm / (gemm + activation)`` is
    the fraction of the GEMM peak this CPU allows with this activation."""
    gen = torch.Generator().manual_seed(0)
    bufs = [
        (torch.randn(b, o, generator=gen).to(dt), torch.empty(b, o, dtype=dt))
        for _, _, b, o, _, dt in acts
    ]

    def once() -> None:
        for (c, e, *_), (h, dst) in zip(acts, bufs, strict=True):
            for _ in range(c * e):
                torch.ops.aten.silu.out(h, out=dst)

    return best_seconds(once)


def square_gemm(dtype: torch.dtype, n: int = 2048) -> float:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    c = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=c)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def time_plans(
    planner, state, imagine, repeats: int, after_warm_up: Callable[[], None] = lambda: None
) -> tuple[list[float], list[float], list]:
    """Wall and process-CPU seconds of ``repeats`` warm-started plan calls, and their results
    (one untimed call first: it builds the cached inference copies)."""
    gen = torch.Generator().manual_seed(0)
    prev, wall, cpu, results = None, [], [], []
    for r in range(repeats + 1):
        if r == 1:
            after_warm_up()
        t0, c0 = time.perf_counter(), time.process_time()
        result = planner.plan(state, imagine, generator=gen, previous_plan=prev)
        if r > 0:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            results.append(result)
        prev = result.plan
    return wall, cpu, results


def split(
    timers: dict[str, Timed], imagination: list[float], steps: float, calls: float
) -> dict[str, float]:
    """Seconds of each part per imagination call of ``pop`` sequences (``calls`` of them in
    the timed steps; CEM's call on its mean counts as 1/pop), and the planner's time
    outside the calls on the same scale."""
    total = sum(imagination)
    wm, rw, clf, cs = (sum(timers[k].seconds) for k in ("wm", "reward", "classifier", "set"))
    parts = {
        "world_model": wm,
        "reward": rw,
        "classifier": clf,
        "constraint_entries": cs - clf,
        "imagination_other": total - wm - rw - cs,
        "planner": steps - total,
    }
    return {k: v / calls for k, v in parts.items()}


def measure(args: argparse.Namespace, run_dir: str) -> dict[str, Any]:
    """Time ``repeats`` planning steps in the agent's imagination, part by part."""
    loop = build_loop(compose_config(overrides(args)), run_dir)
    parts, task = loop.parts, loop.parts.task
    settings = parts.settings
    threshold = calibrate_classifier(parts.classifier, task, settings.alpha)
    timers = {
        "wm": Timed(parts.world_model, "rollout"),
        "reward": Timed(parts.reward_model, "predict"),
        "classifier": TimedClassifier(parts.classifier),
    }
    timed_parts = dataclasses.replace(
        parts,
        world_model=timers["wm"],
        reward_model=timers["reward"],
        classifier=timers["classifier"],
    )
    timers["set"] = Timed(timed_parts.constraint_set(classifier_ready=True), "evaluate")
    model = timed_parts.imagination(timers["set"], torch.Generator().manual_seed(0))
    imagination_s: list[float] = []

    def imagine(state: torch.Tensor, actions: torch.Tensor) -> ImaginedBatch:
        t0 = time.perf_counter()
        out = model(state, actions)
        imagination_s.append(time.perf_counter() - t0)
        return out

    def clear() -> None:
        for t in timers.values():
            t.seconds.clear()
        imagination_s.clear()

    state = torch.zeros(task.state_dim)
    times, cpu_times, results = time_plans(parts.planner, state, imagine, args.repeats, clear)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB, before peaks
    calls = sum(r.n_candidates for r in results) / args.pop  # calls of pop sequences
    per_call = split(timers, imagination_s, sum(times), calls)
    imagination_call = sum(imagination_s) / calls
    result = results[-1]
    step_s = statistics.median(times)
    transitions = result.n_candidates * settings.particles * args.horizon
    wm, rm, clf = parts.world_model, parts.reward_model, parts.classifier
    out: dict[str, Any] = {
        "task": task.name,
        "planner": args.planner,
        "dtype": settings.dtype,
        "pop": args.pop,
        "horizon": args.horizon,
        "iters": args.iters,
        "particles": settings.particles,
        "ensemble": len(wm.elite_idx),
        "world_model_members": wm.ensemble_size,
        **mlp_size("", wm.net),
        **mlp_size("reward_", rm.net.mlp, ensemble=True),
        **mlp_size("classifier_", clf.net.mlp, ensemble=True),
        "constraint_set": list(timers["set"].names),
        "classifier_threshold": round(threshold, 4),
        "threads": torch.get_num_threads(),
        "imagination_calls": result.n_calls,
        "sequences": result.n_candidates,
        "s_per_step": round(step_s, 4),
        "s_per_step_all": [round(t, 4) for t in times],
        # On a shared machine wall time includes waiting for a core; CPU seconds per
        # thread do not (the planner keeps torch's threads busy or idle, never oversubscribed).
        "cpu_s_per_step": round(statistics.median(cpu_times), 4),
        "transitions_per_s": round(transitions / step_s),
        "imagination_s_per_call": round(imagination_call, 4),
        "split_s_per_call": {k: round(v, 4) for k, v in per_call.items()},
        "split_fraction": {k: round(v / sum(per_call.values()), 4) for k, v in per_call.items()},
        "alignment_fraction": round(
            (per_call["reward"] + per_call["classifier"] + per_call["constraint_entries"])
            / imagination_call,
            4,
        ),
        "rejected_fraction": round(
            sum(r.n_rejected for r in results) / sum(r.n_candidates for r in results), 4
        ),
        "rollout_s_per_call": round(per_call["world_model"], 4),
        "reward_s_per_call": round(per_call["reward"], 4),
        "peak_rss_gib": round(peak_rss, 3),
    }
    if args.peak:
        out |= peak_figures(parts, args, result, step_s, state)
    loop.store.close()
    return out


def mlp_size(prefix: str, mlp: EnsembleMLP, ensemble: bool = False) -> dict[str, int]:
    """Width and hidden layers (and members) of an ensemble MLP, as JSON keys."""
    out = {f"{prefix}hidden": mlp.linears[0].out_features, f"{prefix}layers": len(mlp.linears) - 1}
    return out | ({f"{prefix}ensemble": mlp.ensemble_size} if ensemble else {})


def peak_figures(parts, args, result, step_s: float, state: torch.Tensor) -> dict[str, Any]:
    """The step's model FLOP rate against the same matmuls at this CPU's peak."""
    dtype = parts.settings.dtype
    N, P, H = args.pop, parts.settings.particles, args.horizon
    wm = parts.world_model._elite_net(dtype)
    nets = [
        (wm, -(-N * P // wm.ensemble_size), H),  # rows dealt to members in equal groups
        (parts.reward_model._inference_net(dtype).mlp, N * P * H, 0),
        *((clf.mlp, N * P * H, 0) for clf in parts.classifier._inference.values()),
    ]
    calls = network_calls(nets)
    calls_per_step = result.n_candidates / args.pop  # a smaller call (CEM's mean) counts less
    gemms = model_gemms(calls)
    flops_step = gemm_flops(gemms) * calls_per_step
    peak = gemm_peak(gemms)
    gemm_s = flops_step / peak / 1e9  # the step's matmuls at the peak rate
    act_s = activation_time(model_activations(calls)) * calls_per_step
    S, A = parts.task.state_dim, parts.task.action_dim
    cheap_times, _, _ = time_plans(
        parts.planner, state, cheap_imagination(N, P, H, S, A), args.repeats
    )
    gflops = flops_step / step_s / 1e9
    return {
        "model_gflop_per_step": round(flops_step / 1e9, 2),
        "gflops": round(gflops, 1),
        "gemm_peak_gflops": round(peak, 1),
        "fraction_of_gemm_peak": round(gflops / peak, 3),
        "gemm_s_per_step_at_peak": round(gemm_s, 3),
        "activation_s_per_step": round(act_s, 3),
        # The most this CPU allows with the networks' activation: all else free.
        "activation_bound_fraction": round(gemm_s / (gemm_s + act_s), 3),
        "square_gemm_gflops": round(square_gemm(wm.linears[0].weight.dtype), 1),
        "planner_overhead_s": round(statistics.median(cheap_times), 4),
    }


def report(out: dict[str, Any]) -> str:
    """The split as a few readable lines."""
    lines = [
        f"{out['task']} {out['planner']} {out['dtype']}: {out['s_per_step']:.3f} s per step, "
        f"{out['transitions_per_s']:,} imagined transitions/s, "
        f"{out['imagination_s_per_call']:.4f} s per imagination call of {out['pop']} sequences"
    ]
    for k, v in out["split_s_per_call"].items():
        lines.append(f"  {k:<20} {v:8.4f} s per call  {out['split_fraction'][k]:6.1%}")
    lines.append(
        f"  alignment stack (reward + classifier + constraint entries): "
        f"{out['alignment_fraction']:.1%} of an imagination call"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--task", default="half_cheetah_safe")
    p.add_argument("--planner", default="cem", choices=["cem", "icem", "mcts"])
    p.add_argument("--pop", type=int, default=400, help="candidate sequences per imagination call")
    p.add_argument("--elites", type=int, default=40)
    p.add_argument("--horizon", type=int, default=30)
    p.add_argument("--iters", type=int, default=5, help="imagination calls per planning step")
    p.add_argument("--particles", type=int, default=20)
    sizes = "default: the configured size"
    p.add_argument("--ensemble", type=int, help=f"world-model members, all elites ({sizes})")
    p.add_argument("--hidden", type=int, help=f"world-model width ({sizes})")
    p.add_argument("--layers", type=int, help=f"world-model hidden layers ({sizes})")
    for name in ("reward", "classifier"):
        p.add_argument(f"--{name}-ensemble", type=int, help=f"{name} members ({sizes})")
        p.add_argument(f"--{name}-hidden", type=int, help=f"{name} width ({sizes})")
        p.add_argument(f"--{name}-layers", type=int, help=f"{name} hidden layers ({sizes})")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=5, help="timed planning steps")
    p.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: the config's, 1; 0: torch's)"
    )
    p.add_argument(
        "--no-peak", dest="peak", action="store_false", help="skip the GEMM-peak figures"
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        out = measure(args, run_dir)
    print(report(out), file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
