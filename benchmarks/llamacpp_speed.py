"""An embedded model pruned by the one-shot methods at keep 0.8 and 0.5, exported to GGUF and timed in llama.cpp.

Writes ``benchmarks/results/llamacpp_speed.json`` (``python benchmarks/docs_report.py llamacpp`` renders it in
``docs/llamacpp.md``): one row per (model, method, budget, dtype, round_to, pad_ffn_to) with the export's
architecture, its check against transformers (and the dense export's own check in the same type,
``dense_verify``), prefill tokens/s (256- and 512-token prompts) and decode tokens/s (64 tokens), batch 1,
1 thread, dense and pruned alternating, each model's fastest repeat over ``--placements`` fresh copies of both
files (each copy's count of physically contiguous page runs kept, :mod:`pruneframe.export.pagemap`), the
per-repeat speedups (``decode_speedup_paired``, ``prefill_speedup_paired``: median, lowest, highest), and
``ideal_speedup`` (FLOPs for prefill, bytes of weights read per decoded token for decode, dense over pruned).
Speedups are over the dense model in the family's own llama.cpp architecture in the same type.

``--round-to 32,64,128`` adds rows for ``--round-to-method`` at keep 0.5 pruned with that ``round_to``;
``--pad-ffn-to N`` exports this run's pruned models with every FFN width zero-padded to a multiple of ``N``.
``--dense-as-deci`` adds the dense model written as ``deci`` against itself as ``llama`` (the architecture's
own cost); ``--dense-vs-dense`` the dense model against a second export of itself (the measurement's spread).
``--model gemma3-270m`` measures Gemma 3; a model llama.cpp cannot express gets a row with ``refused``.
``--perplexity-windows N`` adds both GGUF files' perplexity from llama.cpp's own logits beside both
checkpoints' in transformers, on the first ``N`` 512-token windows of ``moby-dick`` and ``embedded``.

The file is rewritten after every row; rows already in ``--out`` are kept and skipped (a run resumes),
``--remeasure`` times this run's rows again. ``--checkpoints DIR`` keeps the pruned checkpoints there.
Run it alone on the machine (timings), e.g.::

    flock /tmp/pruneframe-heavy.lock .venv/bin/python benchmarks/llamacpp_speed.py --methods magnitude,wanda-sp
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import pruneframe
from common import machine
from pruneframe.util.io import write_json_atomic
from pruneframe.data import calibration_data
from pruneframe.evaluation.speed import ideal_speedup, model_flops_per_token
from pruneframe.data import resolve_text, token_windows
from pruneframe.evaluation import perplexity
from pruneframe.export import ExportRefused, export_gguf
from pruneframe.export.perplexity import gguf_perplexity
from pruneframe.export.speed import measure_llamacpp_speed, paired_speedup, weight_bytes_per_token
from pruneframe.export.verify import verify_gguf
from pruneframe.models import load_model

OUT = Path(__file__).parent / "results" / "llamacpp_speed.json"
PREFILL_LENS = (256, 512)
DECODE_TOKENS = 64
#: Out-of-domain test sources of the comparisons, scored in 512-token windows from the start.
PERPLEXITY_SOURCES = ("moby-dick", "embedded")
PERPLEXITY_LEN = 512


def _key(row: dict[str, Any]) -> tuple:
    return row["model"], row["method"], row["budget"], row["dtype"], row.get("round_to"), row.get("pad_ffn_to", 1)


def _pruned(model_name: str, method: str, budget: float, round_to: int | None, calibration: Any, checkpoints: Path | None, settings: dict[str, Any]) -> Any:
    """The pruned model: loaded from ``checkpoints`` when it holds it, else pruned (and saved there)."""
    import pruneframe.checkpoint as checkpoint

    name = f"{method}-{budget}" + (f"-r{round_to}" if round_to else "")
    folder = checkpoints / name if checkpoints else None
    if folder is not None and (folder / "config.json").exists():
        return load_model(str(folder), dtype="float32", device="cpu")[0]
    model, tokenizer = load_model(model_name, dtype="float32", device="cpu")
    config = {**settings, **({"round_to": round_to} if round_to else {})} or None
    result = pruneframe.prune(model, method=method, budget=budget, calibration=calibration, config=config, progress=False)
    if folder is not None:
        checkpoint.save(folder, result.model, result.report, tokenizer=tokenizer)
    return result.model


def _windows(tokenizer: Any, count: int) -> dict[str, Any]:
    """The first ``count`` 512-token windows of every out-of-domain test source (a BOS first where the tokenizer adds one)."""
    from pruneframe.data.windows import prepended_bos

    bos = prepended_bos(tokenizer)
    return {name: token_windows(resolve_text(name, "test"), tokenizer, PERPLEXITY_LEN, count, bos=bos) for name in PERPLEXITY_SOURCES}


def _perplexities(dense_path: Path, pruned_path: Path, dense: Any, model: Any, windows: dict[str, Any], memo: dict[Path, dict[str, float]]) -> dict[str, Any]:
    """Per source: both GGUF files' perplexity in llama.cpp and both checkpoints' in transformers (float32).

    The dense model's values are computed once per file (``memo``, keyed by path).
    """
    if dense_path not in memo:
        memo[dense_path] = {
            **{f"gguf:{name}": gguf_perplexity(dense_path, w, progress=False).ppl for name, w in windows.items()},
            **{f"hf:{name}": perplexity(dense, w, progress=False).ppl for name, w in windows.items()},
        }
    known = memo[dense_path]
    out = {
        name: {
            "gguf_dense": known[f"gguf:{name}"],
            "gguf_pruned": gguf_perplexity(pruned_path, w, progress=False).ppl,
            "hf_dense": known[f"hf:{name}"],
            "hf_pruned": perplexity(model, w, progress=False).ppl,
        }
        for name, w in windows.items()
    }
    return {"windows": int(next(iter(windows.values())).shape[0]), "seq_len": PERPLEXITY_LEN, "sources": out}


def _export_as_deci(model: Any, out: Path, dtype: str, tokenizer: Any, model_name: str) -> Any:
    """``model`` (uniform widths) written as ``deci`` instead of its own architecture: the dense diagnostic row."""
    from dataclasses import replace

    from pruneframe.export.gguf_export import ExportResult
    from pruneframe.export.plan import plan_export
    from pruneframe.export.writer import write_gguf

    plan = replace(plan_export(model, dtype), arch="deci")
    path = write_gguf(out, model, tokenizer, plan, dtype, f"{model_name} as deci")
    return ExportResult(path, plan, path.stat().st_size)


def main() -> None:
    """Prune, export, verify and time every (method, budget, dtype[, round_to]); write the JSON after each row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="an embedded model (smollm2-135m, gemma3-270m)")
    parser.add_argument("--methods", default="llm-pruner,wanda-sp,flap,magnitude")
    parser.add_argument("--budgets", default="0.8,0.5")
    parser.add_argument("--dtypes", default="f16,q8_0")
    parser.add_argument("--pad-ffn-to", type=int, default=1, help="zero-pad the pruned files' FFN widths to a multiple of N (default 1: as pruned)")
    parser.add_argument("--round-to", default="", help="comma-separated round_to values for the extra rows")
    parser.add_argument("--round-to-method", default="llm-pruner")
    parser.add_argument("--round-to-budget", type=float, default=0.5)
    parser.add_argument("--dense-as-deci", action="store_true", help="add the dense model written as deci")
    parser.add_argument("--dense-vs-dense", action="store_true", help="add the dense model timed against a second export of itself (noise)")
    parser.add_argument("--remeasure", action="store_true", help="time this run's rows again, replacing those in --out")
    parser.add_argument("--repeats", type=int, default=4, help="timed repeats per placement")
    parser.add_argument("--placements", type=int, default=3, help="fresh copies of both files, each timed --repeats times")
    parser.add_argument("--checkpoints", type=Path, default=None, help="folder to keep / reuse pruned checkpoints")
    parser.add_argument("--method-config", action="append", default=[], metavar="NAME=JSON", help="a method's settings (repeatable)")
    parser.add_argument("--perplexity-windows", type=int, default=0, help="score N windows per out-of-domain source in llama.cpp too")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    dtypes = args.dtypes.split(",")
    settings = {name: json.loads(value) for name, _, value in (item.partition("=") for item in args.method_config)}
    jobs = [(m, float(b), None) for m in args.methods.split(",") if m for b in args.budgets.split(",") if b]
    jobs += [(args.round_to_method, args.round_to_budget, int(r)) for r in args.round_to.split(",") if r]
    jobs += [("dense-as-deci", 1.0, None)] if args.dense_as_deci else []
    jobs += [("dense-vs-dense", 1.0, None)] if args.dense_vs_dense else []
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    rows: list[dict[str, Any]] = list(previous.get("rows", []))
    by_key = {_key(r): r for r in rows}
    name = args.model
    # repeats are per row (rows["dense"]["repeats"]): a resumed run may use another number
    protocol = {
        "threads": 1,
        "batch": 1,
        "statistic": "fastest repeat (max tokens/s)",
        "prefill_lens": list(PREFILL_LENS),
        "decode_tokens": DECODE_TOKENS,
        "machine": machine()["machine"],
    }

    remeasured: set[tuple] = set()

    def pending(key: tuple) -> bool:
        row = by_key.get(key)
        return row is None or (args.remeasure and key not in remeasured) or (args.perplexity_windows > 0 and "refused" not in row and "perplexity" not in row)

    def store(key: tuple, row: dict[str, Any]) -> None:
        """Add ``row``, or replace the stored row of ``key`` in place; then rewrite the file."""
        if key in by_key:
            rows[rows.index(by_key[key])] = row
        else:
            rows.append(row)
        by_key[key] = row
        remeasured.add(key)
        write_json_atomic(args.out, {"protocol": protocol, "rows": rows})

    with tempfile.TemporaryDirectory(prefix="llamacpp-speed-") as tmp:
        dense, tokenizer = load_model(name, dtype="float32", device="cpu")
        calibration = calibration_data("wikitext-2", tokenizer)
        windows = _windows(tokenizer, args.perplexity_windows) if args.perplexity_windows > 0 else None
        dense_files: dict[str, Any] = {}
        dense_checks: dict[str, Any] = {}
        dense_ppl: dict[Path, dict[str, float]] = {}
        for method, budget, round_to in jobs:
            pad = 1 if method.startswith("dense-") else args.pad_ffn_to
            todo = [d for d in dtypes if pending((name, method, budget, d, round_to, pad))]
            if not todo:
                continue
            as_deci = method == "dense-as-deci"
            model = dense if method.startswith("dense-") else _pruned(name, method, budget, round_to, calibration, args.checkpoints, settings.get(method, {}))
            for dtype in todo:
                if dtype not in dense_files:
                    dense_files[dtype] = export_gguf(dense, Path(tmp) / f"dense-{dtype}.gguf", dtype, tokenizer=tokenizer)
                dense_export = dense_files[dtype]
                key = (name, method, budget, dtype, round_to, pad)
                target = Path(tmp) / f"{method}-{budget}-{round_to}-{pad}-{dtype}.gguf"
                try:
                    if as_deci:
                        out = _export_as_deci(model, target, dtype, tokenizer, name)
                    else:
                        out = export_gguf(model, target, dtype, tokenizer=tokenizer, pad_ffn_to=pad)
                except ExportRefused as exc:
                    row = {"model": name, "method": method, "budget": budget, "dtype": dtype, "round_to": round_to, "refused": str(exc)}
                    row |= {"pad_ffn_to": pad} if pad > 1 else {}
                    store(key, row)
                    print(json.dumps(row), flush=True)
                    continue
                if key in by_key and key not in remeasured and not args.remeasure:  # measured before: add the perplexities only
                    by_key[key]["perplexity"] = _perplexities(dense_export.path, out.path, dense, model, windows, dense_ppl)
                    write_json_atomic(args.out, {"protocol": protocol, "rows": rows})
                    print(json.dumps({"key": list(key), "perplexity": by_key[key]["perplexity"]}), flush=True)
                    out.path.unlink()
                    continue
                check = verify_gguf(out.path, model, tokenizer, dtype)
                if dtype not in dense_checks:  # the dense file's own agreement: what the type costs before pruning
                    dense_checks[dtype] = verify_gguf(dense_export.path, dense, tokenizer, dtype).to_dict()
                speeds = measure_llamacpp_speed(
                    {"dense": dense_export.path, "pruned": out.path},
                    int(dense.config.vocab_size),
                    PREFILL_LENS,
                    DECODE_TOKENS,
                    repeats=args.repeats,
                    placements=args.placements,
                )
                d, p = speeds["dense"], speeds["pruned"]
                row = {
                    "model": name,
                    "method": method,
                    "budget": budget,
                    "dtype": dtype,
                    "round_to": round_to,
                    **({"pad_ffn_to": pad} if pad > 1 else {}),
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
                    "balanced_order": True,
                    "placements": args.placements,
                    "dense": d.to_dict(),
                    "pruned": p.to_dict(),
                    "prefill_speedup": {str(n): p.prefill_tokens_per_s[n] / d.prefill_tokens_per_s[n] for n in PREFILL_LENS},
                    "decode_speedup": p.decode_tokens_per_s / d.decode_tokens_per_s,
                    "prefill_speedup_paired": {str(n): paired_speedup(d.prefill_samples[n], p.prefill_samples[n]) for n in PREFILL_LENS},
                    "decode_speedup_paired": paired_speedup(d.decode_samples, p.decode_samples),
                    "ideal_speedup": {
                        "prefill": {str(n): ideal_speedup(model_flops_per_token(dense, n), model_flops_per_token(model, n)) for n in PREFILL_LENS},
                        "decode": weight_bytes_per_token(dense_export.path) / weight_bytes_per_token(out.path),
                    },
                    "weight_bytes_per_token": {"dense": weight_bytes_per_token(dense_export.path), "pruned": weight_bytes_per_token(out.path)},
                }
                if windows is not None:
                    row["perplexity"] = _perplexities(dense_export.path, out.path, dense, model, windows, dense_ppl)
                elif "perplexity" in by_key.get(key, {}):  # re-timed: the files' perplexities do not change
                    row["perplexity"] = by_key[key]["perplexity"]
                store(key, row)
                print(
                    json.dumps({k: row[k] for k in ("method", "budget", "dtype", "round_to", "arch", "prefill_speedup", "decode_speedup", "ideal_speedup")}),
                    flush=True,
                )
                out.path.unlink()


if __name__ == "__main__":
    main()
