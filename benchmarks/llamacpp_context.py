"""Decode speedup in llama.cpp against the context it decodes after: what the weight-bytes ideal leaves out.

The bytes ideal of ``llamacpp_speed.py`` counts the weights a decoded token reads; every kept attention
head also reads its KV cache and attends over the context, work that grows with the context and shrinks
only with the heads a method removes. This script times the dense embedded model against pruned
checkpoints (``--checkpoints``: folders written by ``pruneframe prune``/``compare``) decoding 64 tokens
after prompts of ``--contexts`` tokens, with the placements protocol of
:func:`pruneframe.export.speed.measure_llamacpp_speed`, and writes one row per checkpoint and context to
``benchmarks/results/llamacpp_context.json``. If attention work explains a method's gap to the ideal,
the gap narrows as the context shortens. Run it alone on the machine (timings)::

    .venv/bin/python benchmarks/llamacpp_context.py --checkpoints out/llm-pruner-0.8 out/grasprune-0.5 --contexts 16,256,1024
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

from llamacpp_layout import export_dense

from pruneframe.export import export_gguf
from pruneframe.export.speed import measure_llamacpp_speed, paired_speedup, weight_bytes_per_token
from pruneframe.models import load_model
from pruneframe.util.io import write_json_atomic

OUT = Path(__file__).parent / "results" / "llamacpp_context.json"


def main() -> None:
    """Export the dense model and each checkpoint once, then time them at every context."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="the dense model the checkpoints were pruned from")
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True)
    parser.add_argument("--contexts", default="16,256,1024")
    parser.add_argument("--dtype", default="f16")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--placements", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    contexts = [int(c) for c in args.contexts.split(",") if c]
    rows = []
    with tempfile.TemporaryDirectory(prefix="llamacpp-context-") as tmp:
        dense_file, vocab, tokenizer = export_dense(args.model, args.dtype, Path(tmp))
        for folder in args.checkpoints:
            model = load_model(str(folder), dtype="float32", device="cpu")[0]
            pruned_file = export_gguf(model, Path(tmp) / f"{folder.name}.gguf", args.dtype, tokenizer=tokenizer, pad_ffn_to=1).path
            del model
            ideal = weight_bytes_per_token(dense_file) / weight_bytes_per_token(pruned_file)
            for context in contexts:
                files = {"dense": dense_file, "pruned": pruned_file}
                speeds = measure_llamacpp_speed(files, vocab, (context,), 64, repeats=args.repeats, placements=args.placements)
                d, p = speeds["dense"], speeds["pruned"]
                paired = paired_speedup(d.decode_samples, p.decode_samples)
                row = {
                    "checkpoint": folder.name,
                    "context": context,
                    "dense_decode": d.decode_tokens_per_s,
                    "pruned_decode": p.decode_tokens_per_s,
                    "decode_speedup": p.decode_tokens_per_s / d.decode_tokens_per_s,
                    "decode_speedup_paired": paired,
                    "ideal_decode": ideal,
                    "median_over_ideal": paired["median"] / ideal,
                }
                rows.append(row)
                print({k: row[k] for k in ("checkpoint", "context", "decode_speedup", "ideal_decode", "median_over_ideal")}, flush=True)
            pruned_file.unlink()
    machine = platform.processor() or platform.machine()
    protocol = {"model": args.model, "dtype": args.dtype, "repeats": args.repeats, "placements": args.placements}
    protocol |= {"decode_tokens": 64, "threads": 1, "machine": machine}
    write_json_atomic(args.out, {"protocol": protocol, "rows": rows})


if __name__ == "__main__":
    main()
