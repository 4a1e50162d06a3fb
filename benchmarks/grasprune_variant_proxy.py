"""Quick screen of GRASPrune variants on SmolLM2-135M: one budget, a few evaluation windows.

Same calibration as ``grasprune_smollm2.py`` (gates: the first 64 windows of 256 tokens of
``wiki.valid.tokens``, 2 epochs; stage B: the next 64) but perplexity on only the first
``--eval-windows`` (default 16) windows of 512 tokens of ``wiki.test.raw``: a cheap proxy to choose
which variants deserve the full benchmark. Perplexities do not depend on machine load; times do.
Each call runs one variant and appends a row to the output JSON (a list).

    python benchmarks/grasprune_variant_proxy.py reference 0.8 '{}'
    python benchmarks/grasprune_variant_proxy.py flap-init 0.8 '{"init_from": "flap"}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pruneframe.util.io import write_json_atomic
from pruneframe.architectures import discover
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.data import resolve_text, token_windows
from pruneframe.evaluation.perplexity import perplexity
from pruneframe.toolkit.gates import gated
from pruneframe.models import load_model
from pruneframe.pipeline.session import PruneSession

PROTOCOL = dict(num_sequences=64, seq_len=256, epochs=2, rescale_sequences=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", help="label of the row")
    parser.add_argument("keep", type=float)
    parser.add_argument("overrides", help="GRASPrune config overrides as JSON")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/results/grasprune_variant_proxy.json")
    args = parser.parse_args()
    overrides = json.loads(args.overrides)
    torch.manual_seed(0)
    model, tokenizer = load_model("smollm2-135m", dtype="float32")
    calib = token_windows(resolve_text("wikitext-2", split="validation"), tokenizer, 256, num_windows=128)
    evalw = token_windows(resolve_text("wikitext-2", split="test"), tokenizer, 512, num_windows=args.eval_windows)
    units = discover(model)

    def ppl(m: torch.nn.Module) -> float:
        return float(perplexity(m, evalw, batch_size=1, progress=False).ppl)

    dense = ppl(model)
    result = PruneSession(model, "grasprune", args.keep, {**PROTOCOL, **overrides}).run(CalibrationData(calib.reshape(-1), name="wiki.valid"), progress=False)
    with gated(model, units, result.mask):
        hard = ppl(model)
    folded = ppl(result.model)
    gates = result.report.method_stats["gates"]
    row = {
        "name": args.name,
        "keep": args.keep,
        "overrides": overrides,
        "eval_windows": args.eval_windows,
        "dense": dense,
        "hard": hard,
        "folded": folded,
        "folded_to_dense": folded / dense,
        "kept_fraction_of_prunable": result.report.kept_fraction_of_prunable,
        "prune_wall_s": result.report.timings.total_s,
        "gate_first_loss": gates["first_loss"],
        "gate_last_loss": gates["last_loss"],
    }
    print(json.dumps(row), flush=True)
    path = Path(args.out)
    rows = json.loads(path.read_text()) if path.exists() else []
    write_json_atomic(path, rows + [row])


if __name__ == "__main__":
    main()
