"""Prefill speed of pruned SmolLM2-135M with and without hardware-friendly widths (``round_to``).

The embedded ``smollm2-135m`` is pruned to keep ``--keep`` of its prunable parameters by one method
(magnitude by default: no calibration data needed) twice, with ``round_to`` unset and with
``round_to`` = ``--round-to`` (every layer keeps a multiple of that many FFN channels). The dense
model and both pruned models are then timed on the same random prompts (``--prompt-lens``), one
prefill forward each, interleaved and in alternating order for ``--reps`` rounds; the quoted ratio
is the rounded model's prefill tokens/s over the unrounded one's, medians of the same run (also
from process CPU time, steadier than wall time on a shared machine).
Writes ``benchmarks/results/prefill_rounding.json``.

Usage: ``python benchmarks/prefill_rounding.py [--method magnitude] [--keep 0.5] [--round-to 64] [--reps 10] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import pruneframe
from pruneframe.util.io import write_json_atomic
from pruneframe.evaluation.speed import time_generation
from pruneframe.models import load_model

RESULT = Path(__file__).resolve().parent / "results" / "prefill_rounding.json"


def main() -> None:
    """Prune twice, time the prefills interleaved, print and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="magnitude")
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--round-to", type=int, default=64)
    parser.add_argument("--prompt-lens", default="256,512")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dense, _ = load_model("smollm2-135m", dtype=args.dtype)
    models = {"dense": dense}
    widths = {}
    for label, round_to in (("unrounded", None), (f"round_to_{args.round_to}", args.round_to)):
        result = pruneframe.prune(dense, args.method, args.keep, config={"round_to": round_to}, progress=False)
        models[label] = result.model.eval()
        widths[label] = {
            "ffn_channels": [w["ffn_channels"] for w in result.units.widths(result.mask)],
            "kv_groups": [w["kv_groups"] for w in result.units.widths(result.mask)],
            "kept_params": result.report.kept_params,
            "kept_fraction_of_prunable": result.report.kept_fraction_of_prunable,
        }
        print(
            f"{label}: kept {result.report.kept_fraction_of_prunable:.4%} of prunable; FFN widths {sorted(set(widths[label]['ffn_channels']))[:8]}...",
            flush=True,
        )
    labels = list(models)
    lens = [int(x) for x in args.prompt_lens.split(",")]
    times: dict[tuple[str, int], list[float]] = {(m, n): [] for m in labels for n in lens}
    cpu: dict[tuple[str, int], list[float]] = {(m, n): [] for m in labels for n in lens}
    prompts = {n: torch.randint(0, dense.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(n)) for n in lens}
    with torch.inference_mode():
        for n in lens:  # warm-up
            for m in labels:
                time_generation(models[m], prompts[n], 0)
        for rep in range(args.reps):
            for n in lens:
                for m in labels if rep % 2 == 0 else labels[::-1]:
                    start = time.process_time()
                    times[(m, n)].append(time_generation(models[m], prompts[n], 0)[0])
                    cpu[(m, n)].append(time.process_time() - start)
    rows = []
    rounded = labels[2]
    for n in lens:
        median = {m: statistics.median(times[(m, n)]) for m in labels}
        cpu_median = {m: statistics.median(cpu[(m, n)]) for m in labels}
        row = {
            "prompt_len": n,
            **{f"{m}_prefill_tokens_per_s": n / median[m] for m in labels},
            **{f"{m}_prefill_cpu_s": cpu_median[m] for m in labels},
            "rounded_over_unrounded": median["unrounded"] / median[rounded],
            "rounded_over_unrounded_cpu_time": cpu_median["unrounded"] / cpu_median[rounded],
            "unrounded_over_dense": median["dense"] / median["unrounded"],
            "rounded_over_dense": median["dense"] / median[rounded],
        }
        rows.append(row)
        print(
            f"prompt {n}: "
            + ", ".join(f"{m} {n / median[m]:.0f} tok/s" for m in labels)
            + f"; rounded / unrounded = {row['rounded_over_unrounded']:.3f} (wall), "
            f"{row['rounded_over_unrounded_cpu_time']:.3f} (CPU time)",
            flush=True,
        )
    write_json_atomic(
        args.out,
        {
            "benchmark": "prefill_rounding",
            "model": "smollm2-135m",
            "dtype": args.dtype,
            "method": args.method,
            "keep_prunable": args.keep,
            "round_to": args.round_to,
            "reps": args.reps,
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "load_avg_1min_at_end": os.getloadavg()[0],
            "widths": widths,
            "rows": rows,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
