"""The gradient methods with their backward passes streamed one decoder layer at a time, against the whole-model path.

For each gradient method (llm-pruner, and GRASPrune on a short schedule) and each mode (``whole``: the
model runs where it is; ``streamed``: ``offload: cpu``, each decoder layer in turn on the compute
device, see :func:`pruneframe.toolkit.streaming.streamed_backward`), one prune of a random-weight bf16 model
of a named shape (no downloads). Recorded per run: score-stage and total seconds, peak memory of the
compute device where torch tracks it (CUDA), and per method how far the streamed scores and mask are
from the whole-model ones. Times are meant as ratios within one run of this script.

    python benchmarks/streamed_gradients.py --shape 135m --out benchmarks/results/streamed_gradients_135m.json
    python benchmarks/streamed_gradients.py --shape 1b --device cuda   # weights on the CPU, layers on the GPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from scale import SHAPES, build  # noqa: E402 - the benchmark's shared model shapes

import pruneframe  # noqa: E402
from pruneframe.util.io import write_json_atomic  # noqa: E402
from pruneframe.checkpoint import software_versions  # noqa: E402

#: method -> settings shared by both modes (GRASPrune: a short schedule; time per step is what matters)
METHODS: dict[str, dict[str, Any]] = {
    "llm-pruner": {},
    "grasprune": {"num_sequences": 8, "seq_len": 128, "epochs": 1, "rescale_sequences": 4},
}


def run(shape: str, method: str, streamed: bool, device: str, calibration: torch.Tensor, budget: float) -> dict[str, Any]:
    """One prune; the model lives on ``device`` (whole) or on the CPU with layers streamed to ``device``."""
    model = build(shape)
    config = dict(METHODS[method])
    if streamed:
        config.update(offload="cpu", compute_device=device)
    else:
        model.to(device)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    result = pruneframe.prune(model, method, budget, calibration=calibration, config=config, progress=False, inplace=True)
    report = result.report
    return {
        "method": method,
        "mode": "streamed" if streamed else "whole",
        "config": config,
        "score_s": report.timings.score_s,
        "total_s": report.timings.total_s,
        "peak_device_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "kept_prunable_params": report.kept_prunable_params,
        "budget_prunable_params": report.budget_prunable_params,
        "scores": result.scores,
        "mask": result.mask,
    }


def main() -> None:
    """Run every method in both modes and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="135m")
    parser.add_argument("--device", default="cpu", help="the compute device (whole: the model's; streamed: the layers')")
    parser.add_argument("--budget", type=float, default=0.8)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/streamed_gradients.json"))
    args = parser.parse_args()
    calibration = torch.randint(0, 49152, (64 * 256,), generator=torch.Generator().manual_seed(0))
    rows = []
    for method in args.methods.split(","):
        whole = run(args.shape, method, False, args.device, calibration, args.budget)
        streamed = run(args.shape, method, True, args.device, calibration, args.budget)
        rel = ((streamed["scores"] - whole["scores"]).abs().max() / whole["scores"].abs().max()).item()
        agreement = (streamed["mask"] == whole["mask"]).float().mean().item()
        for row in (whole, streamed):
            row.pop("scores"), row.pop("mask")
        rows.append(
            {
                "method": method,
                "whole": whole,
                "streamed": streamed,
                "streamed_over_whole_score_time": streamed["score_s"] / whole["score_s"],
                "max_score_difference_relative": rel,
                "mask_agreement": agreement,
            }
        )
        print(
            f"{method}: score {whole['score_s']:.1f} s whole, {streamed['score_s']:.1f} s streamed "
            f"({rows[-1]['streamed_over_whole_score_time']:.2f}x); scores within {rel:.1e} relative; "
            f"masks agree on {agreement:.2%}",
            flush=True,
        )
    write_json_atomic(
        args.out,
        {"shape": args.shape, "device": args.device, "budget": args.budget, "threads": torch.get_num_threads(), "software": software_versions(), "rows": rows},
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
