"""The baseline methods on the embedded SmolLM2-135M: perplexity, prune time, memory and size in one JSON.

Protocol (the GRASPrune benchmark's, stamped into the output): calibration text WikiText-2
``wiki.valid.tokens`` from ``$PRUNEFRAME_DATA_DIR`` (default: the shared data folder), tokenized
once and handed to every method as one stream, from which each method cuts its own default windows
(llm-pruner 10 x 64, wanda-sp and flap 64 x 128); keep-ratios 0.8 and 0.5 of the prunable
(FFN + attention) parameters; perplexity on ``wiki.test.raw``, the first 64 non-overlapping windows
of 512 tokens, fp32, batch 1. Every method runs with its default config (the papers' settings).
Reported per method and budget: folded-model perplexity (and its ratio to the dense one measured in
this run), prune wall time and the core's stage timings, peak RSS while pruning, kept parameters,
per-layer widths and the method's own statistics.

    python benchmarks/baselines_smollm2.py --out benchmarks/results/baselines_smollm2.json
    python benchmarks/baselines_smollm2.py --eval-windows 2 --methods magnitude,random --budgets 0.8  # smoke
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

import torch

from pruneframe.util.io import write_json_atomic
from pruneframe.toolkit.memory import PeakMemory, peak_rss_bytes
from pruneframe.architectures import discover
from pruneframe.pipeline.budget import check_meets_budget
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.checkpoint import software_versions
from pruneframe.data import resolve_text, token_windows
from pruneframe.evaluation.perplexity import perplexity
from pruneframe.pipeline.host import PluginHost
from pruneframe.models import load_model
from pruneframe.pipeline.session import PruneSession

METHODS = ("magnitude", "llm-pruner", "wanda-sp", "flap", "random")
CALIBRATION_SEQ_LEN = 128  # the stream is cut into whole windows of this length before concatenation
EVAL_SEQ_LEN = 512


def _ppl(model: torch.nn.Module, windows: torch.Tensor) -> float:
    return float(perplexity(model, windows, batch_size=1, progress=False).ppl)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated method names")
    parser.add_argument("--budgets", default="0.8,0.5", help="comma-separated keep-ratios of prunable params")
    parser.add_argument("--eval-windows", type=int, default=64, help="WikiText-2 test windows of 512 tokens")
    parser.add_argument("--out", default="benchmarks/results/baselines_smollm2.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    methods, budgets = _csv(args.methods), [float(b) for b in _csv(args.budgets)]
    host = PluginHost.create()
    unknown = [m for m in methods if m not in host.methods()]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; installed: {sorted(host.methods())}")
    torch.manual_seed(0)

    model, tokenizer = load_model("smollm2-135m", dtype="float32")
    calib_src = resolve_text("wikitext-2", split="validation")
    eval_src = resolve_text("wikitext-2", split="test")
    stream = token_windows(calib_src, tokenizer, CALIBRATION_SEQ_LEN).reshape(-1)
    evalw = token_windows(eval_src, tokenizer, EVAL_SEQ_LEN, num_windows=args.eval_windows)
    units = discover(model)
    out: dict[str, Any] = {
        "protocol": {
            "model": "smollm2-135m (SmolLM2-135M-Instruct Q4_1 GGUF dequantised to fp32)",
            "budget_kind": "prunable",
            "calibration": {
                "source": calib_src.origin,
                "fingerprint": calib_src.fingerprint,
                "stream_tokens": int(stream.numel()),
                "windows": "each method's defaults, from token 0",
            },
            "evaluation": {
                "source": eval_src.origin,
                "fingerprint": eval_src.fingerprint,
                "seq_len": EVAL_SEQ_LEN,
                "windows": args.eval_windows,
                "non_overlapping": True,
                "dtype": "float32",
                "batch_size": 1,
            },
            "threads": torch.get_num_threads(),
        },
        "software": software_versions(),
        "dense": {},
        "runs": [],
    }
    t0 = time.perf_counter()
    with PeakMemory() as mem_eval:
        dense_ppl = _ppl(model, evalw)
    out["dense"] = {
        "ppl": dense_ppl,
        "params": units.total_params,
        "prunable_params": units.prunable_params,
        "eval_s": time.perf_counter() - t0,
        "peak_rss_eval": mem_eval.report.as_dict(),
    }
    print(f"dense ppl {dense_ppl:.3f} ({units.total_params:,} params)", flush=True)

    for keep in budgets:
        for name in methods:
            calibration = CalibrationData(stream, name=calib_src.origin)
            gc.collect()
            session = PruneSession(model, name, keep, budget_kind="prunable", host=host)
            result = session.run(calibration, progress=not args.quiet)
            rep = result.report
            check_meets_budget(result.mask, units.cost, rep.budget_prunable_params, units.groups, session.minimum)
            params = sum(p.numel() for p in result.model.parameters())
            ppl = _ppl(result.model, evalw)
            run = {
                "method": name,
                "keep": keep,
                "config": rep.config,
                "ppl": ppl,
                "ratio_to_dense": ppl / dense_ppl,
                "prune_wall_s": rep.timings.total_s,
                "timings_s": rep.timings.model_dump(),
                "peak_rss_prune": rep.memory.model_dump(),
                "budget_prunable_params": rep.budget_prunable_params,
                "kept_prunable_params": rep.kept_prunable_params,
                "kept_fraction_of_prunable": rep.kept_fraction_of_prunable,
                "kept_params": params,
                "kept_fraction_of_total": params / units.total_params,
                "added_bias_params": rep.added_params,
                "calibration_tokens_read": rep.calibration_tokens,
                "method_stats": rep.method_stats,
                "widths": units.widths(result.mask),
            }
            out["runs"].append(run)
            print(
                f"keep {keep} {name}: ppl {ppl:.3f} ({ppl / dense_ppl:.2f}x dense) prune {rep.timings.total_s:.1f}s "
                f"peak rss {rep.memory.peak_rss_bytes / 2**20:.0f} MiB kept {params:,} params",
                flush=True,
            )
            del result
            out["process_peak_rss_bytes"] = peak_rss_bytes()
            write_json_atomic(args.out, out)
    out["process_peak_rss_bytes"] = peak_rss_bytes()
    write_json_atomic(args.out, out)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
