"""Planner speed on the PETS HalfCheetah configuration, against this machine's GEMM peak.

    python benchmarks/planner.py --task half_cheetah_safe --pop 400 --horizon 30 --iters 5 \
        --particles 20 --ensemble 5 --hidden 200 --layers 4 --dtype float32 [--planner mcts]

The imagination is a world model (``WorldModel.rollout``, trajectory sampling TS1)
plus a reward ensemble (``EnsembleMLP``, 5 members) evaluated on every imagined
(state, action), and a speed-limit flag as ``p_unacceptable``; all weights are
random, which is fine for timing. ``--planner mcts`` runs MCTS with the same
number and size of imagination calls as CEM (``iters`` calls of ``pop``
sequences). Prints one JSON line:

- ``s_per_step``: median seconds of one ``plan`` call over ``--repeats`` calls
- ``transitions_per_s``: imagined transitions (sequence x particle x step) per second
- ``gflops``: model FLOPs (both networks' matmuls) per second of planning
- ``gemm_peak_gflops``: the same matmuls, in the same dtype and shapes, run back to
  back on preallocated buffers, best of 10 each as one batched call per layer and as
  one call per member and layer (what the step would reach with zero overhead)
- ``activation_s_per_step``: the step's hidden activations (SiLU) alone, best of 10
- ``activation_bound_fraction``: ``gemm / (gemm + activation)`` seconds per step, the
  highest fraction of the GEMM peak reachable with this activation if all else were free
- ``square_gemm_gflops``: one large square matmul in that dtype, for reference
- ``planner_overhead_s``: one ``plan`` call with an imagination whose cost is a
  single small matmul, i.e. the planner's own sampling, scoring and bookkeeping
- ``rollout_s`` / ``reward_s``: one imagination call's world-model and reward parts
- ``peak_rss_gib``: the process's peak resident memory
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from mbrm.nn import EnsembleMLP, inference_copy, member_mean_std, resolve_dtype
from mbrm.tasks import CHEETAH_SPEED_LIMIT, get_task
from mbrm.world_model import WorldModel
from planners import CEMSettings, ImaginedBatch, MCTSSettings, make_planner

# Rows per reward-ensemble call. Small chunks keep the [E, rows, hidden] activations
# in cache: at 2048 rows the reward part ran 2.5x faster than at 65536 on this CPU
# (1.03 s against 2.61 s per imagination call, float32, one thread).
REWARD_CHUNK = 2048


class BenchImagination:
    """World model + reward ensemble + a speed limit, timed per part."""

    def __init__(
        self,
        world_model: WorldModel,
        reward_net: EnsembleMLP,
        *,
        particles: int,
        dtype: str,
        limit_dim: int,
        generator: torch.Generator,
    ) -> None:
        self.wm = world_model
        self.reward_net = inference_copy(reward_net, dtype)
        self.particles = particles
        self.dtype = dtype
        self.limit_dim = limit_dim
        self.generator = generator
        self.rollout_s: list[float] = []
        self.reward_s: list[float] = []

    @torch.no_grad()
    def __call__(self, state: torch.Tensor, actions: torch.Tensor) -> ImaginedBatch:
        t0 = time.perf_counter()
        states = self.wm.rollout(
            state, actions, particles=self.particles, generator=self.generator, dtype=self.dtype
        )  # [N, P, H+1, S]
        t1 = time.perf_counter()
        N, P, H1, S = states.shape
        H, A = H1 - 1, actions.shape[-1]
        sa = [states[:, :, :-1], actions[:, None].expand(N, P, H, A)]
        x = torch.cat(sa, -1)  # [N, P, H, S+A]
        E = self.reward_net.ensemble_size
        rows = x.reshape(N * P * H, S + A)
        y = torch.empty(E, N * P * H)
        scratch = self.reward_net.scratch(REWARD_CHUNK)  # activations reused by every chunk
        for start in range(0, N * P * H, REWARD_CHUNK):
            c = rows[start : start + REWARD_CHUNK]
            y[:, start : start + len(c)] = self.reward_net.infer(
                c[None].expand(E, -1, -1), scratch
            )[..., 0]
        y = y.view(E, N, P, H)
        mean, std = member_mean_std(y, unbiased=True)  # [N, P, H]
        p = (states[:, :, 1:, self.limit_dim] > CHEETAH_SPEED_LIMIT).float()  # [N, P, H]
        self.rollout_s.append(t1 - t0)
        self.reward_s.append(time.perf_counter() - t1)
        return ImaginedBatch(states, mean, std, p, violations={"speed": p})


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


def linear_shapes(net: EnsembleMLP) -> list[tuple[int, int]]:
    return [(lin.in_features, lin.out_features) for lin in net.linears]


def network_calls(
    wm_net: EnsembleMLP, reward_net: EnsembleMLP, N: int, P: int, H: int
) -> list[tuple[int, int, int, EnsembleMLP]]:
    """(calls, E, rows per member, network) of the forward passes of one imagination call."""
    E_wm = wm_net.ensemble_size
    per = -(-N * P // E_wm)  # rows are dealt to members in equal groups
    out = [(H, E_wm, per, wm_net)]
    full, rest = divmod(N * P * H, REWARD_CHUNK)
    for calls, b in ((full, REWARD_CHUNK), (1 if rest else 0, rest)):
        if calls:
            out.append((calls, reward_net.ensemble_size, b, reward_net))
    return out


def model_gemms(
    wm_net: EnsembleMLP, reward_net: EnsembleMLP, N: int, P: int, H: int
) -> list[tuple[int, int, int, int, int]]:
    """(calls, E, rows per member, in, out) of every matmul of one imagination call."""
    return [
        (c, e, b, i, o)
        for c, e, b, net in network_calls(wm_net, reward_net, N, P, H)
        for i, o in linear_shapes(net)
    ]


def model_activations(
    wm_net: EnsembleMLP, reward_net: EnsembleMLP, N: int, P: int, H: int
) -> list[tuple[int, int, int, int]]:
    """(calls, E, rows per member, width) of every hidden activation of one imagination call."""
    return [
        (c, e, b, o)
        for c, e, b, net in network_calls(wm_net, reward_net, N, P, H)
        for _, o in linear_shapes(net)[:-1]
    ]


def gemm_flops(gemms: list[tuple[int, int, int, int, int]]) -> float:
    return float(sum(2 * c * e * b * i * o for c, e, b, i, o in gemms))


def best_seconds(once: Callable[[], None], repeats: int = 10) -> float:
    """Fastest of ``repeats`` timed calls of ``once``, after one untimed warm-up call."""
    once()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_peak(gemms: list[tuple[int, int, int, int, int]], dtype: torch.dtype) -> float:
    """GFLOP/s of exactly these batched matmuls on preallocated buffers (best of 10)."""
    gen = torch.Generator().manual_seed(0)
    bufs = []
    for _, e, b, i, o in gemms:
        x = torch.randn(e, b, i, generator=gen).to(dtype)
        w = torch.randn(e, i, o, generator=gen).to(dtype)
        bias = torch.randn(e, 1, o, generator=gen).to(dtype)
        bufs.append((x, w, bias, torch.empty(e, b, o, dtype=dtype)))

    def batched() -> None:  # one call per layer, as EnsembleMLP.forward
        for (c, *_), (x, w, bias, y) in zip(gemms, bufs, strict=True):
            for _ in range(c):
                torch.baddbmm(bias, x, w, out=y)

    def per_member() -> None:  # one call per member and layer, as EnsembleMLP.infer
        for (c, e, *_), (x, w, bias, y) in zip(gemms, bufs, strict=True):
            for _ in range(c):
                for m in range(e):
                    torch.addmm(bias[m], x[m], w[m], out=y[m])

    best = min(best_seconds(batched), best_seconds(per_member))
    # The best of 10 runs of either form: a peak, so that the fraction reported is not
    # flattered by a slow moment or by the form the model happens to use.
    return gemm_flops(gemms) / best / 1e9


def activation_time(acts: list[tuple[int, int, int, int]], dtype: torch.dtype) -> float:
    """Seconds of the hidden activations alone (SiLU into a second buffer, as
    ``EnsembleMLP.infer``), best of 10: with the GEMMs at their peak, the planning
    step cannot be faster than both together, so ``gemm / (gemm + activation)`` is
    the fraction of the GEMM peak this CPU allows with this activation."""
    gen = torch.Generator().manual_seed(0)
    bufs = [
        (torch.randn(b, o, generator=gen).to(dtype), torch.empty(b, o, dtype=dtype))
        for _, _, b, o in acts
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


def build_planner(name: str, args: argparse.Namespace, low: np.ndarray, high: np.ndarray):
    if name == "mcts":
        settings = MCTSSettings(
            horizon=args.horizon, simulations=args.pop * args.iters, batch_size=args.pop
        )
        return make_planner(settings, low, high)
    icem = name == "icem"
    settings = CEMSettings(
        horizon=args.horizon,
        population=args.pop,
        elites=args.elites,
        iterations=args.iters,
        noise_beta=2.0 if icem else 0.0,
        keep_elites=0.3 if icem else 0.0,
        add_mean=icem,
        execute_best=icem,
    )
    return make_planner(settings, low, high)


def time_plans(planner, state, imagine, repeats: int) -> tuple[list[float], list[float], object]:
    """Wall and process-CPU seconds of ``repeats`` warm-started plan calls."""
    gen = torch.Generator().manual_seed(0)
    prev, wall, cpu, result = None, [], [], None
    for r in range(repeats + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        result = planner.plan(state, imagine, generator=gen, previous_plan=prev)
        if r > 0:  # the first call builds cached inference copies
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        prev = result.plan
    return wall, cpu, result


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
    p.add_argument("--ensemble", type=int, default=5, help="world-model members (all elites)")
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument(
        "--reward-hidden",
        type=int,
        default=128,
        help="reward-ensemble width (configs/reward_model uses 64)",
    )
    p.add_argument("--reward-layers", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    args = p.parse_args()
    if args.threads > 0:
        # On a shared, oversubscribed machine one thread avoids waiting at OpenMP barriers.
        torch.set_num_threads(args.threads)

    task = get_task(args.task)
    S, A = task.state_dim, task.action_dim
    low, high = task.action_bounds
    wm = WorldModel(
        S,
        A,
        input_mask=task.layout.input_mask,
        ensemble_size=args.ensemble,
        elites=args.ensemble,
        hidden=args.hidden,
        layers=args.layers,
    )
    reward_net = EnsembleMLP(
        5,
        S + A,
        1,
        hidden=args.reward_hidden,
        layers=args.reward_layers,
        generator=torch.Generator().manual_seed(2),
    )
    gen = torch.Generator().manual_seed(0)
    imagine = BenchImagination(
        wm,
        reward_net,
        particles=args.particles,
        dtype=args.dtype,
        limit_dim=task.layout.index("qvel.rootx"),
        generator=gen,
    )
    state = torch.zeros(S)
    planner = build_planner(args.planner, args, low, high)
    times, cpu_times, result = time_plans(planner, state, imagine, args.repeats)
    peak_rss = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )  # GiB, before the GEMM test
    step_s = statistics.median(times)
    calls = result.n_calls
    # Timing of the imagination's parts, over the timed calls only.
    timed = slice(len(imagine.rollout_s) - calls * args.repeats, None)
    per_call = {
        "rollout_s": statistics.median(imagine.rollout_s[timed]),
        "reward_s": statistics.median(imagine.reward_s[timed]),
    }

    wm_net = wm._elite_net(args.dtype)
    gemms = model_gemms(wm_net, imagine.reward_net, args.pop, args.particles, args.horizon)
    flops_step = gemm_flops(gemms) * result.n_candidates / args.pop  # the mean's call is smaller
    dt = resolve_dtype(args.dtype)
    peak = gemm_peak(gemms, dt)
    gemm_s = flops_step / peak / 1e9  # the step's matmuls at the peak rate
    acts = model_activations(wm_net, imagine.reward_net, args.pop, args.particles, args.horizon)
    act_s = activation_time(acts, dt) * result.n_candidates / args.pop

    cheap_times, _, _ = time_plans(
        build_planner(args.planner, args, low, high),
        state,
        cheap_imagination(args.pop, args.particles, args.horizon, S, A),
        args.repeats,
    )
    transitions = result.n_candidates * args.particles * args.horizon
    gflops = flops_step / step_s / 1e9
    out = {
        "task": args.task,
        "planner": args.planner,
        "dtype": args.dtype,
        "pop": args.pop,
        "horizon": args.horizon,
        "iters": args.iters,
        "particles": args.particles,
        "ensemble": args.ensemble,
        "hidden": args.hidden,
        "layers": args.layers,
        "reward_hidden": args.reward_hidden,
        "reward_layers": args.reward_layers,
        "threads": torch.get_num_threads(),
        "imagination_calls": calls,
        "sequences": result.n_candidates,
        "s_per_step": round(step_s, 4),
        "s_per_step_all": [round(t, 4) for t in times],
        # On a shared machine wall time includes waiting for a core; CPU seconds per
        # thread do not (the planner keeps torch's threads busy or idle, never oversubscribed).
        "cpu_s_per_step": round(statistics.median(cpu_times), 4),
        "transitions_per_s": round(transitions / step_s),
        "model_gflop_per_step": round(flops_step / 1e9, 2),
        "gflops": round(gflops, 1),
        "gemm_peak_gflops": round(peak, 1),
        "fraction_of_gemm_peak": round(gflops / peak, 3),
        "gemm_s_per_step_at_peak": round(gemm_s, 3),
        "activation_s_per_step": round(act_s, 3),
        # The most this CPU allows with the networks' activation: all else free.
        "activation_bound_fraction": round(gemm_s / (gemm_s + act_s), 3),
        "square_gemm_gflops": round(square_gemm(dt), 1),
        "rollout_s_per_call": round(per_call["rollout_s"], 4),
        "reward_s_per_call": round(per_call["reward_s"], 4),
        "planner_overhead_s": round(statistics.median(cheap_times), 4),
        "peak_rss_gib": round(peak_rss, 3),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
