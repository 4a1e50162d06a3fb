"""Byte-identical copies of one GGUF file timed together in llama.cpp: how much the layout of its pages moves decode speed.

The dense embedded model is exported once (``--dtype``) and copied ``--copies`` times, one copy after
another, into fresh files (so each gets its own page-cache pages); all copies are then timed together
with the balanced, alternating protocol of :func:`pruneframe.export.speed.measure_llamacpp_speed`, and
each copy's count of physically contiguous page runs is read (:func:`pruneframe.export.pagemap.physical_runs`;
``null`` without the rights to read it). Same bytes, same process, same minutes: whatever separates the
copies' speeds is where their pages lie. ``--rounds`` repeats the whole thing with new copies.
Writes ``benchmarks/results/llamacpp_layout.json``. Run it alone on the machine (timings)::

    .venv/bin/python benchmarks/llamacpp_layout.py --copies 4 --rounds 2
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from pruneframe.export import export_gguf
from pruneframe.export.pagemap import physical_runs
from pruneframe.export.speed import measure_llamacpp_speed
from pruneframe.models import load_model
from pruneframe.util.io import write_json_atomic

OUT = Path(__file__).parent / "results" / "llamacpp_layout.json"


def export_dense(model_name: str, dtype: str, folder: Path) -> tuple[Path, int, Any]:
    """The embedded ``model_name`` written to ``folder`` as ``dense.gguf`` in ``dtype``: the file, its vocabulary size and the tokenizer."""
    model, tokenizer = load_model(model_name, dtype="float32", device="cpu")
    path = export_gguf(model, folder / "dense.gguf", dtype, tokenizer=tokenizer).path
    return path, int(model.config.vocab_size), tokenizer


def main() -> None:
    """Export, copy, time and write one row per copy and round."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="f16")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="llamacpp-layout-") as tmp:
        source, vocab, _ = export_dense(args.model, args.dtype, Path(tmp))
        for round_ in range(args.rounds):
            files = {}
            for i in range(args.copies):
                target = Path(tmp) / f"copy{i}.gguf"
                target.unlink(missing_ok=True)
                files[f"copy{i}"] = Path(shutil.copyfile(source, target))
            speeds = measure_llamacpp_speed(files, vocab, (256,), 64, repeats=args.repeats)
            for label, path in files.items():
                s = speeds[label]
                row = {
                    "round": round_,
                    "copy": label,
                    "written": int(label.removeprefix("copy")),
                    "page_runs": physical_runs(path),
                    "pages": -(-path.stat().st_size // 4096),
                    "decode_fastest": s.decode_tokens_per_s,
                    "decode_median": statistics.median(s.decode_samples),
                    "decode_samples": s.decode_samples,
                }
                rows.append(row)
                print(row, flush=True)
    machine = platform.processor() or platform.machine()
    protocol = {"model": args.model, "dtype": args.dtype, "repeats": args.repeats, "threads": 1, "decode_tokens": 64, "machine": machine}
    write_json_atomic(args.out, {"protocol": protocol, "rows": rows})


if __name__ == "__main__":
    main()
