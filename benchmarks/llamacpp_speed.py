"""SmolLM2-135M pruned by the one-shot methods at keep 0.8 and 0.5, exported to GGUF and timed in llama.cpp.

Writes ``benchmarks/results/llamacpp_speed.json``: one row per (model, method, budget, dtype, round_to)
with the export's architecture, its check against transformers (and the dense export's own check in the
same type, ``dense_verify``), prefill tokens/s (256- and 512-token
prompts), decode tokens/s (64 tokens), batch 1, 1 thread, dense and pruned alternating, each model's
fastest of the repeats, ``prefill_speedup`` / ``decode_speedup`` over the dense model exported in
llama.cpp's own ``llama`` architecture in the same type, and ``ideal_speedup`` (FLOPs for prefill,
bytes of weights read per decoded token for decode, both dense over pruned). ``--round-to 32,64,128``
adds rows for ``--round-to-method`` at keep 0.5 pruned with that ``round_to``. ``--dense-as-deci`` adds
a diagnostic row per type (method ``dense-as-deci``, keep 1.0): the dense model itself written as ``deci``
(the architecture uneven widths need) against the same model as ``llama``, that is the cost of the
architecture alone.

The file is rewritten after every row, and rows already in ``--out`` are kept and skipped, so an
interrupted run resumes. ``--checkpoints DIR`` keeps the pruned checkpoints there (and reuses them).
Run it alone on the machine (timings), e.g.::

    flock /tmp/pruneframe-heavy.lock .venv/bin/python benchmarks/llamacpp_speed.py --methods magnitude,wanda-sp
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path
from typing import Any

import pruneframe
from pruneframe.util.io import write_json_atomic
from pruneframe.data import calibration_data
from pruneframe.evaluation.speed import ideal_speedup, model_flops_per_token
from pruneframe.export import export_gguf
from pruneframe.export.speed import measure_llamacpp_speed, weight_bytes_per_token
from pruneframe.export.verify import verify_gguf
from pruneframe.models import load_model

OUT = Path(__file__).parent / "results" / "llamacpp_speed.json"
MODEL = "smollm2-135m"
PREFILL_LENS = (256, 512)
DECODE_TOKENS = 64


def _key(row: dict[str, Any]) -> tuple:
    return row["model"], row["method"], row["budget"], row["dtype"], row.get("round_to")


def _pruned(method: str, budget: float, round_to: int | None, calibration: Any, checkpoints: Path | None) -> Any:
    """The pruned model: loaded from ``checkpoints`` when it holds it, else pruned (and saved there)."""
    import pruneframe.checkpoint as checkpoint

    name = f"{method}-{budget}" + (f"-r{round_to}" if round_to else "")
    folder = checkpoints / name if checkpoints else None
    if folder is not None and (folder / "config.json").exists():
        return load_model(str(folder), dtype="float32", device="cpu")[0]
    model, tokenizer = load_model(MODEL, dtype="float32", device="cpu")
    config = {"round_to": round_to} if round_to else None
    result = pruneframe.prune(model, method=method, budget=budget, calibration=calibration, config=config, progress=False)
    if folder is not None:
        checkpoint.save(folder, result.model, result.report, tokenizer=tokenizer)
    return result.model


def _export_as_deci(model: Any, out: Path, dtype: str, tokenizer: Any) -> Any:
    """``model`` (uniform widths) written as ``deci`` instead of its own architecture: the dense diagnostic row."""
    from dataclasses import replace

    from pruneframe.export.gguf_export import ExportResult
    from pruneframe.export.plan import plan_export
    from pruneframe.export.writer import write_gguf

    plan = replace(plan_export(model, dtype), arch="deci")
    path = write_gguf(out, model, tokenizer, plan, dtype, f"{MODEL} as deci")
    return ExportResult(path, plan, path.stat().st_size)


def main() -> None:
    """Prune, export, verify and time every (method, budget, dtype[, round_to]); write the JSON after each row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="llm-pruner,wanda-sp,flap,magnitude")
    parser.add_argument("--budgets", default="0.8,0.5")
    parser.add_argument("--dtypes", default="f16,q8_0")
    parser.add_argument("--round-to", default="", help="comma-separated round_to values for the extra rows")
    parser.add_argument("--round-to-method", default="llm-pruner")
    parser.add_argument("--round-to-budget", type=float, default=0.5)
    parser.add_argument("--dense-as-deci", action="store_true", help="add the dense model written as deci")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoints", type=Path, default=None, help="folder to keep / reuse pruned checkpoints")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    dtypes = args.dtypes.split(",")
    jobs = [(m, float(b), None) for m in args.methods.split(",") if m for b in args.budgets.split(",") if b]
    jobs += [(args.round_to_method, args.round_to_budget, int(r)) for r in args.round_to.split(",") if r]
    jobs += [("dense-as-deci", 1.0, None)] if args.dense_as_deci else []
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    rows: list[dict[str, Any]] = list(previous.get("rows", []))
    done = {_key(r) for r in rows}
    # repeats are per row (rows["dense"]["repeats"]): a resumed run may use another number
    protocol = {
        "threads": 1,
        "batch": 1,
        "statistic": "fastest repeat (max tokens/s)",
        "prefill_lens": list(PREFILL_LENS),
        "decode_tokens": DECODE_TOKENS,
        "machine": platform.processor() or platform.machine(),
    }
    with tempfile.TemporaryDirectory(prefix="llamacpp-speed-") as tmp:
        dense, tokenizer = load_model(MODEL, dtype="float32", device="cpu")
        calibration = calibration_data("wikitext-2", tokenizer)
        dense_files = {d: export_gguf(dense, Path(tmp) / f"dense-{d}.gguf", d, tokenizer=tokenizer) for d in dtypes}
        dense_checks: dict[str, Any] = {}
        for method, budget, round_to in jobs:
            todo = [d for d in dtypes if (MODEL, method, budget, d, round_to) not in done]
            if not todo:
                continue
            as_deci = method == "dense-as-deci"
            model = dense if as_deci else _pruned(method, budget, round_to, calibration, args.checkpoints)
            for dtype in todo:
                dense_export = dense_files[dtype]
                target = Path(tmp) / f"{method}-{budget}-{round_to}-{dtype}.gguf"
                out = _export_as_deci(model, target, dtype, tokenizer) if as_deci else export_gguf(model, target, dtype, tokenizer=tokenizer)
                check = verify_gguf(out.path, model, tokenizer, dtype)
                if dtype not in dense_checks:  # the dense file's own agreement: what the type costs before pruning
                    dense_checks[dtype] = verify_gguf(dense_export.path, dense, tokenizer, dtype).to_dict()
                speeds = measure_llamacpp_speed(
                    {"dense": dense_export.path, "pruned": out.path}, int(dense.config.vocab_size), PREFILL_LENS, DECODE_TOKENS, repeats=args.repeats
                )
                d, p = speeds["dense"], speeds["pruned"]
                rows.append(
                    {
                        "model": MODEL,
                        "method": method,
                        "budget": budget,
                        "dtype": dtype,
                        "round_to": round_to,
                        "arch": out.plan.arch,
                        "dense_arch": dense_export.plan.arch,
                        "notes": list(out.plan.notes),
                        "kept_params": sum(t.numel() for t in model.parameters()),
                        "dense_params": sum(t.numel() for t in dense.parameters()),
                        "ffn_widths": [lp.ffn for lp in out.plan.layers],
                        "kv_heads": [lp.kv_heads for lp in out.plan.layers],
                        "verify": check.to_dict(),
                        "verify_passed": check.passed(),
                        "dense_verify": dense_checks[dtype],
                        "dense": d.to_dict(),
                        "pruned": p.to_dict(),
                        "prefill_speedup": {str(n): p.prefill_tokens_per_s[n] / d.prefill_tokens_per_s[n] for n in PREFILL_LENS},
                        "decode_speedup": p.decode_tokens_per_s / d.decode_tokens_per_s,
                        "ideal_speedup": {
                            "prefill": {str(n): ideal_speedup(model_flops_per_token(dense, n), model_flops_per_token(model, n)) for n in PREFILL_LENS},
                            "decode": weight_bytes_per_token(dense_export.path) / weight_bytes_per_token(out.path),
                        },
                        "weight_bytes_per_token": {"dense": weight_bytes_per_token(dense_export.path), "pruned": weight_bytes_per_token(out.path)},
                    }
                )
                write_json_atomic(args.out, {"protocol": protocol, "rows": rows})
                print(
                    json.dumps(
                        {k: rows[-1][k] for k in ("method", "budget", "dtype", "round_to", "arch", "prefill_speedup", "decode_speedup", "ideal_speedup")}
                    ),
                    flush=True,
                )
                out.path.unlink()


if __name__ == "__main__":
    main()
