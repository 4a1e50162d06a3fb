"""SmolLM2-135M pruned by the one-shot methods at keep 0.8 and 0.5, exported to GGUF and timed in llama.cpp.

Writes ``benchmarks/results/llamacpp_speed.json``: one row per (model, method, budget, dtype) with the
export's architecture, its check against transformers, prefill tokens/s (256- and 512-token prompts),
decode tokens/s (64 tokens), batch 1, 1 thread, dense and pruned alternating, each model's fastest of
the repeats, ``prefill_speedup`` / ``decode_speedup`` over the dense model exported in llama.cpp's own
``llama`` architecture in the same type, and ``ideal_speedup`` (FLOPs for prefill, weight bytes per
decoded token for decode). Run it alone on the machine (timings), e.g.::

    flock /tmp/pruneframe-heavy.lock .venv/bin/python benchmarks/llamacpp_speed.py --methods magnitude,wanda-sp
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import pruneframe
from pruneframe._io import write_json_atomic
from pruneframe.data import calibration_data
from pruneframe.evaluation.speed import ideal_speedup, model_flops_per_token
from pruneframe.export import export_gguf
from pruneframe.export.speed import measure_llamacpp_speed, weight_bytes_per_token
from pruneframe.export.verify import verify_gguf
from pruneframe.models import load_model

OUT = Path(__file__).parent / "results" / "llamacpp_speed.json"


def main() -> None:
    """Prune, export, verify and time every (method, budget, dtype); write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="llm-pruner,wanda-sp,flap,magnitude")
    parser.add_argument("--budgets", default="0.8,0.5")
    parser.add_argument("--dtypes", default="f16,q8_0")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="llamacpp-speed-") as tmp:
        dense, tokenizer = load_model("smollm2-135m", dtype="float32", device="cpu")
        calibration = calibration_data("wikitext-2", tokenizer)
        dense_files = {d: export_gguf(dense, Path(tmp) / f"dense-{d}.gguf", d, tokenizer=tokenizer) for d in args.dtypes.split(",")}
        for method in args.methods.split(","):
            for budget in (float(b) for b in args.budgets.split(",")):
                model, _ = load_model("smollm2-135m", dtype="float32", device="cpu")
                result = pruneframe.prune(model, method=method, budget=budget, calibration=calibration, progress=False)
                for dtype, dense_export in dense_files.items():
                    out = export_gguf(result.model, Path(tmp) / f"{method}-{budget}-{dtype}.gguf", dtype, tokenizer=tokenizer)
                    check = verify_gguf(out.path, result.model, tokenizer, dtype)
                    speeds = measure_llamacpp_speed({"dense": dense_export.path, "pruned": out.path},
                                                    int(dense.config.vocab_size), repeats=args.repeats)
                    d, p = speeds["dense"], speeds["pruned"]
                    rows.append({
                        "model": "smollm2-135m", "method": method, "budget": budget, "dtype": dtype,
                        "arch": out.plan.arch, "dense_arch": dense_export.plan.arch, "notes": list(out.plan.notes),
                        "kept_params": result.report.kept_params, "verify": check.to_dict(),
                        "verify_passed": check.passed(),
                        "dense": d.to_dict(), "pruned": p.to_dict(),
                        "prefill_speedup": {str(n): p.prefill_tokens_per_s[n] / d.prefill_tokens_per_s[n] for n in (256, 512)},
                        "decode_speedup": p.decode_tokens_per_s / d.decode_tokens_per_s,
                        "ideal_speedup": {
                            "prefill": ideal_speedup(model_flops_per_token(dense, 256), model_flops_per_token(result.model, 256)),
                            "decode": weight_bytes_per_token(dense_export.path) / weight_bytes_per_token(out.path),
                        },
                    })
                    print(json.dumps({k: rows[-1][k] for k in ("method", "budget", "dtype", "arch", "prefill_speedup",
                                                                "decode_speedup", "ideal_speedup")}), flush=True)
    write_json_atomic(args.out, {"protocol": {"threads": 1, "batch": 1, "repeats": args.repeats, "statistic": "min",
                                              "prefill_lens": [256, 512], "decode_tokens": 64,
                                              "machine": platform.processor() or platform.machine()},
                                 "rows": rows})


if __name__ == "__main__":
    main()
