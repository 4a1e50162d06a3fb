"""One-shot methods pruned in bf16 against fp32 on SmolLM2-135M: perplexity and mask agreement.

Each method prunes the model loaded in fp32 and, separately, the model loaded in bf16 (statistics and
scores still accumulate in fp32/fp64), with the same calibration tokens (WikiText-2
``wiki.valid.tokens``, read from the start as every baseline does) and the same budget. Both pruned
models are scored in their own dtype on the same windows of WikiText-2 test and Moby-Dick's second
half; reported per source: the ratio to the dense model of the same dtype, the relative difference
of the bf16 ratio from the fp32 one, and the fraction of units on which the two masks agree.

    PRUNEFRAME_DATA_DIR=../shared/data python benchmarks/bf16_quality.py --out benchmarks/results/bf16_quality.json
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

import pruneframe
from pruneframe.util.io import write_json_atomic
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.checkpoint import software_versions
from pruneframe.data import resolve_text, token_windows
from pruneframe.models import load_model
from grasprune_domains import evaluate

SOURCES = {"wikitext-2-test": ("wikitext-2", "test"), "moby-dick-test": ("moby-dick", "test")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="flap,wanda-sp,llm-pruner")
    parser.add_argument("--budgets", default="0.8,0.5")
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/bf16_quality.json")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    _, tokenizer = load_model("smollm2-135m", dtype="float32")
    calib_src = resolve_text("wikitext-2", split="validation")
    calib = token_windows(calib_src, tokenizer, 256, num_windows=128).reshape(-1)
    evalw = {name: token_windows(resolve_text(data, split=split), tokenizer, 512, num_windows=args.eval_windows) for name, (data, split) in SOURCES.items()}
    out: dict[str, Any] = {
        "protocol": {
            "model": "smollm2-135m",
            "calibration": calib_src.origin,
            "windows": args.eval_windows,
            "seq_len": 512,
            "sources": SOURCES,
            "threads": torch.get_num_threads(),
        },
        "software": software_versions(),
        "dense": {},
        "runs": [],
    }
    for dtype in ("float32", "bfloat16"):
        model, _ = load_model("smollm2-135m", dtype=dtype)
        out["dense"][dtype] = {k: v["ppl"] for k, v in evaluate(model, evalw).items()}
        del model
    for method in args.methods.split(","):
        for keep in [float(b) for b in args.budgets.split(",")]:
            row: dict[str, Any] = {"method": method, "keep": keep}
            masks = {}
            for dtype in ("float32", "bfloat16"):
                model, _ = load_model("smollm2-135m", dtype=dtype)
                result = pruneframe.prune(model, method, keep, calibration=CalibrationData(calib, name=calib_src.origin), progress=not args.quiet, inplace=True)
                masks[dtype] = result.mask.bool().cpu()
                ppl = {k: v["ppl"] for k, v in evaluate(result.model, evalw).items()}
                row[dtype] = {"ppl": ppl, "ratio_to_dense": {k: ppl[k] / out["dense"][dtype][k] for k in ppl}}
                del result, model
            row["relative_difference_of_ratio"] = {k: row["bfloat16"]["ratio_to_dense"][k] / row["float32"]["ratio_to_dense"][k] - 1 for k in SOURCES}
            row["mask_agreement"] = float((masks["float32"] == masks["bfloat16"]).float().mean())
            out["runs"].append(row)
            write_json_atomic(args.out, out)
            print(
                f"{method} keep {keep}: "
                + ", ".join(
                    f"{k} fp32 {row['float32']['ratio_to_dense'][k]:.3f}x bf16 {row['bfloat16']['ratio_to_dense'][k]:.3f}x "
                    f"({row['relative_difference_of_ratio'][k]:+.1%})"
                    for k in SOURCES
                )
                + f"; masks agree on {row['mask_agreement']:.1%} of units",
                flush=True,
            )


if __name__ == "__main__":
    main()
