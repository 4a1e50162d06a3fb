"""GRASPrune gate training in bf16 against fp32 on SmolLM2-135M: tokens per second, measured in one run.

One process holds the model twice, once per dtype (frozen backbone in that dtype; gate scores, the
straight-through mask and the loss in fp32, as GRASPrune trains them), and times a gate-training step
(SDPA attention, the lean cross-entropy the loops use; optionally the ``distill`` objective) in each
dtype in turn, ``--reps`` times, so slow phases of a shared machine hit both alike. Reported: median
tokens/s per dtype and their ratio.

    python benchmarks/bf16_gate_speed.py --out benchmarks/results/bf16_gate_speed.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from pruneframe.util.io import write_json_atomic
from pruneframe.checkpoint import software_versions
from gate_step_cost import GateStepSetup

DTYPES = ("float32", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=8, help="interleaved repetitions")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--losses", default="lean,distill", help="comma-separated: lean (the default objective), distill")
    parser.add_argument("--out", default="benchmarks/results/bf16_gate_speed.json")
    args = parser.parse_args()
    losses = args.losses.split(",")
    setups = {dtype: GateStepSetup(args.seq_len, dtype) for dtype in DTYPES}
    for dtype, setup in setups.items():  # warm-up
        for loss in losses:
            setup.step("sdpa", loss)
    seconds: dict[str, list[float]] = {f"{dtype}/{loss}": [] for dtype in DTYPES for loss in losses}
    for _ in range(args.reps):
        for dtype, setup in setups.items():
            for loss in losses:
                start = time.perf_counter()
                setup.step("sdpa", loss)
                seconds[f"{dtype}/{loss}"].append(time.perf_counter() - start)
    out: dict[str, Any] = {
        "protocol": {
            "model": "smollm2-135m",
            "seq_len": args.seq_len,
            "batch_size": 1,
            "reps": args.reps,
            "attention": "sdpa",
            "threads": torch.get_num_threads(),
            "step": "gates on every unit carrying a keep-0.8 mask, forward, backward to the fp32 gate scores",
            "timing": "dtypes interleaved in one process, medians",
        },
        "software": software_versions(),
        "seconds": seconds,
        "losses": {},
    }
    for loss in losses:
        rate = {dtype: args.seq_len / statistics.median(seconds[f"{dtype}/{loss}"]) for dtype in DTYPES}
        out["losses"][loss] = {"tokens_per_s": rate, "bf16_over_fp32": rate["bfloat16"] / rate["float32"]}
        print(f"{loss}: fp32 {rate['float32']:.0f} tok/s, bf16 {rate['bfloat16']:.0f} tok/s, ratio {rate['bfloat16'] / rate['float32']:.2f}x", flush=True)
    write_json_atomic(args.out, out)


if __name__ == "__main__":
    main()
