"""GRASPrune on the embedded SmolLM2-135M: perplexity, budget, throughput and memory in one JSON.

Protocol (fixed, stamped into the output): calibration from WikiText-2 ``wiki.valid.tokens`` (gates:
the first 64 sequences of 256 tokens; stage B: the next 64), 2 epochs, keep-ratios 0.8 and 0.5 of
the prunable (FFN + attention) parameters; perplexity on ``wiki.test.raw``, the first 64
non-overlapping windows of 512 tokens, fp32, batch 1. Reported per budget and variant: the hard
mask before recalibration, the mask with scales applied as gates, the folded model; the projector
fed random scores; gate-training tokens/s next to the dense forward tokens/s measured in this run;
peak RSS during gate training next to dense evaluation at the training and evaluation lengths.

    python benchmarks/grasprune_smollm2.py --out benchmarks/results/grasprune_smollm2.json
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

import torch

import pruneframe
from pruneframe._io import write_json_atomic
from pruneframe._memory import PeakMemory
from pruneframe.architectures.llama import discover
from pruneframe.budget import check_meets_budget
from pruneframe.calibration import CalibrationData
from pruneframe.checkpoint import software_versions
from pruneframe.data import resolve_text, token_windows
from pruneframe.evaluation.perplexity import perplexity
from pruneframe.gates import gated
from pruneframe.models import load_model

VARIANTS: dict[str, dict[str, Any]] = {
    # the reference method and settings, at the benchmark's calibration size
    "reference": {},
    # documented non-default: stage B at learning rate 3e-2 instead of 1e-2 (the scales move further
    # in their 64 steps)
    "scales-lr3e-2": {"rescale_lr": 3e-2},
    # other documented options, not in the default run
    "bias-comp": {"bias_compensation": True},
    "density": {"policy": "density"},
}
PROTOCOL = dict(num_sequences=64, seq_len=256, epochs=2, rescale_sequences=64)


def _ppl(model: torch.nn.Module, windows: torch.Tensor) -> float:
    return float(perplexity(model, windows, batch_size=1, progress=False).ppl)


def _forward_rate(model: torch.nn.Module, windows: torch.Tensor) -> tuple[float, dict]:
    """Dense forward-only tokens/s and peak RSS over ``windows`` (batch 1, no grad)."""
    with torch.inference_mode():
        model(windows[:1], use_cache=False)  # warm-up
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            for row in windows:
                model(row[None], use_cache=False)
            dt = time.perf_counter() - t0
    return windows.numel() / dt, mem.report.as_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="0.8,0.5")
    parser.add_argument("--variants", default="reference,scales-lr3e-2")
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/grasprune_smollm2.json")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--sequences", type=int, default=PROTOCOL["num_sequences"], help="smoke runs only: fewer calibration sequences")
    args = parser.parse_args()
    torch.manual_seed(0)
    PROTOCOL.update(num_sequences=args.sequences, rescale_sequences=args.sequences)

    model, tokenizer = load_model("smollm2-135m", dtype="float32")
    calib_src = resolve_text("wikitext-2", split="validation")
    eval_src = resolve_text("wikitext-2", split="test")
    calib = token_windows(calib_src, tokenizer, PROTOCOL["seq_len"], num_windows=2 * PROTOCOL["num_sequences"])
    evalw = token_windows(eval_src, tokenizer, 512, num_windows=args.eval_windows)
    units = discover(model)
    out: dict[str, Any] = {
        "protocol": {
            "model": "smollm2-135m (SmolLM2-135M-Instruct Q4_1 GGUF dequantised to fp32)",
            "calibration": {"source": calib_src.origin, "fingerprint": calib_src.fingerprint, **PROTOCOL,
                            "gate_windows": "0-63", "rescale_windows": "64-127"},
            "evaluation": {"source": eval_src.origin, "fingerprint": eval_src.fingerprint, "seq_len": 512,
                           "windows": args.eval_windows, "non_overlapping": True, "dtype": "float32", "batch_size": 1},
            "threads": torch.get_num_threads(),
        },
        "software": software_versions(),
        "dense": {},
        "runs": [],
    }
    rate256, mem256 = _forward_rate(model, calib[:8])
    t0 = time.perf_counter()
    with PeakMemory() as mem512:
        dense_ppl = _ppl(model, evalw)
    eval_s = time.perf_counter() - t0
    out["dense"] = {
        "ppl": dense_ppl, "params": units.total_params, "prunable_params": units.prunable_params,
        "forward_tokens_per_s_256": rate256, "eval_tokens_per_s_512": evalw.numel() / eval_s,
        "peak_rss_forward_256": mem256, "peak_rss_eval_512": mem512.report.as_dict(),
    }
    print(f"dense ppl {dense_ppl:.2f}  forward {rate256:.0f} tok/s @256", flush=True)

    for keep in [float(b) for b in args.budgets.split(",")]:
        g = torch.Generator().manual_seed(0)
        target = int(keep * units.prunable_params)
        rand_mask = pruneframe.budget.project(torch.rand(len(units), generator=g), units.cost, target, groups=units.groups)
        with gated(model, units, rand_mask):
            rand_ppl = _ppl(model, evalw)
        print(f"keep {keep}: random-score mask ppl {rand_ppl:.2f}", flush=True)
        for name in args.variants.split(","):
            cfg = {**PROTOCOL, **VARIANTS[name]}
            calibration = CalibrationData(calib.reshape(-1), name=calib_src.origin)
            gc.collect()
            rate_now, _ = _forward_rate(model, calib[:4])  # dense forward rate right before, same conditions
            t0 = time.perf_counter()
            with PeakMemory() as mem:
                result = pruneframe.prune(model, "grasprune", keep, calibration=calibration, config=cfg, progress=not args.quiet)
            wall = time.perf_counter() - t0
            rep = result.report
            check_meets_budget(result.mask, units.cost, rep["budget_prunable_params"], units.groups, units.default_minimum())
            steps_ok = all(c <= rep["budget_prunable_params"] for c in rep["method_stats"]["gates"]["kept_cost_per_step"])
            with gated(model, units, result.mask):
                hard_ppl = _ppl(model, evalw)
            few = evalw[:8]
            with gated(model, units, result.mask, result.recalibration):
                gated_few = _ppl(model, few)
            folded_few = _ppl(result.model, few)
            folded_ppl = _ppl(result.model, evalw)
            gates = rep["method_stats"]["gates"]
            run = {
                "variant": name, "keep": keep, "config": rep["config"],
                "budget_prunable_params": rep["budget_prunable_params"],
                "kept_prunable_params": rep["kept_prunable_params"],
                "kept_fraction_of_prunable": rep["kept_fraction_of_prunable"],
                "kept_params": rep["kept_params"], "budget_met_every_step": steps_ok,
                "ppl_random_mask": rand_ppl, "ppl_hard_mask": hard_ppl, "ppl_folded": folded_ppl,
                "ratio_folded_to_dense": folded_ppl / dense_ppl,
                "ppl_gated_scaled_first8": gated_few, "ppl_folded_first8": folded_few,
                "gate_first_loss": gates["first_loss"], "gate_last_loss": gates["last_loss"],
                "gate_tokens_per_s": gates["tokens_per_second"],
                "dense_forward_tokens_per_s_before": rate_now,
                "gate_to_dense_forward_throughput": gates["tokens_per_second"] / rate_now,
                "rescale": rep["method_stats"].get("rescale", {}),
                "prune_wall_s": wall, "peak_rss_prune": mem.report.as_dict(),
                "peak_rss_gate_training_bytes": gates["peak_rss_bytes"],
                "peak_rss_gate_training_over_dense_eval_512": gates["peak_rss_bytes"] / mem512.report.peak_rss,
                "peak_rss_gate_training_over_dense_forward_256": gates["peak_rss_bytes"] / mem256["peak_rss_bytes"],
                "widths": result.units.widths(result.mask),
            }
            run["rescale"].pop("kept_cost_per_step", None)
            out["runs"].append(run)
            print(
                f"keep {keep} {name}: hard {hard_ppl:.2f} folded {folded_ppl:.2f} ({folded_ppl / dense_ppl:.2f}x) "
                f"kept {rep['kept_fraction_of_prunable']:.4f} gate {gates['tokens_per_second']:.0f} tok/s "
                f"({run['gate_to_dense_forward_throughput']:.2f}x) rss {run['peak_rss_gate_training_over_dense_forward_256']:.2f}x",
                flush=True,
            )
            del result
            write_json_atomic(args.out, out)
    write_json_atomic(args.out, out)


if __name__ == "__main__":
    main()
