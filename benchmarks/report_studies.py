"""The recovery and width-or-depth sections of the model pages, with their figures (used by ``docs_report.py``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from common import RUNS, in_domain_source, keep_of
from pruneframe.harness.group_values import bytes_per_token, engine_speedup, kept_fraction, llamacpp_speedup, per_byte, speedup
from pruneframe.harness.summary import nested_get, summarise

#: The goals of the recovery work: the best recovered model's OOD geomean, per keep-ratio.
GOALS = {0.5: 3.0, 0.8: 1.35}
#: name -> (the comparison with recovery, the page holding its section).
RECOVERY = {
    "smollm2": (RUNS / "compare-recovery-smollm2-135m", "results-smollm2.md"),
    "gemma3": (RUNS / "compare-gemma3-270m", "results-gemma3.md"),
}
DEPTH_METHODS = ("shortgpt", "block-influence")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def recovery_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per summary group: method, budget, recovery, tokens, ratios and OOD geomean with intervals."""
    sources = results["summary"]["sources"]
    tokens: dict[tuple[str, str, str], dict[str, Any]] = {}
    for run in results["runs"]:
        if run.get("status") == "ok":
            protocol = run["protocol"]
            label = (protocol.get("recovery") or {}).get("label", "none")
            tokens[(protocol["method"]["name"], protocol["budget"]["label"], label)] = run.get("recovery") or {}
    out = []
    for group in results["summary"]["groups"]:
        record = tokens.get((group["method"], group["budget"], group["recovery"]), {})
        measures = group["measures"]
        row: dict[str, Any] = {
            "model": results["model"]["spec"],
            "method": group["method"],
            "budget": keep_of(group["budget"]),
            "recovery": group["recovery"].split()[0],
            "recovery_label": group["recovery"],
            "tokens": int(record.get("tokens", 0)),
            "recovery_wall_s": record.get("wall_s"),
            "recovery_tokens_per_s": record.get("tokens_per_s"),
        }
        for source in sources:
            if measure := measures.get(f"ratio:{source['label']}"):
                row[f"ratio_{source['label']}"] = measure["value"]
                row[f"ratio_{source['label']}_interval"] = [measure["low"], measure["high"]]
        ood = measures.get("ood")
        row["ood_geomean"] = ood["value"] if ood else None
        row["ood_geomean_interval"] = [ood["low"], ood["high"]] if ood else None
        row["rank"] = group["ranks"].get("ood")
        out.append(row)
    return sorted(out, key=lambda r: (-r["budget"], r["method"], r["recovery"] != "none", r["recovery"], r["tokens"]))


def recovery_figure(table: list[dict[str, Any]], in_domain: str | None, path: Path) -> None:
    """Ratio to dense against recovery tokens: rows of panels per budget, columns in-domain / OOD geomean."""
    plt = _pyplot()
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    budgets = sorted({r["budget"] for r in table}, reverse=True)
    columns = ([(f"ratio_{in_domain}", f"{in_domain} (in-domain)")] if in_domain else []) + [("ood_geomean", "out-of-domain geomean")]
    fig, axes = plt.subplots(len(budgets), len(columns), figsize=(6 * len(columns), 4 * len(budgets)), squeeze=False)
    methods = sorted({r["method"] for r in table})
    colours = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(methods)}
    budgets_tokens = sorted({r["tokens"] for r in table if r["recovery"] != "none" and r["tokens"]})
    origin = budgets_tokens[0] / 2 if budgets_tokens else 1  # where the unrecovered model is drawn
    for i, keep in enumerate(budgets):
        for j, (key, title) in enumerate(columns):
            ax = axes[i][j]
            for method in methods:
                base = next((r for r in table if r["budget"] == keep and r["method"] == method and r["recovery"] == "none"), None)
                for recovery, style in {"distill": "-", "lora": "--"}.items():
                    here = [r for r in table if (r["budget"], r["method"], r["recovery"]) == (keep, method, recovery) and r.get(key) is not None]
                    points = sorted((r["tokens"], r[key]) for r in here)
                    if base is not None and base.get(key) is not None:
                        points = [(origin, base[key]), *points]
                    if len(points) > 1:
                        ax.plot(*zip(*points), style, marker="o", color=colours[method], label=f"{method} {recovery}")
            ax.axhline(1.0, color="grey", lw=0.8)
            if keep in GOALS and key == "ood_geomean":
                ax.axhline(GOALS[keep], color="red", lw=0.8, ls=":", label=f"goal {GOALS[keep]}x")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(FixedLocator([origin, *budgets_tokens]))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: "none" if x == origin else f"{x / 1024:g}k"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
            low, high = ax.get_ylim()
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}") if high / low < 10 else NullFormatter())
            ax.set(xlabel="recovery tokens (log scale)", ylabel="perplexity / dense (log scale)", title=f"keep {keep}: {title}")
            ax.grid(True, which="both", alpha=0.3)
    _legend_and_save(fig, [row[-1] for row in axes], path, ncol=5, margin=(0.07, 0.02))


