"""How prune time and memory grow with model size: random-weight bf16 models built from configs, or embedded models.

Shapes (random weights, tied embeddings, vocabulary 49,152): ``135m`` (SmolLM2-135M's layers), ``0.5b``
(24 layers, hidden 1,152, FFN 4,608, 18 / 6 heads; 524M parameters) and ``1b`` (Llama-3.2-1B's layers;
1,073,809,408 parameters). A size may also name an embedded model (``qwen2.5-coder-1.5b``, ...): its cached
bf16 weights are loaded (loading's peak is recorded apart) and it calibrates on the first 200,000 tokens of
``--calibration-source``'s calibration split, tokenized before the baseline RSS.

Every (size, method) runs in a fresh worker process that builds (or loads) the model, then prunes it in place
to ``--budget`` of the prunable parameters, after ``return_large_blocks()`` as the command line does.
Recorded: prune wall time (and the score stage's), calibration tokens per second of the score stage, and
(peak RSS of the worker - its RSS after imports) / bytes of the dense weights. ``--windows`` overrides the
windowed methods' calibration count to keep runs short. Writes ``benchmarks/results/scale.json`` (rows of
other sizes, methods or budgets are kept); ``python benchmarks/docs_report.py scale`` renders it in ``docs/scale.md``.

``executors``: one comparison (default the main job's) through the ``local`` executor and through submitit's
local executor with ``--jobs`` jobs at once (each with ``--cpus`` torch threads, default 1), each a
``pruneframe compare`` subprocess into a fresh folder: wall and CPU time, the peak RSS of the largest process
of its tree (``RUSAGE_CHILDREN``, in a process of its own per run), and whether both hold the same records
(keys, untimed evaluations; else the largest relative gap of a window NLL). Writes ``benchmarks/results/executor_overhead.json``.

Usage: ``python benchmarks/scale.py [--sizes 135m,0.5b,1b] [--methods magnitude,random,wanda-sp,flap] [--windows 16] [--threads 1]``
or ``python benchmarks/scale.py executors [--config examples/compare_smollm2.yaml] [--jobs 2] [--cpus 1]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import machine, worker_json
from pruneframe.util.io import write_json_atomic

RESULT = Path(__file__).resolve().parent / "results" / "scale.json"

#: name -> (layers, hidden, FFN, query heads, KV heads)
SHAPES = {"135m": (30, 576, 1536, 9, 3), "0.5b": (24, 1152, 4608, 18, 6), "1b": (16, 2048, 8192, 32, 8)}
FORWARD_ONLY = ("magnitude", "random", "wanda-sp", "flap")
WINDOWED = {"wanda-sp": "num_windows", "flap": "num_windows", "grasprune": "num_sequences", "llm-pruner": "num_samples"}


def build(name: str):  # noqa: ANN201 - a transformers model
    """The random-weight bf16 model of shape ``name`` (built in bf16: no fp32 copy)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, hidden, ffn, heads, kv = SHAPES[name]
    sizes = dict(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv)
    config = LlamaConfig(vocab_size=49152, head_dim=64, tie_word_embeddings=True, max_position_embeddings=2048, **sizes)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        return LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)


