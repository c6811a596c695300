"""Experiment 7: planner throughput against this machine's GEMM peak.

Runs ``benchmarks/planner.py`` (PETS HalfCheetah shape: 400 sequences x 30 steps x 20
particles, 5 imagination calls per step; the agent's whole imagination at the configured
sizes: world model 5 elites x 4 x 200, reward ensemble and constraint classifier 5 x 2 x 64,
the task's constraint set; untrained weights) one configuration at a time -- timings, so
never two at once -- for CEM in float32, CEM in bfloat16, and MCTS in float32 at CEM's
number of model calls, all on one torch thread. Measured: seconds per planning step, imagined
transitions per second, model GFLOP/s and their fraction of the GEMM peak (the same
matmuls in the same dtype and shapes run back to back, best of 10), the hidden
activations (SiLU) alone and the bound they put on that fraction, the planner's own
overhead, and peak memory.

Anchor: Chua et al. 2018 (PETS sizes); the planner should spend its time in the
models' matmuls, so the fraction of the GEMM peak says how much is left to gain, up
to the bound: SiLU is a separate pass (~0.5 ns per element on one AVX-512 core) that
does not get faster with the GEMMs, and where bfloat16 matmuls run on AMX tiles it
costs as much as they do.

Budget: ~1.5 min (float32) + ~4 min (bfloat16, ~5x slower GEMMs on this CPU) +
~1.5 min (MCTS) on a 2-core CPU, ~7 min in all; ``--smoke`` uses tiny sizes.

    python benchmarks/exp7_throughput.py [--threads 1] [--repeats 5] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import sweep as sw

STEM = "exp7_throughput"
SCRIPT = Path(__file__).resolve().parent / "planner.py"
CONFIGS = {  # name -> planner.py arguments
    "CEM float32": ["--dtype", "float32"],
    "CEM bfloat16": ["--dtype", "bfloat16"],
    "MCTS float32": ["--planner", "mcts", "--dtype", "float32"],
}
SMOKE_SIZES = [
    "--pop", "40", "--elites", "4", "--horizon", "5", "--iters", "2", "--particles", "4",
    "--hidden", "32", "--layers", "2", "--reward-hidden", "32", "--reward-layers", "2",
]  # fmt: skip


def command(name: str, args: argparse.Namespace) -> list[str]:
    out = [sys.executable, str(SCRIPT), *CONFIGS[name], "--threads", str(args.threads)]
    out += ["--repeats", str(1 if args.smoke else args.repeats)]
    return out + (SMOKE_SIZES if args.smoke else [])


def run(name: str, args: argparse.Namespace) -> dict:
    cmd = command(name, args)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=sw.REPO)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{name}: `{shlex.join(cmd)}` exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{name}: `{shlex.join(cmd)}` printed no JSON line:\n{proc.stdout}")
    result = json.loads(lines[-1])
    print(f"{name}: {time.monotonic() - t0:.0f} s, {json.dumps(result)}", flush=True)
    return result


def table(results: dict[str, dict]) -> str:
    rows = [
        [
            name,
            f"{r['s_per_step']:.3f}",
            f"{r['cpu_s_per_step']:.3f}",
            f"{r['transitions_per_s']:,}",
            f"{r['gflops']:.1f}",
            f"{r['gemm_peak_gflops']:.1f}",
            f"{r['fraction_of_gemm_peak']:.3f}",
            f"{r['activation_s_per_step']:.2f}",
            f"{r['activation_bound_fraction']:.3f}",
            f"{r['square_gemm_gflops']:.1f}",
            f"{r['planner_overhead_s']:.4f}",
            f"{r['peak_rss_gib']:.2f}",
        ]
        for name, r in results.items()
    ]
    header = [
        "planner, dtype",
        "s per step (wall)",
        "CPU s per step",
        "imagined transitions / s",
        "model GFLOP/s",
        "GEMM peak GFLOP/s (same shapes)",
        "fraction of peak",
        "SiLU alone s per step",
        "bound: GEMM / (GEMM + SiLU)",
        "square GEMM GFLOP/s",
        "planner overhead s",
        "peak RSS GiB",
    ]
    return sw.markdown_table(header, rows)


def figure(results: dict[str, dict]):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = np.arange(len(results))
    reached = [r["gflops"] for r in results.values()]
    peak = [r["gemm_peak_gflops"] for r in results.values()]
    ax.bar(x - 0.2, reached, 0.4, label="planning (model FLOPs / wall s)")
    ax.bar(x + 0.2, peak, 0.4, label="GEMM peak, same matmuls back to back")
    for i, r in enumerate(results.values()):
        ax.text(i - 0.2, reached[i], f"{r['fraction_of_gemm_peak']:.2f}", ha="center", va="bottom")
        bound = r["activation_bound_fraction"] * peak[i]
        ax.hlines(bound, i - 0.4, i + 0.4, colors="k", linestyles="dashed")
    ax.plot([], [], "k--", label="bound: the GEMMs at peak plus the SiLU passes alone")
    ax.set_xticks(x, list(results))
    ax.set_ylabel("GFLOP/s")
    ax.set_title("planner throughput against the GEMM peak (labels: fraction of peak)")
    ax.set_ylim(0, max(peak) * 1.35)  # room for the legend above the bars
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads of planner.py")
    p.add_argument("--repeats", type=int, default=5, help="timed planning steps per config")
    p.add_argument("--root", type=Path, default=None, help="where --smoke writes its outputs")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    args = p.parse_args()
    started = time.monotonic()
    results = {name: run(name, args) for name in CONFIGS}
    root = Path(args.root or (sw.SMOKE_ROOT if args.smoke else sw.DEFAULT_ROOT)).resolve()
    budget = (
        "smoke sizes (40 sequences x 5 steps x 4 particles, 32-unit models), one timed step"
        if args.smoke
        else f"PETS HalfCheetah sizes, {args.repeats} timed steps per configuration, "
        f"{args.threads} thread(s)"
    )
    sw.publish(
        sw.output_dir(root, args.smoke),
        STEM,
        title="Experiment 7: planner throughput against the GEMM peak",
        intro=(
            "Seconds per planning step and model FLOP rate of CEM (float32, bfloat16) and "
            "MCTS at CEM's number of model calls, against the same matmuls run back to back. "
            "Raw output of each run:\n\n```json\n"
            + "\n".join(json.dumps(r) for r in results.values())
            + "\n```"
        ),
        budget=budget,
        table=table(results),
        commands=[
            f"python benchmarks/{STEM}.py",
            *(
                shlex.join(["python", str(SCRIPT.relative_to(sw.REPO)), *command(n, args)[2:]])
                for n in CONFIGS
            ),
        ],
        figure=figure(results),
        started=started,
        wall_note="one configuration at a time",
    )


if __name__ == "__main__":
    main()
