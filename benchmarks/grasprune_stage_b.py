"""GRASPrune stage-B (recalibration) settings compared on one fixed stage-A mask, SmolLM2-135M.

Stage A runs once with the GRASPrune benchmark's protocol (first 64 sequences of 256 tokens of
``wiki.valid.tokens``, 2 epochs); every stage-B setting then recalibrates that same mask on the next
64 sequences, and the mask with its scales (and biases) applied as gates is evaluated on the first
``--eval-windows`` windows of 512 tokens of ``wiki.test.raw`` (a quick proxy: 16 by default, not the
64 of the main benchmark). Used to choose the non-default variant of ``grasprune_smollm2.py``.

    python benchmarks/grasprune_stage_b.py --keep 0.5 --save-mask /tmp/mask-0.5.pt --out benchmarks/results/grasprune_stage_b_keep0.5.json
    python benchmarks/grasprune_stage_b.py --keep 0.5 --mask /tmp/mask-0.5.pt --settings '[{"rescale_outputs": true}]'
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from pruneframe.util.io import write_json_atomic
from pruneframe.architectures import discover
from pruneframe.pipeline.budget import make_budget, resolve
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.checkpoint import software_versions
from pruneframe.data import resolve_text, token_windows
from pruneframe.evaluation.perplexity import perplexity
from pruneframe.toolkit.gates import gated
from pruneframe.pipeline.host import PluginHost
from pruneframe.pipeline.methods import ScoringContext
from pruneframe.models import load_model
from pruneframe_grasprune.plugin import GRASPrune

PROTOCOL = dict(num_sequences=64, seq_len=256, epochs=2, rescale_sequences=64)
SETTINGS = [
    {},
    {"bias_compensation": True},
    {"rescale_epochs": 2},
    {"rescale_lr": 3e-2},
    {"rescale_lr": 5e-2, "rescale_alpha": 1.0},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--settings", default=None, help="JSON list of stage-B config overrides (default: the built-in list)")
    parser.add_argument("--out", default="benchmarks/results/grasprune_stage_b.json")
    parser.add_argument("--mask", default=None, help="load the stage-A mask from this file (torch.save of a bool tensor) instead of training it")
    parser.add_argument("--save-mask", default=None, help="save the stage-A mask to this file")
    args = parser.parse_args()
    settings = json.loads(args.settings) if args.settings else SETTINGS
    model, tokenizer = load_model("smollm2-135m", dtype="float32")
    units = discover(model)
    calib_src = resolve_text("wikitext-2", split="validation")
    eval_src = resolve_text("wikitext-2", split="test")
    calib = token_windows(calib_src, tokenizer, PROTOCOL["seq_len"], num_windows=2 * PROTOCOL["num_sequences"])
    evalw = token_windows(eval_src, tokenizer, 512, num_windows=args.eval_windows)
    host = PluginHost.create()

    def ppl() -> float:
        return float(perplexity(model, evalw, batch_size=1, progress=False).ppl)

    def context_for(method: GRASPrune) -> ScoringContext:
        minimum = method.minimum(units)
        target = resolve(make_budget(args.keep, "prunable"), units, minimum)

        def project(scores: torch.Tensor) -> torch.Tensor:
            return host.project(scores.detach().float().cpu(), units, target, minimum, method.config.policy, method.config.scope)

        return ScoringContext(
            model=model,
            units=units,
            calibration=CalibrationData(calib.reshape(-1), name=calib_src.origin),
            budget=target,
            minimum=minimum,
            project=project,
            progress=False,
        )

    out: dict[str, Any] = {
        "protocol": {
            "keep": args.keep,
            **PROTOCOL,
            "calibration": calib_src.origin,
            "evaluation": eval_src.origin,
            "eval_windows": args.eval_windows,
            "eval_seq_len": 512,
            "dtype": "float32",
        },
        "software": software_versions(),
        "dense_ppl": ppl(),
        "runs": [],
    }
    if args.mask:
        mask = torch.load(args.mask)
        out["stage_a_mask"] = args.mask
    else:
        method = GRASPrune(PROTOCOL)
        context = context_for(method)
        t0 = time.perf_counter()
        mask = context.project(method.score(context))
        out["stage_a_seconds"] = time.perf_counter() - t0
        if args.save_mask:
            torch.save(mask, args.save_mask)
    with gated(model, units, mask):
        out["hard_mask_ppl"] = ppl()
    print(f"keep {args.keep}: dense {out['dense_ppl']:.2f}, hard mask {out['hard_mask_ppl']:.2f}", flush=True)
    for overrides in settings:
        method = GRASPrune({**PROTOCOL, **overrides})
        t0 = time.perf_counter()
        recalibration = method.recalibrate(context_for(method), mask)
        seconds = time.perf_counter() - t0
        with gated(model, units, mask, recalibration):
            value = ppl()
        out["runs"].append({"overrides": overrides, "ppl": value, "ratio_to_dense": value / out["dense_ppl"], "seconds": seconds})
        print(f"  stage B {json.dumps(overrides)}: {value:.2f} ({value / out['dense_ppl']:.2f}x dense)", flush=True)
        write_json_atomic(args.out, out)
    write_json_atomic(args.out, out)


if __name__ == "__main__":
    main()
