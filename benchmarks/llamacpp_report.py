"""The generated section of ``docs/llamacpp.md`` from ``llamacpp_speed.py``'s and ``llamacpp_costs.py``'s JSON (``docs_report.py llamacpp``).

Per model: the dense checks, every row against the goals at keep 0.5 (f16: decode at least 0.95 x its ideal,
prefill 0.9 x; a block-quantized type: both 0.9 x), and for every missed goal the measurements that bear on it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pruneframe.util.io import replace_marked_section
from pruneframe.export.plan import DEFAULT_PAD_FFN_TO
from pruneframe.export.verify import TOLERANCES

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "benchmarks" / "results" / "llamacpp_speed.json"
COSTS = ROOT / "benchmarks" / "results" / "llamacpp_costs.json"
TARGET = ROOT / "docs" / "llamacpp.md"

#: (dtype, phase) -> the least fraction of the ideal speedup the goal asks for at keep 0.5.
GOALS: dict[tuple[str, str], float] = {
    ("f16", "decode"): 0.95,
    ("f16", "prefill"): 0.9,
    ("q8_0", "decode"): 0.9,
    ("q8_0", "prefill"): 0.9,
    ("q4_0", "decode"): 0.9,
    ("q4_0", "prefill"): 0.9,
}
_DTYPE_ORDER = ("f32", "f16", "bf16", "q8_0", "q4_0")
GOAL_BUDGET = 0.5


def _ideal_prefill(row: dict[str, Any], n: str) -> float:
    ideal = row["ideal_speedup"]["prefill"]
    return ideal[n] if isinstance(ideal, dict) else ideal


def _fractions(row: dict[str, Any]) -> dict[str, float]:
    """Measured speedup over ideal, per phase (prefill: the smaller of the prompt lengths' fractions)."""
    prefill = min(s / _ideal_prefill(row, n) for n, s in row["prefill_speedup"].items())
    return {"prefill": prefill, "decode": row["decode_speedup"] / row["ideal_speedup"]["decode"]}


def _misses(row: dict[str, Any]) -> list[str]:
    """The goals ``row`` misses (empty when it has none or meets them)."""
    if row["budget"] != GOAL_BUDGET:
        return []
    fr = _fractions(row)
    return [f"{phase} {fr[phase]:.3f} x ideal < {goal}" for (dtype, phase), goal in GOALS.items() if dtype == row["dtype"] and fr[phase] < goal]


def _check_failures(check: dict[str, Any]) -> list[str]:
    """What a stored ``--verify`` result exceeds under today's :data:`TOLERANCES` for its type."""
    tol = TOLERANCES[check["dtype"]]
    out = []
    if check["top1_agreement"] < tol.top1:
        out.append(f"top-1 {check['top1_agreement']:.1%} < {tol.top1:.0%}")
    if check["max_top5_prob_diff"] > tol.top5_prob:
        out.append(f"top-5 prob diff {check['max_top5_prob_diff']:.3f} > {tol.top5_prob}")
    if check["mean_kl"] > tol.kl:
        out.append(f"KL {check['mean_kl']:.1e} > {tol.kl:.0e}")
    return out


def _check_cell(check: dict[str, Any]) -> str:
    text = f"top-1 {check['top1_agreement']:.1%}, top-5 diff {check['max_top5_prob_diff']:.3f}, KL {check['mean_kl']:.1e}"
    return text + (" (FAILED)" if _check_failures(check) else "")


def _order(row: dict[str, Any]) -> tuple:
    return (
        row["model"] != "smollm2-135m",
        row["model"],
        -row["budget"],
        row.get("round_to") or 0,
        row.get("pad_ffn_to", 1),
        row["method"],
        _DTYPE_ORDER.index(row["dtype"]),
    )


def _label(row: dict[str, Any]) -> str:
    rt = f", round_to {row['round_to']}" if row.get("round_to") else ""
    rt += f", FFN padded to {row['pad_ffn_to']}" if row.get("pad_ffn_to") else ""
    return f"{row['method']} keep {row['budget']}{rt} {row['dtype']}"


def _evidence(row: dict[str, Any]) -> str:
    """The measurements beside a missed goal."""
    d, p = row["dense"], row["pruned"]
    ffn = row.get("ffn_widths") or []
    kv = row.get("kv_heads") or []
    parts = [f"`{row['arch']}` against dense `{row['dense_arch']}`"]
    if ffn:
        parts.append(
            f"FFN widths {min(ffn)}-{max(ffn)} ({len(set(ffn))} distinct; "
            f"{sum(f % 32 == 0 for f in ffn)}/{len(ffn)} layers a multiple of 32, "
            f"{sum(f % 64 == 0 for f in ffn)}/{len(ffn)} of 64)"
        )
    if kv:
        parts.append(f"KV heads per layer {min(kv)}-{max(kv)}")
    parts.append(
        f"decode {p['decode_tokens_per_s']:.1f} vs dense {d['decode_tokens_per_s']:.1f} tokens/s, prefill "
        + ", ".join(f"{n}: {p['prefill_tokens_per_s'][n]:.0f} vs {d['prefill_tokens_per_s'][n]:.0f}" for n in row["prefill_speedup"])
        + " tokens/s"
    )
    if row["notes"]:
        parts.append("export notes: " + "; ".join(row["notes"]))
    return ", ".join(parts)


def _repeats_cell(row: dict[str, Any]) -> str:
    """How many repeats timed the row (placements x repeats each), and whether their order was balanced (else the dense file always went first)."""
    placements = row["dense"].get("placements", 1)
    count = f"{placements}x{row['dense']['repeats']}" if placements > 1 else f"{row['dense']['repeats']}"
    return count + (" balanced" if row.get("balanced_order") else "")


def _placement_lines(row: dict[str, Any]) -> list[str]:
    """Per placement of a row: both copies' physically contiguous page runs and the median decode ratio of its repeats."""
    d, p = row["dense"], row["pruned"]
    n, runs_d, runs_p = d["repeats"], d.get("page_runs") or [], p.get("page_runs") or []
    if d.get("placements", 1) < 2 or len(runs_d) != d["placements"]:
        return []
    cells = []
    for i, (a, b) in enumerate(zip(runs_d, runs_p, strict=True)):
        ratio = statistics.median(y / x for x, y in zip(d["decode_samples"][i * n : (i + 1) * n], p["decode_samples"][i * n : (i + 1) * n], strict=True))
        layout = f"page runs {a} / {b}" if a is not None and b is not None else "page runs not readable"
        cells.append(f"{layout}: decode {ratio:.3f}x")
    return [f"  placements ({row['dtype']}): " + "; ".join(cells) + "."]


def _paired_cell(row: dict[str, Any]) -> str:
    """The per-repeat decode speedups: median [lowest, highest] and the median over ideal, or ``-`` for rows timed before they were kept."""
    paired = row.get("decode_speedup_paired")
    if not paired:
        return "-"
    return f"{paired['median']:.2f}x [{paired['low']:.2f}, {paired['high']:.2f}], {paired['median'] / row['ideal_speedup']['decode']:.2f} x ideal"


def _goal_cell(row: dict[str, Any]) -> str:
    """``met`` / ``missed`` on the fastest repeats (the goals' statistic), and whether the per-repeat median agrees on decode."""
    if row["budget"] != GOAL_BUDGET:
        return ""
    cell = "missed" if _misses(row) else "met"
    paired, goal = row.get("decode_speedup_paired"), GOALS.get((row["dtype"], "decode"))
    if paired and goal is not None:
        median_meets = paired["median"] / row["ideal_speedup"]["decode"] >= goal
        if median_meets != (row["decode_speedup"] / row["ideal_speedup"]["decode"] >= goal):
            cell += f" (decode median {'meets' if median_meets else 'misses'})"
    return cell


def _heads_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Rows timed over placements, by the share of KV heads they keep: the per-repeat median decode speedup over the bytes ideal."""
    timed = [r for r in rows if r["dense"].get("placements", 1) > 1 and r.get("kv_heads") and not r["method"].startswith("dense-")]
    if not timed:
        return []
    shaped = [r for r in rows if r.get("kv_heads") and r.get("ffn_widths")]  # the dense rows give the full widths
    dense_kv = max(max(r["kv_heads"]) for r in shaped) * len(timed[0]["kv_heads"])
    dense_ffn = max(max(r["ffn_widths"]) for r in shaped) * len(timed[0]["ffn_widths"])
    lines = [
        "",
        "**Decode against the KV heads kept** (rows timed over placements, per type from the most KV heads kept to the fewest; "
        "the bytes ideal counts weights only, not a kept head's KV-cache reads and attention):",
        "",
        "| type | method | keep | FFN padded to | KV heads kept | FFN channels written | decode per repeat / ideal |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(timed, key=lambda r: (_DTYPE_ORDER.index(r["dtype"]), -sum(r["kv_heads"]), r["method"])):
        median = r["decode_speedup_paired"]["median"] / r["ideal_speedup"]["decode"]
        lines.append(
            f"| {r['dtype']} | {r['method']} | {r['budget']} | {r.get('pad_ffn_to') or '-'} | {sum(r['kv_heads']) / dense_kv:.0%} | "
            f"{sum(r['ffn_widths']) / dense_ffn:.0%} | {median:.2f} |"
        )
    return lines


def _costs_lines(runs: list[dict[str, Any]]) -> list[str]:
    """One model's ``llamacpp_costs.py`` runs, per type and context: the latest run's fit and table, then every run's readings.

    The fit prices one KV group in FFN channels by time and by bytes; the table gives each file's measured
    and predicted speedup; with several runs of the same type and context, a line per file lists its
    measured speedup over the ideal in each run, oldest first (how far the same bytes move between runs).
    """
    lines: list[str] = []
    groups = _costs_groups(runs)
    for (dtype, context, prompts), same in sorted(groups.items(), key=lambda item: (_DTYPE_ORDER.index(item[0][0]), item[0][1:])):
        p, c = same[-1]["protocol"], same[-1]["costs"]
        longer = f", each repeat also prefilling {', '.join(map(str, prompts[1:]))} tokens (which sizes the context)" if len(prompts) > 1 else ""
        lines += [
            "",
            f"**Where decode time goes** ({dtype}, 64 tokens decoded after a {context}-token prompt{longer}, "
            f"{p['placements']}x{p['repeats']} repeats, `benchmarks/llamacpp_costs.py`, the latest of {len(same)} run(s)): shape "
            "variants of the dense model (the leading FFN channels or KV groups of every layer kept, every file timed in one run) "
            f"fit relative decode time = {c['fixed']:.3f} + {c['per_channel']:.3g} x FFN channels + {c['per_group']:.3g} x KV groups "
            f"(largest residual {c['largest_residual']:.3f}). One KV group (its query heads, their weights, KV cache and "
            f"attention) takes the time of {c['group_in_channels_by_time']:.0f} FFN channels; by bytes it weighs "
            f"{c['group_in_channels_by_bytes']:.0f}. Predicted: the speedup that fit gives each file's shape. A twin is a "
            "checkpoint's per-layer widths cut from the dense weights; the control is a second export of the dense model.",
            "",
            "| file | FFN channels | KV groups | decode ideal (bytes) | decode per repeat | predicted | per repeat / ideal | predicted / ideal |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in same[-1]["rows"]:
            lines.append(
                f"| {r['file']}{'' if r['kind'] == 'checkpoint' else ' (' + r['kind'] + ')'} | {r['ffn_channels']} | {r['kv_groups']} | "
                f"{r['ideal_decode']:.2f}x | {r['decode_speedup']:.2f}x [{1 / r['relative_time_spread'][1]:.2f}, "
                f"{1 / r['relative_time_spread'][0]:.2f}] | {r['predicted_speedup']:.2f}x | {r['measured_over_ideal']:.2f} | "
                f"{r['predicted_over_ideal']:.2f} |"
            )
        if len(same) > 1:
            lines += _replicate_lines(same)
    return lines


def _costs_groups(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, int, tuple[int, ...]], list[dict[str, Any]]]:
    """``runs`` by type, decode context and prompt lengths, oldest first (runs without ``prefill_lens`` prefilled the context only)."""
    groups: dict[tuple[str, int, tuple[int, ...]], list[dict[str, Any]]] = {}
    for run in runs:
        p = run["protocol"]
        groups.setdefault((p["dtype"], p["context"], tuple(p.get("prefill_lens", [p["context"]]))), []).append(run)
    return groups


def _costs_evidence(row: dict[str, Any], runs: Sequence[dict[str, Any]]) -> str:
    """The same file's readings in ``llamacpp_costs.py`` runs (which export with the default padding), per prompt setting, or nothing."""
    if row["dtype"] == "f16" and row.get("pad_ffn_to") != DEFAULT_PAD_FFN_TO:
        return ""  # the costs runs timed other bytes (padded widths)
    name = f"{row['method']}-{row['budget']}"
    groups = _costs_groups([run for run in runs if run["protocol"]["model"] == row["model"] and run["protocol"]["dtype"] == row["dtype"]])
    parts = []
    for (_, context, prompts), same in sorted(groups.items()):
        found = [r for run in same for r in run["rows"] if r["file"] == name]
        if not found:
            continue
        readings = ", ".join(f"{r['measured_over_ideal']:.2f}" for r in found)  # in run order
        twins = [r["measured_over_ideal"] for run in same for r in run["rows"] if r["file"] == f"{name}-twin"]
        twin = f" (its twin, the same widths cut from the dense weights: {', '.join(f'{t:.2f}' for t in twins)})" if twins else ""
        predicted = ", ".join(f"{r['predicted_over_ideal']:.2f}" for r in found)
        setting = f"after a {context}-token prompt" + (f" with {', '.join(map(str, prompts[1:]))}-token prefills" if len(prompts) > 1 else "")
        parts.append(f"{setting} its decode per repeat reads {readings} x ideal{twin}, the shape fit predicts {predicted}")
    return "; in `llamacpp_costs.py` runs " + "; ".join(parts) if parts else ""


def _replicate_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Every file timed in any of ``runs`` (same type and context): its decode per repeat over the ideal in each run (- where not timed)."""
    readings: dict[str, list[str]] = {}
    for i, run in enumerate(runs):
        for r in run["rows"]:
            if r["file"] != "dense":
                readings.setdefault(r["file"], ["-"] * len(runs))[i] = f"{r['measured_over_ideal']:.2f}"
    prices = ", ".join(f"{run['costs']['group_in_channels_by_time']:.0f}" for run in runs)
    head = f"Every file in each of the {len(runs)} runs (decode per repeat / ideal, oldest first; one KV group in FFN channels by time: {prices}):"
    return ["", head, ""] + [f"- {name}: {', '.join(values)}" for name, values in readings.items()]


def _noise_lines(rows: list[dict[str, Any]]) -> list[str]:
    """What the dense-vs-dense rows say about the measurement's own spread."""
    aa = [r for r in rows if r["method"] == "dense-vs-dense" and "decode_speedup" in r]
    if not aa:
        return []
    lines = ["", "**The measurement's own spread** (the dense file timed against a byte-identical copy; every speedup should be 1.00x):", ""]
    for r in aa:
        paired = r.get("decode_speedup_paired")
        spread = f", per-repeat decode ratios {paired['low']:.2f}-{paired['high']:.2f}" if paired else ""
        lines.append(
            f"- {r['dtype']}, {_repeats_cell(r)} repeats: fastest-repeat decode {r['decode_speedup']:.3f}x, prefill "
            + ", ".join(f"{n}: {v:.3f}x" for n, v in r["prefill_speedup"].items())
            + spread
            + "."
        )
        lines += _placement_lines(r)
    return lines


def _geomean_ratio(sources: dict[str, dict[str, float]], pruned: str, dense: str) -> float:
    return math.exp(sum(math.log(s[pruned] / s[dense]) for s in sources.values()) / len(sources))


def _perplexity_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The table of GGUF perplexities (llama.cpp's own logits) beside the checkpoints' (transformers, float32)."""
    scored = [r for r in rows if r.get("perplexity")]
    if not scored:
        return []
    first = scored[0]["perplexity"]
    lines = [
        "",
        f"**Perplexity in llama.cpp** (the first {first['windows']} window(s) of {first['seq_len']} tokens of each "
        f"out-of-domain test source: {', '.join(first['sources'])}; geometric mean of the pruned/dense ratios). "
        "The GGUF ratio is computed from llama.cpp's own logits on both files of the row's type; the transformers "
        "ratio from both checkpoints in float32, on the same windows:",
        "",
        "| method | keep | round_to | type | GGUF ratio | transformers ratio | GGUF dense ppl / transformers dense ppl |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in scored:
        s = r["perplexity"]["sources"]
        drift = _geomean_ratio(s, "gguf_dense", "hf_dense")
        lines.append(
            f"| {r['method']} | {r['budget']} | {r.get('round_to') or '-'} | {r['dtype']} | {_geomean_ratio(s, 'gguf_pruned', 'gguf_dense'):.2f}x | "
            f"{_geomean_ratio(s, 'hf_pruned', 'hf_dense'):.2f}x | {drift:.3f} |"
        )
    return lines


def _model_section(model: str, rows: list[dict[str, Any]], machine: dict[str, Any], costs: Sequence[dict[str, Any]] = ()) -> list[str]:
    """One model's tables: the dense checks, the speed rows, the refusals, the perplexities and the missed goals."""
    measured = [r for r in rows if "refused" not in r]
    refused = [r for r in rows if "refused" in r]
    lines = [f"## {model}", ""]
    dense_arch = sorted({r["dense_arch"] for r in measured})
    if measured:
        lines += [
            f"Dense in llama.cpp's own `{'`, `'.join(dense_arch)}`. **The dense model's own check in each type** (what the type "
            "costs before any pruning) and the tolerances `--verify` applies (`pruneframe.export.verify.TOLERANCES`):",
            "",
            "| type | dense export's check | tolerance: top-1 at least | top-5 diff at most | mean KL at most |",
            "| --- | --- | --- | --- | --- |",
        ]
    dense_checks = {r["dtype"]: r["dense_verify"] for r in measured if r.get("dense_verify")}
    for dtype in sorted(dense_checks, key=_DTYPE_ORDER.index):
        tol = TOLERANCES[dtype]
        lines.append(f"| {dtype} | {_check_cell(dense_checks[dtype])} | {tol.top1:.0%} | {tol.top5_prob} | {tol.kl:.0e} |")
    if measured:
        lines += [
            "",
            "| method | keep | round_to | FFN padded to | type | arch | check | prefill 256 | prefill 512 | prefill ideal (256) "
            "| prefill / ideal | decode | decode per repeat | decode ideal | decode / ideal | goals | repeats |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
    for r in measured:
        ps, ideal, fr = r["prefill_speedup"], r["ideal_speedup"], _fractions(r)
        goal = _goal_cell(r)
        lines.append(
            f"| {r['method']} | {r['budget']} | {r.get('round_to') or '-'} | {r.get('pad_ffn_to') or '-'} | {r['dtype']} | {r['arch']} | "
            f"{_check_cell(r['verify'])} | {ps['256']:.2f}x | {ps['512']:.2f}x | {_ideal_prefill(r, '256'):.2f}x | "
            f"{fr['prefill']:.2f} | {r['decode_speedup']:.2f}x | {_paired_cell(r)} | {ideal['decode']:.2f}x | {fr['decode']:.2f} | "
            f"{goal} | {_repeats_cell(r)} |"
        )
    if refused:
        lines += ["", "Refused by the exporter (nothing written):", ""]
        lines += [f"- {_label(r)}: {r['refused']}" for r in refused]
    lines += _noise_lines(measured)
    lines += _heads_lines(measured)
    lines += _costs_lines([run for run in costs if run["protocol"]["model"] == model])
    lines += _perplexity_lines(measured)
    missed = [r for r in measured if _misses(r)]
    lines += ["", f"Where the goals are missed ({model}):", ""]
    if not missed:
        lines.append(f"Every row at keep {GOAL_BUDGET} meets its goals.")
    for r in missed:
        lines.append(f"- **{_label(r)}**: {'; '.join(_misses(r))}. {_evidence(r)}{_costs_evidence(r, costs)}.")
    return lines + [""]


def render(data: dict, costs: Sequence[dict[str, Any]] = ()) -> str:
    """The page's generated section: protocol, goals, then per model its checks, speed rows, refusals, decode costs, perplexities and missed goals.

    ``costs`` holds the runs of ``llamacpp_costs.py`` (its JSON's ``runs``).
    """
    p = data["protocol"]
    rows = sorted(data["rows"], key=_order)
    repeats = sorted({_repeats_cell(r).split()[0] for r in rows if "dense" in r})
    lines = [
        "<!-- generated by benchmarks/docs_report.py llamacpp from benchmarks/results/llamacpp_speed.json; do not edit -->",
        "",
        "Pruned checkpoints exported with `pruneframe export --format gguf` and run in llama.cpp (the `xllamacpp` "
        f"build of the `deploy` extra) on {p['machine']}. Batch {p['batch']}, {p['threads']} thread, prefill of "
        f"{' and '.join(map(str, p['prefill_lens']))}-token prompts, {p['decode_tokens']}-token decode, dense and "
        f"pruned alternating, fastest of {' / '.join(repeats)} repeats (PxR: R repeats on each of P fresh copies of both files). "
        "Speedups are against the dense model "
        "exported as the family's own llama.cpp architecture in the same type (what a user runs today). Ideal: FLOPs "
        "per token at the prompt's length (prefill) and bytes of weights read per decoded token in the two files "
        "(decode; zero padding counts), dense over pruned. The check column is the export's agreement with the "
        "checkpoint in transformers (`--verify`: top-1 agreement over 256+ positions, the largest top-5 "
        "probability difference and mean KL), FAILED where it exceeds the type's tolerance. Decode per repeat: the "
        "ratio within each repeat (both files timed seconds apart), median [lowest, highest], where the row kept its repeats. "
        "Repeats: how many, and `balanced` where half of them loaded the pruned file first and the files took turns "
        "going first in each half (`pruneframe.export.speed`); the other rows timed the dense file first every time.",
        "",
        f"**Goals at keep {GOAL_BUDGET}**: " + "; ".join(f"{dtype} {phase} at least {goal} x ideal" for (dtype, phase), goal in GOALS.items()) + ".",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += _model_section(model, [r for r in rows if r["model"] == model], p, costs)
    return "\n".join(lines)


def write_page(source: Path = SOURCE, costs: Path = COSTS, target: Path = TARGET) -> None:
    """Replace the generated section of ``docs/llamacpp.md`` (its notes below the section are written by hand)."""
    cost_runs = json.loads(costs.read_text())["runs"] if costs.exists() else []
    replace_marked_section(target, "llamacpp", render(json.loads(source.read_text()), cost_runs))