def real_calibration(name: str, source: str):  # noqa: ANN201 - a LongTensor
    """Up to 200,000 token ids of ``source``'s calibration split, in embedded model ``name``'s tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from pruneframe.data.sources import resolve_text
    from pruneframe.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name).location)
    text = resolve_text(source, split="calibration").text
    return tokenizer(text[:2_000_000], return_tensors="pt", add_special_tokens=False).input_ids[0][:200_000].to(torch.long)


def worker(size: str, method: str, budget: float, windows: int | None, source: str = "wikitext-2") -> dict[str, Any]:
    """Build, prune in place, measure; runs in its own process."""
    import torch

    import pruneframe
    from pruneframe.architectures import discover
    from pruneframe.toolkit.memory import PeakMemory, current_rss_bytes, release_unused_memory, return_large_blocks

    # a real model's calibration text is tokenized before the baseline: the tokenizer is not the method's memory
    calibration = None if size in SHAPES else real_calibration(size, source)
    return_large_blocks()  # as the command line does, and as the README advises API users
    release_unused_memory()
    bare = current_rss_bytes()
    load_peak = None
    if size not in SHAPES:
        # loading reads the cached float32 files through a file mapping, which RSS counts; that is the
        # loader's peak, recorded apart, and the method's peak below starts from the loaded model
        from pruneframe.models import load_model

        with PeakMemory() as loading:
            t0 = time.perf_counter()
            model, _ = load_model(size, dtype="bfloat16", device="cpu")
            t_build = time.perf_counter() - t0
        release_unused_memory()
        load_peak = loading.report.peak_rss
    with PeakMemory() as mem:
        if size in SHAPES:
            t0 = time.perf_counter()
            model = build(size)
            calibration = torch.randint(0, 49152, (200_000,), generator=torch.Generator().manual_seed(0))
            t_build = time.perf_counter() - t0
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        params = sum(p.numel() for p in model.parameters())
        units = discover(model)
        config = {WINDOWED[method]: windows} if windows and method in WINDOWED else None
        t1 = time.perf_counter()
        result = pruneframe.prune(model, method, budget, calibration=calibration, config=config, progress=False, inplace=True)
        t_prune = time.perf_counter() - t1
    report = result.report
    tokens = report.method_stats.get("calibration_tokens")
    peak = mem.report.peak_rss
    row = {"size": size, "method": method, "budget": budget, "dtype": "bfloat16", "params": params, "prunable_params": units.prunable_params}
    row |= {"weight_bytes": weight_bytes, "config": report.config, "build_s": t_build, "prune_s": t_prune, "timings_s": report.timings.model_dump()}
    row |= {"calibration_tokens": tokens, "calibration_tokens_per_s": tokens / report.timings.score_s if tokens else None, "bare_rss_bytes": bare}
    row |= {"peak_rss_bytes": peak, "peak_over_weights": (peak - bare) / weight_bytes, "memory_source": mem.report.source}
    row |= {"load_peak_over_weights": None if load_peak is None else (load_peak - bare) / weight_bytes}
    calibration = "random ids" if size in SHAPES else f"{source} validation"
    return row | {"kept_fraction_of_prunable": report.kept_fraction_of_prunable, "calibration": calibration, "threads": torch.get_num_threads()}


def _size_order(size: str) -> int:
    return list(SHAPES).index(size) if size in SHAPES else len(SHAPES)


#: Runs the command after it; prints its exit code, wall and CPU seconds and the largest peak RSS of its (waited-for) process tree.
MEASURE = (
    "import json, resource, subprocess, sys, time\nstart = time.perf_counter()\ncode = subprocess.run(sys.argv[1:]).returncode\n"
    "use = resource.getrusage(resource.RUSAGE_CHILDREN)\nprint(json.dumps({'returncode': code, 'wall_s': time.perf_counter() - start, "
    "'cpu_s': use.ru_utime + use.ru_stime, 'peak_rss_bytes': use.ru_maxrss * 1024}))"
)
TIMED = ("speed", "llamacpp-speed")  # evaluators that time the machine: left out when two folders' records are compared


def executors(argv: list[str]) -> None:
    """``executors``: the comparison through ``local``, then through submitit's local executor (see the module docstring)."""
    import torch

    parser = argparse.ArgumentParser(prog="scale.py executors", description="one comparison through local and through submitit's local executor")
    parser.add_argument("--config", default="examples/compare_smollm2.yaml")
    parser.add_argument("--jobs", type=int, default=2, help="submitit jobs running at once")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs per submitit job: its torch threads (local processes share the cores)")
    parser.add_argument("--out", type=Path, default=RESULT.with_name("executor_overhead.json"))
    args = parser.parse_args(argv)
    root, runs, records = Path(tempfile.mkdtemp(prefix="executor-overhead-")), {}, {}
    submitit = ["--executor", "submitit", "--executor-option", "cluster=local", "--executor-option", f"array_parallelism={args.jobs}"]
    submitit += ["--executor-option", f"cpus={args.cpus}"]
    for name, flags in (("local", []), ("submitit", submitit)):
        cmd, load = [sys.executable, "-m", "pruneframe", "compare", "--config", args.config, "--out", str(root / name), "--quiet", *flags], os.getloadavg()[0]
        runs[name] = worker_json([sys.executable, "-c", MEASURE, *cmd], 4 * 3600) | {"command": cmd[1:], "load_avg_1min_at_start": load}
        res = json.loads((root / name / "results.json").read_text())
        records[name] = {r["run_id"]: [r["cache_key"], {k: v for k, v in r.get("eval", {}).items() if k not in TIMED}] for r in [res["dense"], *res["runs"]]}
        got = runs[name]
        print(f"{name:>8}: {got['wall_s']:.0f} s wall, {got['cpu_s']:.0f} s CPU, peak RSS {got['peak_rss_bytes'] / 2**20:,.0f} MiB", flush=True)
    differing = sorted(r for r in {*records["local"], *records["submitit"]} if records["local"].get(r) != records["submitit"].get(r))
    nll = max((_nll_gap(records["local"].get(r), records["submitit"].get(r)) for r in differing), default=0.0)
    run = {"benchmark": "executor_overhead", "config": args.config, "jobs": args.jobs, "cpus_per_job": args.cpus}
    run |= {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "local_threads": torch.get_num_threads()}
    run |= {"wall_ratio": runs["submitit"]["wall_s"] / runs["local"]["wall_s"], "max_window_nll_rel_gap": nll}
    write_json_atomic(args.out, run | machine() | {"runs": runs, "records_identical": not differing, "differing_runs": differing, "folders": str(root)})
    print(f"records identical: {not differing} (largest relative gap of a window NLL: {nll:.2e}); submitit / local wall: {run['wall_ratio']:.3f}")
    print(f"wrote {args.out}")


