"""Throughput of ``pruneframe.evaluation.perplexity`` against a plain Hugging Face forward loop.

Both score the same windows of the embedded SmolLM2-135M model (the first N windows of 512 tokens of
WikiText-2 ``wiki.test.raw`` from PRUNEFRAME_DATA_DIR, else the embedded test text). To cancel out
machine load that changes while the benchmark runs, the two are timed window by window, alternating
which goes first, over several rounds; the quoted ratio is plain time / pruneframe time
(>= 1 means pruneframe is at least as fast). Writes ``benchmarks/results/perplexity_overhead.json``.

Usage: ``python benchmarks/perplexity_overhead.py [--windows 8] [--seq-len 512] [--rounds 2] [--device cpu]``
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch
import transformers

from pruneframe.util.io import write_json_atomic
from pruneframe.data import data_dir, resolve_text, token_windows
from pruneframe.evaluation.perplexity import perplexity
from pruneframe.models import load_model

RESULT = Path(__file__).resolve().parent / "results" / "perplexity_overhead.json"


def plain_nll_sum(model: torch.nn.Module, window: torch.Tensor) -> float:
    """The reference: one HF forward with ``labels``; returns the summed NLL of the window."""
    with torch.inference_mode():
        loss = model(input_ids=window[None], labels=window[None], use_cache=False).loss
    return float(loss) * (window.numel() - 1)


def ours_nll_sum(model: torch.nn.Module, window: torch.Tensor) -> float:
    """pruneframe's perplexity on the same single window; returns the summed NLL."""
    result = perplexity(model, window[None], batch_size=1, progress=False)
    return result.mean_nll * result.tokens


def timed(fn, model: torch.nn.Module, window: torch.Tensor, device: torch.device) -> tuple[float, float]:  # noqa: ANN001
    """Run ``fn`` once; return (seconds, NLL sum)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    nll = fn(model, window)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, nll


def main() -> None:
    """Measure, print and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args()

    device = torch.device(args.device)
    model, tokenizer = load_model("smollm2-135m")
    model.to(device)
    root = data_dir()
    local = root / "wikitext-2" / "wiki.test.raw" if root is not None else None
    source = resolve_text(str(local)) if local is not None and local.is_file() else resolve_text("embedded", "test")
    windows = token_windows(source, tokenizer, args.seq_len, args.windows).to(device)

    plain_nll_sum(model, windows[0])  # warmup, untimed
    times = {"plain": 0.0, "pruneframe": 0.0}
    nll = {"plain": 0.0, "pruneframe": 0.0}
    fns = {"plain": plain_nll_sum, "pruneframe": ours_nll_sum}
    for round_index in range(args.rounds):
        for i in range(args.windows):
            order = ("plain", "pruneframe") if (round_index + i) % 2 == 0 else ("pruneframe", "plain")
            for name in order:
                seconds, value = timed(fns[name], model, windows[i], device)
                times[name] += seconds
                if round_index == 0:
                    nll[name] += value
    tokens = args.windows * (args.seq_len - 1)
    result = {
        "ratio": times["plain"] / times["pruneframe"],
        "ratio_meaning": "pruneframe throughput / plain HF forward-loop throughput (>= 0.95 required)",
        "seconds": times,
        "tokens_per_s": {k: tokens * args.rounds / v for k, v in times.items()},
        "ppl": {k: math.exp(v / tokens) for k, v in nll.items()},
        "data": source.describe(),
        "model": "smollm2-135m",
        "windows": args.windows,
        "seq_len": args.seq_len,
        "rounds": args.rounds,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(args.output, result)
    print(
        f"ratio {result['ratio']:.3f}  plain {times['plain']:.1f}s  pruneframe {times['pruneframe']:.1f}s  "
        f"ppl {result['ppl']['pruneframe']:.3f} (plain {result['ppl']['plain']:.3f})  -> {args.output}"
    )


if __name__ == "__main__":
    main()
