"""The generated sections of ``docs/scale.md`` (``scale.py``'s JSON) and ``docs/gpu.md`` (the GPU check's JSON).

Used by ``docs_report.py scale`` and ``docs_report.py gpu``; the hand-written parts of both pages stay as they are.
"""

from __future__ import annotations

import json
from typing import Any

from common import DOCS, RESULTS
from pruneframe.util.io import replace_marked_section

GIB = 2**30
GPU_RESULTS = RESULTS / "gpu_check"
#: The memory targets of the scale work: peak RSS over the bf16 weight bytes, per kind of method.
TARGETS = {"forward-only": 1.15, "gradient": 1.4}
GRADIENT_METHODS = ("llm-pruner", "grasprune")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def scale_sections(data: dict[str, Any]) -> dict[str, list[str]]:
    """The tables of random-weight models of three sizes (``sizes``) and of embedded real models (``real``)."""
    real = [r for r in data["rows"] if r.get("load_peak_over_weights") is not None]
    rows = [r for r in data["rows"] if r.get("load_peak_over_weights") is None]
    sizes = [
        "| size | params | method | windows | prune s | score s | calibration tok/s | peak RSS - bare / weights | load |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        windows = r["config"].get("num_windows") or r["config"].get("num_samples") or "-"
        sizes.append(
            f"| {r['size']} | {r['params'] / 1e6:,.0f}M | {r['method']} | {windows} | {r['prune_s']:.1f} | "
            f"{r['timings_s']['score_s']:.1f} | {_rate(r['calibration_tokens_per_s'])} | "
            f"{r['peak_over_weights']:.2f}x | {r.get('load_avg_1min_at_start', float('nan')):.1f} |"
        )
    growth = []
    for method in dict.fromkeys(r["method"] for r in rows):
        sized = sorted((r for r in rows if r["method"] == method), key=lambda r: r["params"])
        if len(sized) > 1:
            lo, hi = sized[0], sized[-1]
            growth.append(
                f"{method}: {hi['params'] / lo['params']:.1f}x the parameters took {hi['prune_s'] / lo['prune_s']:.1f}x the prune time, "
                f"memory {lo['peak_over_weights']:.2f}x -> {hi['peak_over_weights']:.2f}x the weights"
            )
    sizes += ["", "Growth with size: " + "; ".join(growth) + "." if growth else "Only one size was measured here; larger: `--sizes 0.5b,1b`."]
    out = {
        "sizes": sizes,
        "real": [
            "| model | params | keep | method | prune s | score s | calibration tok/s | peak RSS - bare / weights | target | loading peak / weights | load |",
            "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
        ],
    }
    for r in sorted(real, key=lambda r: (r["size"], -r["budget"], r["method"])):
        kind = "gradient" if r["method"] in GRADIENT_METHODS else "forward-only"
        met = "met" if r["peak_over_weights"] <= TARGETS[kind] else "MISSED"
        out["real"].append(
            f"| {r['size']} | {r['params'] / 1e9:.2f}B | {r['budget']:g} | {r['method']} | {r['prune_s']:.1f} | {r['timings_s']['score_s']:.1f} | "
            f"{_rate(r['calibration_tokens_per_s'])} | {r['peak_over_weights']:.2f}x | {met} (<= {TARGETS[kind]}x, {kind}) | "
            f"{r['load_peak_over_weights']:.2f}x | {r.get('load_avg_1min_at_start', float('nan')):.1f} |"
        )
    return out if real else {"sizes": sizes}


def scale_page() -> None:
    """Replace the generated tables of ``docs/scale.md`` from ``benchmarks/results/scale.json`` (the prose stays)."""
    for name, lines in scale_sections(json.loads((RESULTS / "scale.json").read_text())).items():
        replace_marked_section(DOCS / "scale.md", f"scale:{name}", "\n".join(lines))


def _gpu(name: str) -> Any:
    path = GPU_RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _prunes_lines(prunes: dict[str, Any]) -> list[str]:
    """The 1B-shape prunes through the command line: time and memory per mode."""
    streamed = "streamed: weights on the CPU, `offload: cpu`, layers on `cuda`"
    modes = {f"stream-{m}-1b": streamed for m in ("wanda-sp", "llm-pruner", "grasprune")}
    modes["prune-torchrun-grasprune-1b"] = "torchrun, 1 rank, `--device cuda`"
    out = [
        "| run | mode | kept of prunable | budget met | prune s (score s) | calibration tok/s | peak CUDA GiB | peak RSS GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, rep in prunes.items():
        mem, t, stats = rep["memory"], rep["timings"], rep["method_stats"]
        cuda = mem.get("cuda_peak_allocated_bytes")
        rate = stats["calibration_tokens"] / t["score_s"] if stats.get("calibration_tokens") else None
        rate = stats["gates"]["tokens_per_second"] if "gates" in stats else rate
        out.append(
            f"| {rep['method']} | {modes.get(name, 'one device, `--device cuda`')} | {rep['kept_fraction_of_prunable']:.4%} | "
            f"{'yes' if rep['kept_prunable_params'] <= rep['budget_prunable_params'] else 'NO'} | {t['total_s']:.1f} ({t['score_s']:.1f}) | "
            f"{_rate(rate)} | {'-' if cuda is None else f'{cuda / GIB:.2f}'} | {mem['peak_rss_bytes'] / GIB:.2f} |"
        )
    return out


def _compare_lines(compare: dict[str, Any]) -> list[str]:
    """The 1B-shape comparison on the device: measured against ideal speedups."""
    speed = compare["dense"]["eval"]["speed"]
    proto, dense = speed["protocol"], speed["model"]
    out = [
        "## `pruneframe compare` on the device",
        "",
        "The same model, `--methods magnitude,wanda-sp --budgets 0.8,0.5 --eval-windows 8 --seq-len 512`",
        "(perplexities of random weights carry no information and are left out here; the full report is",
        f"`benchmarks/results/gpu_check/compare_1b.md`). Speed: a {proto['prefill_len']}-token prefill and {proto['decode_tokens']} greedy decode",
        f"steps at batch {proto['batch_size']}, {proto['repeats']} alternating dense/pruned repeats, the "
        f"{'fastest' if proto['statistic'] == 'min' else proto['statistic']} of each.",
        "",
        "| method | budget | kept params | prefill speedup (ideal) | decode speedup (ideal) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in (r for r in compare["rows"] if r["kind"] == "pruned"):
        ideal = f"({row['ideal_speedup']:.2f}x)"
        speeds = f"{row['prefill_speedup']:.2f}x {ideal} | {row['decode_speedup']:.2f}x {ideal}"
        out.append(f"| {row['method']} | {row['budget']} | {row['kept_fraction']:.1%} | {speeds} |")
    rate = dense["prefill_tokens_per_s"]
    return out + [
        "",
        f"At batch {proto['batch_size']} a 1B model does not keep an H200 busy: the dense prefill runs at {rate:,.0f} tokens/s, "
        f"{rate * speed['flops_per_token'] / 1e12:.0f} TFLOP/s",
        "by the FLOPs count (NVIDIA's datasheet gives about 990 dense bf16 TFLOP/s), and decoding at "
        f"{dense['decode_tokens_per_s']:.0f} tokens/s. The time goes",
        "to kernel launches and Python, which pruning does not shrink, so the measured speedups stay near 1x;",
        "the ideal column is what fewer FLOPs buy once the device is busy (larger batches, longer sequences,",
        "larger models).",
        "",
    ]


def _methods_table(data: dict[str, Any]) -> list[str]:
    """One run of ``device_methods.py``: per method, CPU against device, masks compared (and perplexities, where measured)."""
    ppl = data.get("perplexity") or {}
    has_ppl = bool(ppl.get("windows"))
    out = []
    if has_ppl:
        out += [f"Perplexity: {ppl['windows']} windows of {ppl['seq_len']} tokens of `{ppl['source']}` (test), every pruned model evaluated on the device.", ""]
    # results written before the script read the peak ahead of the evaluation include it
    both = has_ppl and not any(r.get("device", {}).get("peak_scope") == "prune" for r in data["rows"])
    peak = "peak device GiB" + (" (prune + evaluation)" if both else "")
    header = f"| method | score s CPU | score s device | device tok/s | {peak} | mask agreement | seed 0 vs seed 1 (CPU) |"
    rule = "| --- | --- | --- | --- | --- | --- | --- |"
    out += [header + (" ppl CPU mask | ppl device mask | ppl seed 1 |" if has_ppl else ""), rule + (" --- | --- | --- |" if has_ppl else "")]
    for row in data["rows"]:
        if "error" in row:
            out.append(f"| {row['method']} | error: {row['error'][:80]} |")
            continue
        cpu, dev, ref = row["cpu"], row["device"], row.get("cpu_reference_seed")
        seed = "-" if "seed_agreement" not in row else format(row["seed_agreement"], ".2%")
        line = (
            f"| {row['method']} | {cpu['score_s']:.2f} | {dev['score_s']:.2f} | {_rate(dev['calibration_tokens_per_s'])} | "
            f"{dev['peak_device_bytes'] / GIB:.2f} | {row['mask_agreement']:.2%} | {seed} |"
        )
        seed_ppl = "-" if ref is None else f"{ref['ppl']:.1f}"
        out.append(line + (f" {cpu['ppl']:.1f} | {dev['ppl']:.1f} | {seed_ppl} |" if has_ppl else ""))
    return out + [""]


def _eval_lines(agreement: dict[str, Any]) -> list[str]:
    """Streamed evaluation (weights on the CPU, layers on the device) against the whole model on the device."""
    out = [
        "## Evaluation streamed layer by layer against the whole model",
        "",
        "The 1B-shape model evaluated twice on the device, `--eval-data embedded --eval-windows 8` and a made-up",
        "40-item multiple-choice task: once with the weights on the CPU and `--eval-compute-device cuda`, once",
        "whole on the GPU. Random weights, so only whether both passes agree matters.",
        "",
        "| what | streamed | whole | agreement |",
        "| --- | --- | --- | --- |",
    ]
    for source, r in agreement["perplexity"].items():
        out.append(f"| perplexity, {source} | {r['streamed']:.4f} | {r['whole']:.4f} | {abs(r['streamed'] / r['whole'] - 1):.1e} relative |")
    for task, r in agreement["zeroshot"].items():
        out.append(f"| accuracy, {task} | {r['acc_streamed']:.3f} | {r['acc_whole']:.3f} | {r['answered_alike']} of {r['items']} items alike |")
    return out


def _methods_lines(runs: dict[str, dict[str, Any] | None]) -> list[str]:
    """Each stored ``device_methods.py`` run under its title."""
    out: list[str] = []
    for title, data in runs.items():
        if data is not None:
            out += [f"### {title}", "", *_methods_table(data)]
    return out


def gpu_page() -> None:
    """Replace the generated sections of ``docs/gpu.md`` from ``benchmarks/results/gpu_check/*.json`` (the prose stays)."""
    env = _gpu("env")
    if env is None:
        raise SystemExit(f"no GPU check results in {GPU_RESULTS}; run benchmarks/gpu_check.sh on a GPU first")
    intro = [
        "Generated by `python benchmarks/docs_report.py gpu` from `benchmarks/results/gpu_check/*.json`, written by",
        "`benchmarks/gpu_check.sh` and `benchmarks/device_methods.py` on one "
        f"**{', '.join(env['devices'])}** (Python {env['python']}, torch {env['torch']}, transformers 5.24)",
        "with 16 CPU cores beside it. Every CPU figure on this page comes from those 16 cores, not from the",
        "2-core machine of the other documents. As everywhere, quote ratios measured in one run rather than",
        "absolute times.",
    ]
    methods = {
        "Short GRASPrune schedule (16 x 256 tokens, one epoch)": _gpu("methods_135m"),
        "GRASPrune at the main job's protocol (64 x 256 tokens, two epochs, `distill`), with perplexity": _gpu("methods_135m_protocol"),
    }
    sections = {"intro": intro, "methods": _methods_lines(methods)}
    if (steps := _gpu("steps")) is not None:
        sections["steps"] = ["| step | status | wall s |", "| --- | --- | --- |"]
        sections["steps"] += [f"| {s['name']} | {'ok' if s['status'] == '0' else 'failed (' + s['status'] + ')'} | {s['seconds']} |" for s in steps]
    for name, file, lines in (("prunes", "prunes_1b", _prunes_lines), ("compare", "compare_1b", _compare_lines), ("eval", "eval_agreement", _eval_lines)):
        if (data := _gpu(file)) is not None:
            sections[name] = lines(data)
    for name, lines in sections.items():
        replace_marked_section(DOCS / "gpu.md", f"gpu:{name}", "\n".join(lines))
