"""The main comparison's methods on SmolLM2-135M on an accelerator, against the same run on the CPU.

For every method: prune the embedded ``smollm2-135m`` (``--dtype``, default bfloat16) to keep
``--keep`` of its prunable parameters once on the CPU and once on ``--device``, same seed and the
same calibration tokens (the embedded text). Recorded per method: score time and calibration tokens
per second on each device, peak device memory of the device run (``torch.cuda.max_memory_allocated``),
and how the two keep masks agree (identical, fraction of units decided alike, kept cost of each).
bf16 kernels differ between devices, so masks may differ at the budget's edge; the agreement says
by how much. Writes one JSON file (``--out``).

Usage: ``python benchmarks/device_methods.py --device cuda [--methods magnitude,wanda-sp] [--out FILE]``
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

import pruneframe
from pruneframe._io import write_json_atomic
from pruneframe.data import calibration_data
from pruneframe.models import load_model

METHODS = ("magnitude", "llm-pruner", "wanda-sp", "flap", "random")


def run(model: torch.nn.Module, method: str, keep: float, calibration, device: str) -> dict:  # noqa: ANN001
    """Prune a copy of ``model`` on ``device``; return the mask and the measurements."""
    work = copy.deepcopy(model).to(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = pruneframe.prune(work, method, keep, calibration=calibration, config={"seed": 0}, progress=False,
                              inplace=True)
    if cuda:
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    report = result.report
    tokens = report.method_stats.get("calibration_tokens")
    score_s = report.timings.score_s
    return {
        "mask": result.mask.cpu(), "prune_s": wall, "score_s": score_s, "calibration_tokens": tokens,
        "calibration_tokens_per_s": tokens / score_s if tokens else None,
        "kept_prunable_params": report.kept_prunable_params,
        "peak_device_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
    }


def main() -> None:
    """Both runs per method; print one line each; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--calib-tokens", type=int, default=20_000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model, tokenizer = load_model("smollm2-135m", dtype=args.dtype)
    calibration = calibration_data("embedded", tokenizer, max_tokens=args.calib_tokens)
    rows = []
    for method in [m for m in args.methods.split(",") if m]:
        row: dict = {"method": method}
        try:
            cpu = run(model, method, args.keep, calibration, "cpu")
            dev = run(model, method, args.keep, calibration, args.device)
        except Exception as exc:  # noqa: BLE001 - one method's failure is a result, not the end of the check
            row["error"] = f"{type(exc).__name__}: {exc}"
            print(f"{method:>10}: FAILED {row['error']}", flush=True)
            rows.append(row)
            continue
        same = cpu["mask"] == dev["mask"]
        row |= {
            "masks_identical": bool(same.all()), "mask_agreement": float(same.float().mean()),
            "cpu": {k: v for k, v in cpu.items() if k != "mask"}, "device": {k: v for k, v in dev.items() if k != "mask"},
        }
        rows.append(row)
        rate = dev["calibration_tokens_per_s"]
        peak = dev["peak_device_bytes"]
        print(f"{method:>10}: {args.device} score {dev['score_s']:6.2f} s (cpu {cpu['score_s']:6.2f} s), "
              f"{'-' if rate is None else f'{rate:9.0f} tok/s'}, peak device "
              f"{'-' if peak is None else f'{peak / 2**30:.2f} GiB'}, masks identical {row['masks_identical']} "
              f"(agreement {row['mask_agreement']:.4%})", flush=True)
    write_json_atomic(args.out, {"model": "smollm2-135m", "dtype": args.dtype, "device": args.device, "keep": args.keep,
                                 "calibration": {"source": "embedded", "tokens": len(calibration)}, "rows": rows})


if __name__ == "__main__":
    main()
