"""Time of one budget projection (:func:`pruneframe.pipeline.projection.project`) at LLM unit counts.

Unit sets shaped like Llama models, built from their layer shapes alone (no weights): 1B-like
(16 layers x 8,192 FFN channels + 8 KV groups), 7B-like (32 x 11,008 + 32: 353,280 units), 13B-like
(40 x 13,824 + 40) and 70B-like (80 x 28,672 + 8: 2,294,400 units), costs as in the real models
(FFN channel 3d, KV group (2G + 2) * head_dim * d). Random float32 scores, budget half the prunable
parameters, every policy x scope, without rounding and with ``round_to`` 64 on the FFN channels.
Each projection is timed ``--reps`` times after one warm-up (the tie-break order is cached across
calls, as in a training loop); the median and minimum wall time and the median process CPU time
are recorded, with torch's thread count and the load average, and per size the CPU time of one stable
sort of that many int64 keys and one gather of that many indices (the bulk work of a projection) (on a shared machine the wall time
grows with the load; CPU time much less). Writes ``benchmarks/results/projector_speed.json``.

Usage: ``python benchmarks/projector_speed.py [--sizes 7b,70b] [--reps 7] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from pruneframe.util.io import write_json_atomic
from pruneframe.pipeline.projection import project

RESULT = Path(__file__).resolve().parent / "results" / "projector_speed.json"

#: name -> (layers, hidden, FFN channels, query heads, KV heads, head_dim)
SHAPES = {
    "1b": (16, 2048, 8192, 32, 8, 64),
    "7b": (32, 4096, 11008, 32, 32, 128),
    "13b": (40, 5120, 13824, 40, 40, 128),
    "70b": (80, 8192, 28672, 64, 8, 128),
}
POLICIES = ("rank", "density", "optimal")
SCOPES = ("global", "uniform")


def unit_set(name: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Costs, groups (2 per layer: FFN, KV) and the number of layers of a model shape."""
    layers, d, ffn, q, kv, hd = SHAPES[name]
    ffn_cost, kv_cost = 3 * d, (2 * (q // kv) + 2) * hd * d
    per_layer = torch.cat([torch.zeros(ffn, dtype=torch.long), torch.ones(kv, dtype=torch.long)])
    groups = (2 * torch.arange(layers)[:, None] + per_layer[None]).flatten()
    costs = torch.where(groups % 2 == 0, ffn_cost, kv_cost).long()
    return costs, groups, layers


def time_projection(scores: torch.Tensor, costs: torch.Tensor, groups: torch.Tensor, budget: int, reps: int, **kwargs) -> dict[str, float]:
    """Median / min wall ms and median CPU ms of ``reps`` projections after a warm-up."""
    project(scores, costs, budget, groups=groups, **kwargs)
    wall, cpu = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        project(scores, costs, budget, groups=groups, **kwargs)
        wall.append(1e3 * (time.perf_counter() - w))
        cpu.append(1e3 * (time.process_time() - c))
    return {"wall_ms_median": statistics.median(wall), "wall_ms_min": min(wall), "cpu_ms_median": statistics.median(cpu)}


def time_primitives(n: int, reps: int) -> dict[str, float]:
    """Median CPU ms of the projector's two bulk primitives at ``n`` units: one stable sort of random
    int64 keys (the packed group/score keys of a walk) and one gather of ``n`` int64 indices."""
    g = torch.Generator().manual_seed(1)
    keys = torch.randint(0, 2**62, (n,), generator=g)
    perm = torch.randperm(n, generator=g)
    out = {}
    for name, fn in (("sort_ms", lambda: torch.sort(keys, stable=True)), ("gather_ms", lambda: perm.index_select(0, perm))):
        fn()
        times = []
        for _ in range(reps):
            c = time.process_time()
            fn()
            times.append(1e3 * (time.process_time() - c))
        out[name] = statistics.median(times)
    return out


def main() -> None:
    """Measure, print and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1b,7b,13b,70b", help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--round-to", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {', '.join(SHAPES)}")
    rows, primitives = [], {}
    for name in sizes:
        costs, groups, layers = unit_set(name)
        primitives[name] = {"units": costs.numel(), **time_primitives(costs.numel(), args.reps)}
        scores = torch.rand(costs.numel(), generator=torch.Generator().manual_seed(0))
        budget = int(costs.sum()) // 2
        rounding = torch.tensor([args.round_to, 1] * layers)
        for policy in POLICIES:
            for scope in SCOPES:
                for round_to in (None, args.round_to):
                    load = os.getloadavg()[0]
                    t = time_projection(scores, costs, groups, budget, args.reps, policy=policy, scope=scope, round_to=None if round_to is None else rounding)
                    row = {"size": name, "units": costs.numel(), "policy": policy, "scope": scope, "round_to": round_to, "load_avg_1min": load, **t}
                    rows.append(row)
                    print(
                        f"{name:>4} {costs.numel():>9,} units {policy:>8} {scope:>8} round_to={str(round_to):>4}: "
                        f"wall median {t['wall_ms_median']:7.1f} ms (min {t['wall_ms_min']:7.1f}), "
                        f"cpu {t['cpu_ms_median']:7.1f} ms  [load {load:.1f}]",
                        flush=True,
                    )
    result = {
        "benchmark": "projector_speed",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "reps": args.reps,
        "budget": "half of the prunable parameters",
        "rows": rows,
        "primitives": primitives,
    }
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
