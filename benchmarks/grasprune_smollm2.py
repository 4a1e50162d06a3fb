"""GRASPrune on the embedded SmolLM2-135M: perplexity, budget, throughput and memory in one JSON.

Protocol (fixed, stamped into the output): calibration from WikiText-2 ``wiki.valid.tokens`` (gates:
the first 64 sequences of 256 tokens; stage B: the next 64), 2 epochs, keep-ratios 0.8 and 0.5 of
the prunable (FFN + attention) parameters; perplexity on ``wiki.test.raw``, the first 64
non-overlapping windows of 512 tokens, fp32, batch 1. Reported per budget and variant: the hard
mask before recalibration, the mask with scales applied as gates, the folded model; the projector
fed random scores; gate-training tokens/s next to the dense forward tokens/s measured in this run;
peak RSS during gate training next to dense evaluation at the training and evaluation lengths.

Every (budget, variant) run happens in a fresh child process, which first measures the dense
forward (tokens/s and peak RSS) and then prunes: memory freed by an earlier run stays in a
process's RSS and would inflate a later run's peak, and the throughput ratio compares two rates
measured minutes apart in the same process.

    python benchmarks/grasprune_smollm2.py --out benchmarks/results/grasprune_smollm2.json
    python benchmarks/grasprune_smollm2.py --seeds 0,1,2 --resume   # add seed 2 to the same file
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import pruneframe
from pruneframe.util.io import write_json_atomic
from pruneframe.toolkit.memory import PeakMemory
from pruneframe.architectures import discover
from pruneframe.pipeline.budget import check_meets_budget
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.checkpoint import software_versions
from pruneframe.data import resolve_text, token_windows
from pruneframe.evaluation.perplexity import perplexity
from pruneframe.toolkit.gates import gated
from pruneframe.models import load_model
from pruneframe.pipeline.session import PruneSession

VARIANTS: dict[str, dict[str, Any]] = {
    # the reference method and settings, at the benchmark's calibration size
    "reference": {},
    # documented non-default: stage B at learning rate 3e-2 instead of 1e-2 (the scales move further
    # in their 64 steps)
    "scales-lr3e-2": {"rescale_lr": 3e-2},
    # documented non-default: gate scores start at FLAP's ranks (init_spread 1.0) instead of all
    # zero, and stage B at learning rate 3e-2
    "flap-init": {"init_from": "flap", "rescale_lr": 3e-2},
    # documented non-default: the reference gates (the same mask: stage A is not rerun), and a
    # stage B that also learns one scale per hidden dimension of every down_proj / o_proj output,
    # at learning rate 3e-2
    "output-scales": {"reuse_gates": "reference", "rescale_outputs": True, "rescale_lr": 3e-2},
    # documented non-default: gate scores start at LLM-Pruner's Taylor importance, ranked within each
    # layer and kind (its uniform allocation), and the output-scales stage B
    "taylor-init": {"init_from": "llm-pruner", "init_scope": "uniform", "rescale_outputs": True, "rescale_lr": 3e-2},
    # the kept down_proj columns refit in closed form before stage B (ridge least squares to the
    # dense FFN output); on the reference gates
    "least-squares": {"reuse_gates": "reference", "least_squares": True},
    # both stages distil the dense model (KL of next-token distributions)
    # instead of fitting the calibration text
    "distill": {"loss": "distill", "rescale_loss": "distill"},
    # other documented options, not in the default run
    "distill-gates": {"loss": "distill"},
    # more steps at the same token count: each 256-token window split in two (256 steps, not 128)
    "more-steps": {"split": 2},
    "bias-comp": {"bias_compensation": True},
    "density": {"policy": "density"},
}
PROTOCOL = dict(num_sequences=64, seq_len=256, epochs=2, rescale_sequences=64)


def variant_config(name: str, protocol: dict[str, int], seed: int = 0) -> dict[str, Any]:
    """The GRASPrune config of a variant under ``protocol`` (``split`` cuts every window into parts).

    ``seed`` orders the calibration sequences (the gate scores start deterministic either way).
    """
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    over = dict(VARIANTS[name])
    over.pop("reuse_gates", None)
    split = over.pop("split", 1)
    cfg = {**protocol, **over, "seed": seed}
    if split > 1:
        cfg.update(
            seq_len=protocol["seq_len"] // split, num_sequences=protocol["num_sequences"] * split, rescale_sequences=protocol["rescale_sequences"] * split
        )
    return cfg


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


class _Inputs:
    """Model, units, calibration and evaluation windows: identical in the parent and every child."""

    def __init__(self, sequences: int, eval_windows: int) -> None:
        self.protocol = {**PROTOCOL, "num_sequences": sequences, "rescale_sequences": sequences}
        self.model, tokenizer = load_model("smollm2-135m", dtype="float32")
        self.calib_src = resolve_text("wikitext-2", split="validation")
        self.eval_src = resolve_text("wikitext-2", split="test")
        self.calib = token_windows(self.calib_src, tokenizer, PROTOCOL["seq_len"], num_windows=2 * sequences)
        self.evalw = token_windows(self.eval_src, tokenizer, 512, num_windows=eval_windows)
        self.units = discover(self.model)


def _scores_file(scores_dir: Path, keep: float, name: str, seed: int) -> Path:
    return scores_dir / f"scores-{keep}-{name}-{seed}.pt"


def run_one(inputs: _Inputs, keep: float, name: str, seed: int, progress: bool, scores_dir: Path) -> dict[str, Any]:
    """Dense forward rate and memory, then GRASPrune ``name`` at ``keep``, in this (fresh) process.

    The dense forward rate is measured on 8 windows right before pruning and again right after it, in
    the same process; the throughput ratio uses their mean, so a slow or fast
    spell of the machine does not land on one side of the ratio only.

    A variant with ``reuse_gates`` takes the gate scores that variant saved in ``scores_dir`` (same
    budget and seed) and runs only projection, stage B and the fold: a paired comparison on one mask.
    """
    model, units, evalw = inputs.model, inputs.units, inputs.evalw
    rate_before, mem256 = _forward_rate(model, inputs.calib[:8])
    with PeakMemory() as mem512:
        _ppl(model, evalw[:4])
    cfg = variant_config(name, inputs.protocol, seed)
    calibration = CalibrationData(inputs.calib.reshape(-1), name=inputs.calib_src.origin)
    source = VARIANTS[name].get("reuse_gates")
    scores = torch.load(_scores_file(scores_dir, keep, source, seed)) if source else None
    result = PruneSession(model, "grasprune", keep, cfg).run(calibration, progress=progress, scores=scores)
    torch.save(result.scores, _scores_file(scores_dir, keep, name, seed))
    rate_after, _ = _forward_rate(model, inputs.calib[:8])
    rate256 = (rate_before + rate_after) / 2
    rep = result.report
    check_meets_budget(result.mask, units.cost, rep.budget_prunable_params, units.groups, units.default_minimum())
    gates = rep.method_stats.get("gates")  # None when the gates were reused
    steps_ok = None if gates is None else all(c <= rep.budget_prunable_params for c in gates["kept_cost_per_step"])
    with gated(model, units, result.mask):
        hard_ppl = _ppl(model, evalw)
    few = evalw[:8]
    with gated(model, units, result.mask, result.recalibration):
        gated_few = _ppl(model, few)
    folded_few = _ppl(result.model, few)
    folded_ppl = _ppl(result.model, evalw)
    rescale = dict(rep.method_stats.get("rescale", {}))
    rescale.pop("kept_cost_per_step", None)
    row: dict[str, Any] = {
        "variant": name,
        "seed": seed,
        "keep": keep,
        "config": rep.config,
        "gates_from": source or name,
        "budget_prunable_params": rep.budget_prunable_params,
        "kept_prunable_params": rep.kept_prunable_params,
        "kept_fraction_of_prunable": rep.kept_fraction_of_prunable,
        "kept_params": rep.kept_params,
        "budget_met_every_step": steps_ok,
        "ppl_hard_mask": hard_ppl,
        "ppl_folded": folded_ppl,
        "ppl_gated_scaled_first8": gated_few,
        "ppl_folded_first8": folded_few,
        "dense_forward_tokens_per_s_256": rate256,
        "dense_forward_tokens_per_s_256_before_after": [rate_before, rate_after],
        "rescale": rescale,
        "prune_wall_s": rep.timings.total_s,
        "peak_rss_prune": rep.memory.model_dump(),
        "peak_rss_dense_forward_256": mem256,
        "peak_rss_dense_eval_512": mem512.report.as_dict(),
        "widths": result.units.widths(result.mask),
    }
    if gates is not None:
        peak = gates["peak_rss_bytes"]
        row.update(
            {
                "gate_first_loss": gates["first_loss"],
                "gate_last_loss": gates["last_loss"],
                "gate_tokens_per_s": gates["tokens_per_second"],
                "gate_to_dense_forward_throughput": gates["tokens_per_second"] / rate256,
                "peak_rss_gate_training_bytes": peak,
                "peak_rss_gate_training_over_dense_forward_256": peak / mem256["peak_rss_bytes"],
                "peak_rss_gate_training_over_dense_eval_512": peak / mem512.report.peak_rss,
            }
        )
    return row


def _child(args: argparse.Namespace, keep: float, name: str, seed: int, scratch: Path) -> dict[str, Any]:
    """Run one (budget, variant, seed) in a fresh interpreter and read back its JSON."""
    out = scratch / f"run-{keep}-{name}-{seed}.json"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        f"{keep}:{name}:{seed}",
        "--out",
        str(out),
        "--scores-dir",
        str(scratch),
        "--sequences",
        str(args.sequences),
        "--eval-windows",
        str(args.eval_windows),
    ]
    if args.quiet:
        cmd.append("--quiet")
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise SystemExit(f"run keep={keep} variant={name} seed={seed} failed with exit code {done.returncode}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="0.8,0.5")
    parser.add_argument("--variants", default="reference,output-scales")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; every (budget, variant) runs once per seed")
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/grasprune_smollm2.json")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --out (same protocol) and run only the missing (budget, variant, seed)")
    parser.add_argument("--sequences", type=int, default=PROTOCOL["num_sequences"], help="smoke runs only: fewer calibration sequences")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # KEEP:VARIANT:SEED, run by the parent
    parser.add_argument("--scores-dir", default=None, help=argparse.SUPPRESS)  # where children leave their gate scores
    args = parser.parse_args()
    torch.manual_seed(0)
    names = args.variants.split(",")
    for i, name in enumerate(names):
        variant_config(name, PROTOCOL)  # unknown names fail before any work
        source = VARIANTS[name].get("reuse_gates")
        if source and source not in names[:i]:
            raise SystemExit(f"variant {name!r} reuses the gates of {source!r}: list {source!r} before it in --variants")
    inputs = _Inputs(args.sequences, args.eval_windows)
    if args.child is not None:
        keep, name, seed = args.child.split(":")
        write_json_atomic(args.out, run_one(inputs, float(keep), name, int(seed), not args.quiet, Path(args.scores_dir)))
        return

    units = inputs.units
    out: dict[str, Any] = {
        "protocol": {
            "model": "smollm2-135m (SmolLM2-135M-Instruct Q4_1 GGUF dequantised to fp32)",
            "calibration": {
                "source": inputs.calib_src.origin,
                "fingerprint": inputs.calib_src.fingerprint,
                **inputs.protocol,
                "gate_windows": "0-63",
                "rescale_windows": "64-127",
            },
            "evaluation": {
                "source": inputs.eval_src.origin,
                "fingerprint": inputs.eval_src.fingerprint,
                "seq_len": 512,
                "windows": args.eval_windows,
                "non_overlapping": True,
                "dtype": "float32",
                "batch_size": 1,
            },
            "threads": torch.get_num_threads(),
            "process": "one fresh process per (budget, variant, seed): dense forward rate and memory, then pruning",
            "seeds": [int(s) for s in args.seeds.split(",")],
            "variants": {name: variant_config(name, inputs.protocol) for name in args.variants.split(",")},
        },
        "software": software_versions(),
        "dense": {},
        "runs": [],
    }
    previous = _previous_runs(Path(args.out), out["protocol"]) if args.resume else None
    if previous is not None:
        out["dense"], out["runs"] = previous["dense"], previous["runs"]
        out["protocol"]["seeds"] = sorted({*out["protocol"]["seeds"], *previous["protocol"]["seeds"]})
        out["protocol"]["variants"] = {**previous["protocol"]["variants"], **out["protocol"]["variants"]}
        print(f"resuming: {len(out['runs'])} runs kept from {args.out}", flush=True)
    else:
        dense_ppl = _ppl(inputs.model, inputs.evalw)
        out["dense"] = {"ppl": dense_ppl, "params": units.total_params, "prunable_params": units.prunable_params}
    dense_ppl = out["dense"]["ppl"]
    print(f"dense ppl {dense_ppl:.2f}", flush=True)
    budgets = [float(b) for b in args.budgets.split(",")]
    random_ppl = {r["keep"]: r["ppl_random_mask"] for r in out["runs"]}
    for keep in budgets:
        if keep not in random_ppl:
            g = torch.Generator().manual_seed(0)
            rand_mask = pruneframe.budget.project(torch.rand(len(units), generator=g), units.cost, int(keep * units.prunable_params), groups=units.groups)
            with gated(inputs.model, units, rand_mask):
                random_ppl[keep] = _ppl(inputs.model, inputs.evalw)
        print(f"keep {keep}: random-score mask ppl {random_ppl[keep]:.2f}", flush=True)
    del inputs
    done = {(r["keep"], r["variant"], r["seed"]) for r in out["runs"]}
    with tempfile.TemporaryDirectory(prefix="grasprune-bench-") as scratch:
        for keep in budgets:
            for name, seed in [(n, int(s)) for n in args.variants.split(",") for s in args.seeds.split(",")]:
                if (keep, name, seed) in done:
                    continue
                if VARIANTS[name].get("reuse_gates") and (keep, VARIANTS[name]["reuse_gates"], seed) in done:
                    raise SystemExit(f"{name} seed {seed} at keep {keep} reuses gates that a previous run did not keep; rerun without --resume")
                run = _child(args, keep, name, seed, Path(scratch))
                run.update(
                    ppl_random_mask=random_ppl[keep], ratio_folded_to_dense=run["ppl_folded"] / dense_ppl, ratio_hard_to_dense=run["ppl_hard_mask"] / dense_ppl
                )
                out["runs"].append(run)
                gate = (
                    f"gate {run['gate_tokens_per_s']:.0f} tok/s ({run['gate_to_dense_forward_throughput']:.3f}x) "
                    f"rss {run['peak_rss_gate_training_over_dense_eval_512']:.2f}x eval@512"
                    if "gate_tokens_per_s" in run
                    else f"gates of {run['gates_from']}"
                )
                print(
                    f"keep {keep} {name} seed {seed}: hard {run['ppl_hard_mask']:.2f} folded {run['ppl_folded']:.2f} "
                    f"({run['ratio_folded_to_dense']:.2f}x) kept {run['kept_fraction_of_prunable']:.4f} {gate}",
                    flush=True,
                )
                write_json_atomic(args.out, out)
    out["summary"] = summarise(out["runs"])
    for row in out["summary"]:
        ratio = row["ratio_folded_to_dense"]
        rate = row.get("gate_to_dense_forward_throughput")
        print(
            f"keep {row['keep']} {row['variant']} over seeds {row['seeds']}: folded/dense mean {ratio['mean']:.2f}x "
            f"[{ratio['min']:.2f}, {ratio['max']:.2f}]" + (f", throughput mean {rate['mean']:.3f}x" if rate else ""),
            flush=True,
        )
    write_json_atomic(args.out, out)


def _previous_runs(path: Path, protocol: dict[str, Any]) -> dict[str, Any] | None:
    """The results already in ``path`` when they were measured under the same data and evaluation, else None."""
    if not path.exists():
        return None
    previous = json.loads(path.read_text())
    for key in ("calibration", "evaluation", "model"):
        if previous["protocol"].get(key) != protocol[key]:
            raise SystemExit(f"--resume: {path} was measured with a different {key}; choose another --out")
    return previous


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (budget, variant): mean, min and max over seeds of the headline ratios."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["keep"], run["variant"]), []).append(run)
    keys = ("ratio_folded_to_dense", "ratio_hard_to_dense", "gate_to_dense_forward_throughput", "peak_rss_gate_training_over_dense_eval_512")
    out = []
    for (keep, name), rows in groups.items():
        row: dict[str, Any] = {"keep": keep, "variant": name, "seeds": [r["seed"] for r in rows]}
        for k in keys:
            values = [r[k] for r in rows if k in r]
            if values:
                row[k] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
        out.append(row)
    return out


if __name__ == "__main__":
    main()