def _nll_gap(first: list[Any] | None, second: list[Any] | None) -> float:
    """The largest relative difference of a perplexity window's NLL between two stored records (``inf`` when one is missing)."""
    if first is None or second is None:
        return math.inf
    gaps = [0.0]
    for label, source in (first[1].get("perplexity") or {}).get("sources", {}).items():
        other = second[1]["perplexity"]["sources"][label]["window_nll"]
        gaps += [abs(a - b) / abs(a) for a, b in zip(source["window_nll"], other) if a]
    return max(gaps)


def main() -> None:
    """Run the workers, print one line each, merge into the JSON result (``executors``: :func:`executors`)."""
    if sys.argv[1:2] == ["executors"]:
        return executors(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="135m,0.5b,1b", help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--methods", default=",".join(FORWARD_ONLY), help="comma-separated registered methods")
    parser.add_argument("--budget", type=float, default=0.8, help="keep-ratio of the prunable parameters")
    parser.add_argument("--windows", type=int, default=16, help="calibration windows of the windowed methods (0: their default)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch's choice)")
    parser.add_argument("--calibration-source", default="wikitext-2", help="text source of a real model's calibration")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--worker", nargs=2, metavar=("SIZE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(worker(*args.worker, args.budget, args.windows or None, args.calibration_source)))
        return
    sizes = [s for s in args.sizes.split(",") if s]
    from pruneframe.models.resolver import EMBEDDED_MODELS

    if bad := [s for s in sizes if s not in SHAPES and s not in EMBEDDED_MODELS]:
        parser.error(f"unknown size(s) {bad}; choose from {', '.join([*SHAPES, *EMBEDDED_MODELS])}")
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    rows = {(r["size"], r["method"], r["budget"]): r for r in old.get("rows", [])}
    for size in sizes:
        for method in [m for m in args.methods.split(",") if m]:
            cmd = [sys.executable, __file__, "--worker", size, method, "--budget", str(args.budget), "--windows", str(args.windows)]
            cmd += ["--threads", str(args.threads), "--calibration-source", args.calibration_source]
            load = os.getloadavg()[0]
            try:
                row = worker_json(cmd, args.timeout) | {"load_avg_1min_at_start": load}
            except RuntimeError as exc:
                print(f"{size:>5} {method:>10}: {exc}", flush=True)
                continue
            rows[(size, method, args.budget)] = row
            rate = row["calibration_tokens_per_s"]
            speed, prune = "-" if rate is None else f"{rate:8.0f} tok/s", f"prune {row['prune_s']:7.1f} s (score {row['timings_s']['score_s']:6.1f} s)"
            memory = f"peak RSS - bare = {row['peak_over_weights']:.2f} x weights ({row['weight_bytes'] / 1e9:.2f} GB)"
            print(f"{size:>5} {method:>10} keep {args.budget}: {prune}, calibration {speed}, {memory}  [load {load:.1f}]", flush=True)
    note = "peak_over_weights = (peak RSS of the worker - its RSS after imports) / dense bf16 weight bytes"
    ordered = sorted(rows.values(), key=lambda r: (_size_order(r["size"]), r["method"], -r["budget"]))
    write_json_atomic(args.out, {"benchmark": "scale", "machine": machine()["machine"], "cpu_count": os.cpu_count(), "note": note, "rows": ordered})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
