"""GRASPrune variants and the baselines across domains: choose on development text, report on test text.

Every method is calibrated on WikiText-2 ``wiki.valid.tokens`` exactly as in
``benchmarks/grasprune_smollm2.py`` (GRASPrune: gates on the first 64 sequences of 256 tokens, 2
epochs; stage B on the next 64; the baselines cut their default windows from token 0), then scored
on four sources, the same windows for every model:

- development text, used to choose a configuration:
  ``wiki-valid-heldout`` (``wiki.valid.tokens`` after the 32,768 tokens any method reads: the
  calibration domain's held-back part), ``moby-dick-dev`` (the first half of ``literature/moby_dick.txt``,
  English prose far from Wikipedia) and ``python-docs-dev`` (the embedded Python documentation,
  calibration half, which no method here reads);
- test text, reported and never used for a choice: ``wikitext-2-test`` (``wiki.test.raw``),
  ``moby-dick-test`` (Moby-Dick's second half) and ``python-docs-test`` (the embedded test half), the
  sources ``pruneframe compare`` reports.

The selection rule is fixed before any run: the configuration with the lowest geometric mean of the
ratio to dense over the two out-of-domain development sources (``moby-dick``, ``python-docs``) is the
recommended one; the held-back in-domain source breaks ties and is reported beside it. Per-window
summed NLLs are stored, so paired bootstrap intervals can be recomputed from the JSON.

    python benchmarks/grasprune_domains.py --budgets 0.8,0.5 --runs reference,distill,taylor-init,flap,llm-pruner

Runs are appended to ``--out`` as they finish (an interrupted job is resumed with the same command).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from statistics import geometric_mean
from typing import Any

import torch

import pruneframe
from pruneframe.util.io import write_json_atomic
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.checkpoint import software_versions
from pruneframe.data import resolve_text, token_windows
from pruneframe.data.sources import data_dir
from pruneframe.evaluation import perplexity
from pruneframe.models import load_model

#: GRASPrune's benchmark protocol (see grasprune_smollm2.py), shared by every GRASPrune variant.
PROTOCOL = dict(num_sequences=64, seq_len=256, epochs=2, rescale_sequences=64)
#: Tokens of wiki.valid.tokens that some method reads (GRASPrune: 128 sequences of 256).
CALIBRATION_TOKENS = 128 * 256

RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "reference": ("grasprune", {**PROTOCOL}),
    "distill": ("grasprune", {**PROTOCOL, "loss": "distill", "rescale_loss": "distill"}),
    "taylor-init": ("grasprune", {**PROTOCOL, "init_from": "llm-pruner", "init_scope": "uniform", "rescale_outputs": True, "rescale_lr": 3e-2}),
    "taylor-init-distill": ("grasprune", {**PROTOCOL, "init_from": "llm-pruner", "init_scope": "uniform", "loss": "distill", "rescale_loss": "distill"}),
    "distill-no-rescale": ("grasprune", {**PROTOCOL, "loss": "distill", "rescale": False}),
    "flap": ("flap", {}),
    "llm-pruner": ("llm-pruner", {}),
    "wanda-sp": ("wanda-sp", {}),
}
DEV_OOD = ("moby-dick-dev", "python-docs-dev")
TEST_OOD = ("moby-dick-test", "python-docs-test")


def sources() -> dict[str, tuple[str, Any]]:
    """Name -> (role, TextSource and window offset) of every evaluation source."""
    root = data_dir()
    if root is None:
        raise SystemExit("set PRUNEFRAME_DATA_DIR to the shared data folder")
    offset = math.ceil(CALIBRATION_TOKENS / 512)
    return {
        "wiki-valid-heldout": ("dev, in-domain", resolve_text("wikitext-2", split="validation"), offset),
        "moby-dick-dev": ("dev, out-of-domain", resolve_text("moby-dick", split="validation"), 0),
        "python-docs-dev": ("dev, out-of-domain", resolve_text("embedded", split="calibration"), 0),
        "wikitext-2-test": ("test, in-domain", resolve_text("wikitext-2", split="test"), 0),
        "moby-dick-test": ("test, out-of-domain", resolve_text("moby-dick", split="test"), 0),
        "python-docs-test": ("test, out-of-domain", resolve_text("embedded", split="test"), 0),
    }


def evaluate(model: torch.nn.Module, evalw: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Per source: per-window NLL sums and the perplexity over all windows."""
    scores = {name: perplexity(model, windows, progress=False) for name, windows in evalw.items()}
    return {name: {"ppl": r.ppl, "window_nll": list(r.window_nll)} for name, r in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="0.8,0.5")
    parser.add_argument("--runs", default="reference,distill,taylor-init,flap,llm-pruner,wanda-sp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-windows", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/results/grasprune_domains.json")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    names = args.runs.split(",")
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; choose from {sorted(RUNS)}")
    model, tokenizer = load_model("smollm2-135m", dtype="float32")
    calib_src = resolve_text("wikitext-2", split="validation")
    calib = token_windows(calib_src, tokenizer, 256, num_windows=128)
    src = sources()
    evalw = {name: token_windows(s, tokenizer, 512, num_windows=args.eval_windows, offset_windows=off) for name, (_, s, off) in src.items()}
    protocol = {
        "model": "smollm2-135m (fp32)",
        "calibration": {"source": calib_src.origin, "tokens_used_at_most": CALIBRATION_TOKENS},
        "evaluation": {
            name: {
                "role": role,
                "origin": s.origin,
                "split": s.split,
                "fingerprint": s.fingerprint,
                "offset_windows": off,
                "windows": args.eval_windows,
                "seq_len": 512,
            }
            for name, (role, s, off) in src.items()
        },
        "selection_rule": "lowest geometric mean ratio to dense over " + ", ".join(DEV_OOD),
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "software": software_versions(),
    }
    path = Path(args.out)
    out: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if out and out.get("protocol", {}).get("evaluation") != protocol["evaluation"]:
        raise SystemExit(f"{path} was measured with another evaluation protocol; choose another --out")
    out.setdefault("protocol", protocol)
    out.setdefault("runs", [])
    if "dense" not in out:
        out["dense"] = evaluate(model, evalw)
        write_json_atomic(path, out)
    print("dense " + " ".join(f"{k} {v['ppl']:.2f}" for k, v in out["dense"].items()), flush=True)
    done = {(r["keep"], r["run"]) for r in out["runs"]}
    del model
    for name in names:
        for keep in [float(b) for b in args.budgets.split(",")]:
            if (keep, name) in done:
                continue
            method, config = RUNS[name]
            model, _ = load_model("smollm2-135m", dtype="float32")
            torch.manual_seed(args.seed)
            start = time.perf_counter()
            result = pruneframe.prune(
                model,
                method,
                keep,
                calibration=CalibrationData(calib.reshape(-1), name=calib_src.origin),
                config={**config, "seed": args.seed},
                progress=not args.quiet,
                inplace=True,
            )
            wall = time.perf_counter() - start
            scores = evaluate(result.model, evalw)
            ratios = {k: v["ppl"] / out["dense"][k]["ppl"] for k, v in scores.items()}
            row = {
                "run": name,
                "method": method,
                "config": config,
                "keep": keep,
                "prune_wall_s": wall,
                "kept_prunable_params": result.report.kept_prunable_params,
                "budget_prunable_params": result.report.budget_prunable_params,
                "eval": scores,
                "ratio_to_dense": ratios,
                "dev_ood_geomean": geometric_mean(ratios[k] for k in DEV_OOD),
                "test_ood_geomean": geometric_mean(ratios[k] for k in TEST_OOD),
            }
            out["runs"].append(row)
            write_json_atomic(path, out)
            print(
                f"keep {keep} {name}: "
                + " ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
                + f" | dev OOD geomean {row['dev_ood_geomean']:.2f}x, test OOD {row['test_ood_geomean']:.2f}x ({wall:.0f} s)",
                flush=True,
            )
            del result, model


if __name__ == "__main__":
    main()