def _legend_and_save(fig: Any, axes: list[Any], path: Path, ncol: int, margin: tuple[float, float]) -> None:
    """One legend under the panels (each label once), room left for it, the figure saved to ``path``."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=ncol, fontsize=8)
    fig.tight_layout(rect=(0, margin[0] + margin[1] * math.ceil(len(seen) / ncol), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def _cell(row: dict[str, Any], key: str) -> str:
    value, interval = row.get(key), row.get(f"{key}_interval")
    if value is None:
        return "-"
    return f"{value:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else f"{value:.2f}"


def _recovery_lines(table: list[dict[str, Any]], results: dict[str, Any], figure_ref: str) -> list[str]:
    """The section: protocol, one table per budget, goals met or missed, the before/after tau."""
    sources, config = results["summary"]["sources"], results["config"]
    recovery = results.get("recovery") or {}
    stream = next(iter(recovery.values()), {})
    lines = [
        f"Model `{results['model']['spec']}` ({config['dtype']}); every method pruned once per budget, then each "
        f"recovery applied to that pruned model. Recovery text: `{stream.get('name')}` ({stream.get('origin')}, split "
        f"{stream.get('split')}, {stream.get('tokens_available', 0):,} tokens; development text, checked disjoint from "
        "every evaluation source). Every method got the same sequences in the same order (one `stream_sha256` per "
        "recovery: " + ", ".join(f"{label} `{s['stream_sha256']}`" for label, s in recovery.items()) + ").",
        "",
        "Cells: perplexity / dense on the same windows, 95% paired-bootstrap interval; "
        + ", ".join(
            f"`{s['label']}` {s['windows']} windows of {s['tokens'] + 1} tokens (dense ppl {s['dense_ppl']:.2f}{', in-domain' if s['in_domain'] else ''})"
            for s in sources
        )
        + ".",
        "",
    ]
    head = ["method", "recovery", "tokens", *(s["label"] + (" (in-domain)" if s["in_domain"] else "") for s in sources)]
    head += ["OOD geomean", "rank", "recovery s", "tokens/s"]
    for keep in sorted({r["budget"] for r in table}, reverse=True):
        members = [r for r in table if r["budget"] == keep]
        lines += [f"**keep {keep}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in members:
            rate = f"{r['recovery_tokens_per_s']:,.0f}" if r.get("recovery_tokens_per_s") else "-"
            wall = f"{r['recovery_wall_s']:.1f}" if r.get("recovery_wall_s") else "-"
            cells = [r["method"], r["recovery"], f"{r['tokens']:,}", *(_cell(r, f"ratio_{s['label']}") for s in sources)]
            lines.append("| " + " | ".join([*cells, _cell(r, "ood_geomean"), str(r.get("rank") or "-"), wall, rate]) + " |")
        recovered = [r for r in members if r["recovery"] != "none" and r.get("ood_geomean") is not None]
        before = [r for r in members if r["recovery"] == "none" and r.get("ood_geomean") is not None]
        if recovered and before:
            best, unrec = min(recovered, key=lambda r: r["ood_geomean"]), min(before, key=lambda r: r["ood_geomean"])
            goal = GOALS.get(keep)
            verdict = "" if goal is None else f" Goal <= {goal}x: **{'met' if best['ood_geomean'] <= goal else 'missed'}**."
            lines += [
                "",
                f"Best unrecovered OOD geomean: {unrec['method']} {unrec['ood_geomean']:.2f}x; best recovered: "
                f"{best['method']} with {best['recovery_label']} {best['ood_geomean']:.2f}x.{verdict}",
            ]
        if taus := results["summary"].get("kendall_tau_recovery", {}).get(f"keep {keep} of prunable params", {}):
            said = "; ".join(f"{label} {'-' if t is None else f'{t:+.2f}'}" for label, t in taus.items())
            lines += ["", f"Kendall tau between the methods' OOD order before and after recovery: {said}."]
        lines.append("")
    return lines + [f"![ratio to dense against recovery tokens]({figure_ref})", ""]


def recovery_section(results: dict[str, Any], figure_ref: str, figure_path: Path | None) -> tuple[list[dict[str, Any]], str]:
    """The rows and the section of a comparison with recovery; with ``figure_path``, its figure drawn there."""
    table = recovery_rows(results)
    if figure_path is not None:
        recovery_figure(table, in_domain_source(results), figure_path)
    return table, "\n".join(_recovery_lines(table, results, figure_ref))


def kind_of(method: str) -> str:
    """``depth``, ``mixed`` or ``width``, from the pipeline's name."""
    if method.split("@")[0].split("+")[0] in DEPTH_METHODS:
        return "depth"
    return "mixed" if method.endswith("@mixed") else "width"


def width_depth_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (method, budget) of a comparison without recovery: quality and HF speed."""
    in_domain = in_domain_source(results)
    speed = {(r["method"], r["budget"]): r for r in results["rows"] if r.get("kind") == "pruned" and r.get("recovery", "none") == "none"}
    out = []
    for group in results["summary"]["groups"]:
        if group["recovery"] != "none":
            continue
        ood, run, words = group["measures"]["ood"], speed.get((group["method"], group["budget"]), {}), group["budget"].split()
        out.append(
            {
                "model": results["model"]["spec"],
                "budget_kind": words[-2],
                "keep": float(words[1]),
                "method": group["method"],
                "kind": kind_of(group["method"]),
                "ood_geomean": ood["value"],
                "ood_low": ood["low"],
                "ood_high": ood["high"],
                "in_domain_source": in_domain,
                "in_domain_ratio": group["measures"].get(f"ratio:{in_domain}", {}).get("value") if in_domain else None,
                "prefill_speedup": run.get("prefill_speedup"),
                "decode_speedup": run.get("decode_speedup"),
                "ideal_speedup": run.get("ideal_speedup"),
                "kept_fraction_of_total": run.get("kept_fraction"),
            }
        )
    return out


def add_llamacpp(table: list[dict[str, Any]], llamacpp: dict[str, Any]) -> None:
    """Add llama.cpp's f16 speedups (``llamacpp_speed.py`` rows of the same model, method and prunable keep-ratio) where stored."""
    found = {
        (r["model"], r["method"], r["budget"]): r
        for r in llamacpp["rows"]
        if r["dtype"] == "f16" and r.get("round_to") is None and r.get("pad_ffn_to", 1) == 1 and "refused" not in r
    }
    for row in table:
        match = found.get((row["model"], row["method"], row["keep"])) if row["budget_kind"] == "prunable" else None
        if match:
            placements = match["dense"].get("placements", 1)
            row |= {
                "llamacpp_prefill_512": match["prefill_speedup"]["512"],
                "llamacpp_decode": match["decode_speedup"],
                "llamacpp_ideal_decode": match["ideal_speedup"]["decode"],
                "llamacpp_arch": match["arch"],
                "llamacpp_verified": match.get("verify_passed"),
                "llamacpp_repeats": f"{placements}x{match['dense']['repeats']}" if placements > 1 else str(match["dense"]["repeats"]),
            }


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def render_width_depth(table: list[dict[str, Any]], figure_ref: str) -> str:
    """The section: one table per model and budget convention, the best per kind, llama.cpp's speedups."""
    lines = [
        "### Width or depth at the same budget",
        "",
        "Generated by `python benchmarks/docs_report.py width-depth` from the width/depth comparisons (`examples/compare_width_depth_*.yaml`).",
        "`width`: FFN channels and KV groups, every layer keeps some of both; `depth`: whole layers (shortgpt) or whole",
        "attention / MLP blocks (block-influence); `mixed`: a width method allowed to empty blocks (`@mixed`). OOD: geometric",
        "mean over the out-of-domain sources of perplexity / dense perplexity, with the report's 95% bootstrap interval.",
        "Speedups: Hugging Face eager at batch 1 on the CPU, dense and pruned alternating, fastest repeat; ideal: the FLOPs ratio.",
        "",
    ]
    for model in sorted({r["model"] for r in table}):
        for budget_kind in ("prunable", "total"):
            part = [r for r in table if r["model"] == model and r["budget_kind"] == budget_kind]
            if not part:
                continue
            lines += [
                f"**{model}, keep-ratio of {budget_kind} parameters**",
                "",
                f"| keep | pipeline | removes | OOD geomean [95% CI] | {part[0]['in_domain_source']} (in-domain) | kept of total | prefill | decode | ideal |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for r in sorted(part, key=lambda r: (-r["keep"], r["ood_geomean"])):
                ood = f"{_f(r['ood_geomean'])} [{_f(r['ood_low'])}, {_f(r['ood_high'])}]"
                speed = f"{_f(r['prefill_speedup'])}x | {_f(r['decode_speedup'])}x | {_f(r['ideal_speedup'])}x"
                kept = _f(r["kept_fraction_of_total"], 3)
                lines.append(f"| {r['keep']:g} | `{r['method']}` | {r['kind']} | {ood} | {_f(r['in_domain_ratio'])} | {kept} | {speed} |")
            lines.append("")
            for keep in sorted({r["keep"] for r in part}, reverse=True):
                at = [r for r in part if r["keep"] == keep]
                best = {k: min((r for r in at if r["kind"] == k), key=lambda r: r["ood_geomean"], default=None) for k in ("width", "depth", "mixed")}
                said = ", ".join(f"{k} `{b['method']}` {_f(b['ood_geomean'])}x (decode {_f(b['decode_speedup'])}x)" for k, b in best.items() if b)
                lines.append(f"- keep {keep:g}: best OOD per kind: {said}.")
            lines.append("")
    if measured := [r for r in table if "llamacpp_decode" in r]:
        repeats = " / ".join(sorted({str(r.get("llamacpp_repeats", 3)) for r in measured}))
        lines += [
            "**In llama.cpp** (`benchmarks/llamacpp_speed.py`, f16, 1 thread, batch 1, 512-token prefill and 64-token decode,",
            f"fastest of {repeats} alternating repeats (PxR: R on each of P fresh copies of both files);",
            "ideal for decode: weight bytes read per token, dense over pruned):",
            "",
            "| model | keep (prunable) | pipeline | removes | architecture | prefill | decode | decode ideal | export check |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in sorted(measured, key=lambda r: (r["model"], -r["keep"], r["kind"], r["method"])):
            lines.append(
                f"| {r['model']} | {r['keep']:g} | `{r['method']}` | {r['kind']} | `{r['llamacpp_arch']}` | {_f(r['llamacpp_prefill_512'])}x | "
                f"{_f(r['llamacpp_decode'])}x | {_f(r['llamacpp_ideal_decode'])}x | {'passed' if r['llamacpp_verified'] else 'FAILED'} |"
            )
        lines.append("")
    return "\n".join(lines + [f"![OOD geomean against measured decode speedup, per model and budget]({figure_ref})", ""])


def width_depth_figure(table: list[dict[str, Any]], path: Path) -> None:
    """OOD geomean (log) against measured decode speedup: one panel per model and budget convention."""
    plt = _pyplot()
    panels = sorted({(r["model"], r["budget_kind"]) for r in table})
    cols = min(2, len(panels))
    fig, grid = plt.subplots(-(-len(panels) // cols), cols, figsize=(6.5 * cols, 4.5 * -(-len(panels) // cols)), squeeze=False)
    axes = list(grid.flat)
    markers = {"width": "o", "depth": "s", "mixed": "^"}
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(sorted({r["method"] for r in table}))}
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, (model, budget_kind) in zip(axes, panels):
        for r in (r for r in table if (r["model"], r["budget_kind"]) == (model, budget_kind) and r["decode_speedup"]):
            yerr = [[r["ood_geomean"] - r["ood_low"]], [r["ood_high"] - r["ood_geomean"]]]
            x, y = r["decode_speedup"], r["ood_geomean"]
            ax.errorbar(x, y, yerr=yerr, fmt=markers[r["kind"]], color=colours[r["method"]], label=f"{r['method']} ({r['kind']})", capsize=3)
            ax.annotate(f"{r['keep']:g}", (x, y), textcoords="offset points", xytext=(5, 3), fontsize=7)
        ax.set_yscale("log")
        ax.set(xlabel="measured decode speedup (HF, batch 1)", ylabel="OOD perplexity / dense (log)", title=f"{model}: keep of {budget_kind}")
        ax.grid(True, which="both", alpha=0.3)
    _legend_and_save(fig, axes, path, ncol=4, margin=(0.06, 0.03))


# --- the vocabulary as a unit ----------------------------------------------------------------------------


def vocabulary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (method, budget) of a comparison with vocabulary-trimming runs: bits per byte and speed per byte.

    ``ood_bpb_ratio``: the geometric mean over the out-of-domain sources of bits per byte over dense's (the
    report's ``bpb`` measure, with its interval); ``in_domain_bpb_ratio``: the same on the in-domain source.
    Bits per byte and their intervals are the stored report's; speedups per byte its functions'
    (:func:`pruneframe.harness.group_values.per_byte` over the runs of each group).
    """
    in_domain = in_domain_source(results)
    dense = results["dense"]
    summary = summarise(dense, results["runs"], nested_get(results, "calibration", "domain") or None)
    stored = {(g["method"], g["budget"], g["recovery"]): g["measures"] for g in results["summary"]["groups"]}
    vocabularies = [nested_get(r, "prune", "vocabulary") for r in results["runs"]]
    dense_tokens = next((v["dense_tokens"] for v in vocabularies if v), None)
    out = []
    for group in summary.groups:
        if group.recovery != "none":
            continue
        measures = stored[(group.method, group.budget, group.recovery)]
        words, bpb, vocabulary = group.budget.split(), measures["bpb"], nested_get(group.records[0], "prune", "vocabulary")
        speeds = {
            f"{name}_{phase}_speedup_per_byte": value.value if (value := per_byte(engine_speedup(group, phase, engine), group, dense)) else None
            for name, engine in (("hf", "torch"), ("llamacpp", "llamacpp"))
            for phase in ("prefill", "decode")
        }
        out.append(
            {
                "model": results["model"]["spec"],
                "budget": float(words[1]),
                "budget_kind": words[-2],
                "method": group.method,
                "vocab_size": vocabulary["tokens"] if vocabulary else dense_tokens,
                "kept_fraction_of_total": kept_fraction(group),
                "ood_bpb_ratio": bpb["value"],
                "ood_bpb_low": bpb["low"],
                "ood_bpb_high": bpb["high"],
                "in_domain_source": in_domain,
                "in_domain_bpb_ratio": measures.get(f"bpb:{in_domain}", {}).get("value") if in_domain else None,
                "ood_ppl_ratio": measures["ood"]["value"] if "ood" in measures else None,
                "bytes_per_token": bytes_per_token(group.records[0]),
                "dense_bytes_per_token": bytes_per_token(dense),
                **speeds,
                "hf_decode_speedup": (hf := speedup(group, "decode")) and hf.value,
                "llamacpp_decode_speedup": (cpp := llamacpp_speedup(group, "decode")) and cpp.value,
            }
        )
    return out


def render_vocabulary(table: list[dict[str, Any]], refused: list[str]) -> str:
    """The section: per model, every (budget, method) row, bits per byte in and out of domain, speed per byte."""
    lines = [
        "<!-- generated by benchmarks/docs_report.py vocabulary from docs/runs/compare-vocab-*/results.json; do not edit -->",
        "",
        "Generated by `python benchmarks/docs_report.py vocabulary` from the comparisons of `examples/compare_vocab_*.yaml`",
        "(rows in `benchmarks/results/vocabulary.json`). Budgets are keep-ratios of the **total** parameters. `vocab` trims",
        "the tokens alone (every width unit kept), `llm-pruner` cuts the width alone, `vocab+llm-pruner` both under one budget",
        "(tokens and units cut by about the same share). Bits per byte / dense: a trimmed tokenizer reads the same text in",
        "more tokens, so per-token perplexities are not comparable; OOD is the geometric mean over the out-of-domain",
        "sources with the report's 95% bootstrap interval. Speedups per byte: the speedup in tokens per second (same",
        "number of tokens, dense and pruned alternating) times bytes per token over dense's; HF eager at batch 1 on the",
        "CPU, llama.cpp f16 with 1 thread.",
        "",
    ]
    for model in sorted({r["model"] for r in table}):
        part = sorted((r for r in table if r["model"] == model), key=lambda r: (-r["budget"], r["ood_bpb_ratio"]))
        in_domain = part[0]["in_domain_source"]
        lines += [
            f"**{model}**",
            "",
            f"| keep (total) | method | tokens | kept of total | OOD bpb / dense [95% CI] | {in_domain} (in-domain) bpb / dense | bytes/token "
            "| HF prefill / byte | HF decode / byte | llama.cpp prefill / byte | llama.cpp decode / byte |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in part:
            ood = f"{_f(r['ood_bpb_ratio'], 3)} [{_f(r['ood_bpb_low'], 3)}, {_f(r['ood_bpb_high'], 3)}]"
            speeds = " | ".join(
                f"{_f(r[k])}x" if r[k] is not None else "-"
                for k in ("hf_prefill_speedup_per_byte", "hf_decode_speedup_per_byte", "llamacpp_prefill_speedup_per_byte", "llamacpp_decode_speedup_per_byte")
            )
            tokens = f"{r['vocab_size']:,}" if r["vocab_size"] else "-"
            lines.append(
                f"| {r['budget']:g} | `{r['method']}` | {tokens} | {_f(r['kept_fraction_of_total'], 3)} | {ood} | {_f(r['in_domain_bpb_ratio'], 3)} "
                f"| {_f(r['bytes_per_token'])} (dense {_f(r['dense_bytes_per_token'])}) | {speeds} |"
            )
        lines.append("")
    lines += [f"- {line}" for line in refused]
    return "\n".join([*lines, ""])


def _hidden_label(method: str, prune: dict[str, Any] | None) -> str:
    """The row's name: the method, with SliceGPT's per-layer form and a hidden width rounded by hand told apart."""
    rotation, round_to = nested_get(prune or {}, "config", "rotation"), nested_get(prune or {}, "config", "hidden_round_to")
    label = f"{method} (per-layer)" if rotation == "per-layer" else method
    return f"{label} (widths of {round_to})" if round_to else label


def hidden_rows(folders: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, budget, method, recovery) of the hidden-channel comparisons, with the run it came from.

    ``hidden_width`` is the kept hidden size (the dense one for a width-only method); llama.cpp's decode
    speedup is taken from whichever comparison of the same model measured that (method, budget) without
    recovery (recovery never changes a width). A row found in two comparisons (a speed-only rerun) is kept
    once, from the first; ``rerun_ood_geomean`` records the other's value where it differs. ``_record``
    (dropped before writing) is the run's stored record.
    """
    out: list[dict[str, Any]] = []
    llamacpp: dict[tuple[str, float, str], float] = {}
    for results in folders:
        model, dense_width = results["model"]["spec"], results["dense"]["eval"]["size"]["layers"][0]["hidden"]
        runs = {r["run_id"]: r for r in results["runs"]}
        pruned = {r["run_id"]: r for r in results["runs"] if r.get("kind") == "pruned"}
        sources = [s["label"] for s in results["summary"]["sources"] if not s["in_domain"]]
        for row in results["rows"]:
            if row.get("kind") not in ("pruned", "recovered") or row.get("status", "ok") != "ok" or row.get("ood_ratio") is None:
                continue
            base = pruned[row["run_id"].rsplit("+", 1)[0] if row["kind"] == "recovered" else row["run_id"]]
            label, keep = _hidden_label(row["method"], base.get("prune")), keep_of(row["budget"])
            width = nested_get(base, "prune", "hidden_size")
            if row["kind"] == "pruned" and row.get("llamacpp_decode_speedup") is not None:
                llamacpp[(model, keep, label)] = row["llamacpp_decode_speedup"]
            out.append(
                {
                    "model": model,
                    "keep": keep,
                    "budget_kind": row["budget"].split()[-2],
                    "method": label,
                    "cuts_hidden": width is not None,
                    "hidden_width": width if width is not None else dense_width,
                    "recovery": row["recovery"],
                    "kept_fraction_of_total": row.get("kept_fraction"),
                    "ood_geomean": row["ood_ratio"],
                    "ood_low": row.get("ood_ratio_low"),
                    "ood_high": row.get("ood_ratio_high"),
                    "ood_sources": sources,
                    "hf_decode_speedup": row.get("decode_speedup") if row["kind"] == "pruned" else None,
                    "_record": runs[row["run_id"]],
                }
            )
    unique: dict[tuple[str, float, str, str], dict[str, Any]] = {}
    for row in out:  # a speed-only rerun of a comparison repeats its unrecovered rows: the first is kept
        key = (row["model"], row["keep"], row["method"], row["recovery"])
        if key not in unique:
            unique[key] = row
        elif not math.isclose(unique[key]["ood_geomean"], row["ood_geomean"], rel_tol=1e-9):
            unique[key]["rerun_ood_geomean"] = row["ood_geomean"]  # shown, never hidden: the rerun pruned another model
    for row in unique.values():
        row["llamacpp_decode_speedup"] = llamacpp.get((row["model"], row["keep"], row["method"])) if row["recovery"] == "none" else None
    return list(unique.values())


def hidden_pairs(table: list[dict[str, Any]], paired: Any) -> list[dict[str, Any]]:
    """Per (model, budget, recovery): the best pipeline that cuts hidden channels over the best width-only one,
    out-of-domain geomean with ``paired(first_record, second_record, sources)``'s interval; ``width`` is None
    where no width-only pipeline reaches the budget."""
    cells = sorted({(r["model"], r["keep"], r["recovery"]) for r in table}, key=lambda c: (c[0], -c[1], c[2] != "none", c[2]))
    out = []
    for model, keep, recovery in cells:
        rows = [r for r in table if (r["model"], r["keep"], r["recovery"]) == (model, keep, recovery)]
        hidden = min((r for r in rows if r["cuts_hidden"]), key=lambda r: r["ood_geomean"], default=None)
        width = min((r for r in rows if not r["cuts_hidden"]), key=lambda r: r["ood_geomean"], default=None)
        if hidden is None:
            continue
        ratio = paired(hidden["_record"], width["_record"], hidden["ood_sources"]) if width is not None else None
        out.append(
            {
                "model": model,
                "keep": keep,
                "recovery": recovery,
                "best_hidden": hidden["method"],
                "best_hidden_ood": hidden["ood_geomean"],
                "best_width": width and width["method"],
                "best_width_ood": width and width["ood_geomean"],
                "ratio": ratio and ratio["value"],
                "ratio_low": ratio and ratio["low"],
                "ratio_high": ratio and ratio["high"],
            }
        )
    return out


def render_hidden(table: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> str:
    """The section: per model every row, then the paired best-hidden-over-best-width table and the goal's verdict."""
    lines = [
        "<!-- generated by benchmarks/docs_report.py hidden from docs/runs/compare-hidden-*/results.json; do not edit -->",
        "",
        "Generated by `python benchmarks/docs_report.py hidden` from the comparisons of `examples/compare_hidden_*.yaml`",
        "(rows and pairs in `benchmarks/results/hidden.json`). Budgets are keep-ratios of the **total** parameters; every",
        "run of a model scored the same windows (Moby-Dick and the embedded documentation out of domain, plus the",
        "embedded code for Qwen). OOD: geometric mean of perplexity / dense over the out-of-domain sources with its 95%",
        "bootstrap interval. Decode speedups against dense: HF eager at batch 1 (3 alternating repeats) and llama.cpp f16",
        "with 1 thread (`-`: not measured, or refused: uneven widths llama.cpp cannot hold, or shortcut matrices);",
        "recovery never changes a width, so speed is given on the unrecovered row. `distill 32k`: the shared `distill`",
        "recovery on 32,768 tokens of WikiText-2 validation, the same sequences for every run.",
        "",
    ]
    for model in sorted({r["model"] for r in table}):
        part = sorted((r for r in table if r["model"] == model), key=lambda r: (-r["keep"], r["recovery"] != "none", r["recovery"], r["ood_geomean"]))
        lines += [
            f"**{model}**",
            "",
            "| keep (total) | recovery | method | hidden width | kept of total | OOD ppl / dense [95% CI] | HF decode | llama.cpp decode |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in part:
            speed = " | ".join(f"{_f(r[k])}x" if r[k] is not None else "-" for k in ("hf_decode_speedup", "llamacpp_decode_speedup"))
            lines.append(
                f"| {r['keep']:g} | {r['recovery']} | `{r['method']}` | {r['hidden_width']} | {_f(r['kept_fraction_of_total'], 3)} "
                f"| {_f(r['ood_geomean'])} [{_f(r['ood_low'])}, {_f(r['ood_high'])}] | {speed} |"
            )
        lines.append("")
    lines += [
        "Best pipeline that cuts hidden channels over the best width-only pipeline (lowest OOD geomean in each cell),",
        "paired bootstrap over the same windows:",
        "",
        "| model | keep (total) | recovery | best hidden | best width-only | hidden / width [95% CI] |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in pairs:
        if p["best_width"] is None:
            lines.append(f"| {p['model']} | {p['keep']:g} | {p['recovery']} | `{p['best_hidden']}` {_f(p['best_hidden_ood'])} | none reaches this budget | - |")
        else:
            lines.append(
                f"| {p['model']} | {p['keep']:g} | {p['recovery']} | `{p['best_hidden']}` {_f(p['best_hidden_ood'])} | `{p['best_width']}` "
                f"{_f(p['best_width_ood'])} | {_f(p['ratio'], 3)} [{_f(p['ratio_low'], 3)}, {_f(p['ratio_high'], 3)}] |"
            )
    at_half = [p for p in pairs if p["keep"] == 0.5]
    models = sorted({p["model"] for p in at_half})
    won = sorted({p["model"] for p in at_half if p["ratio_high"] is not None and p["ratio_high"] < 1})
    unreachable = sorted({p["model"] for p in at_half if p["best_width"] is None} - set(won))
    lines += [
        "",
        f"Goal (keep 0.5 of the total, on at least two of the three models, the best hidden pipeline beats the best width-only one "
        f"with the paired interval below 1): met on {len(won)} of {len(models)} models measured ({', '.join(won) or 'none'}); "
        f"no width-only pipeline reaches keep 0.5 on {', '.join(unreachable) or 'none'}, so the pairing does not exist there.",
        "",
    ]
    return "\n".join(lines)
