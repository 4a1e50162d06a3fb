"""Regenerate the generated sections of the docs from stored results; nothing is pruned, trained or timed.

    python benchmarks/docs_report.py all                    # every section, from the stored results
    python benchmarks/docs_report.py recovery --name gemma3 results/compare-gemma3-270m   # one, from a new run

Sections (each between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` of its page): ``summary`` and
``ranking-transfer`` (``docs/results.md``), ``reports`` (each model's main report, as ``pruneframe report``
renders it, on its page ``docs/results-*.md``), ``recovery`` (``recovery:smollm2``, ``recovery:gemma3``),
``width-depth`` and ``pipeline-selection`` (``docs/results-pipelines.md``), ``domains``
(``docs/results-grasprune.md``), ``vocabulary`` (``docs/results.md``), and the pages ``llamacpp``, ``scale`` and ``gpu``. The rows behind the
sections are kept in ``benchmarks/results/`` (rewritten only when they change); ``--figures`` redraws the
recovery and width-or-depth figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any

import llamacpp_report
import report_machines
import report_studies
from common import CONTROLS, DOCS, RESULTS, ROOT, RUNS, in_domain_source, is_pipeline, keep_of, load_results, protocol_mismatch, write_json_if_changed
from pipeline_selection import render as render_selection
from pruneframe.evaluation.stats import kendall_tau, ratio_interval
from pruneframe.harness.report import markdown, read_results, rows
from pruneframe.harness.summary import nested_get, summarise
from pruneframe.util.io import replace_marked_section

#: The models of the main comparisons: display name and the page of their report.
MODELS = {
    "smollm2-135m": ("SmolLM2-135M", "results-smollm2.md"),
    "gemma3-270m": ("Gemma 3 270M", "results-gemma3.md"),
    "qwen2.5-coder-0.5b": ("Qwen2.5-Coder 0.5B", "results-qwen.md"),
    "qwen2.5-coder-1.5b": ("Qwen2.5-Coder 1.5B", "results-qwen.md"),
}
SUMMARY_BUDGETS = (0.8, 0.5)
LLAMACPP = RESULTS / "llamacpp_speed.json"


def _rel(path: Path) -> str:
    return str(path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path)


def _main_runs() -> list[Path]:
    return [RUNS / f"compare-{spec}" for spec in MODELS if (RUNS / f"compare-{spec}").exists()]


def _fmt(cell: dict[str, float]) -> str:
    return f"{cell['value']:.2f}x [{cell['low']:.2f}, {cell['high']:.2f}]"


# --- summary -------------------------------------------------------------------------------------------


def pooled_cells(main: str, comparisons: dict[str, dict[str, Any]]) -> dict[tuple[str, float, str], dict[str, Any]]:
    """(method, keep, recovery) -> OOD geomean, rank and source of every comparison in the protocol of comparison ``main``.

    Budgets of prunable parameters only. The main comparison comes first, so a row it holds is never
    replaced by another comparison's.
    """
    cells: dict[tuple[str, float, str], dict[str, Any]] = {}
    reference = comparisons[main]
    for name in [main, *sorted(set(comparisons) - {main})]:
        results = comparisons[name]
        if results["model"]["spec"] != reference["model"]["spec"] or results["config"]["budget_kind"] != "prunable":
            continue
        if protocol_mismatch(results, reference):
            continue
        for group in results["summary"]["groups"]:
            if "ood" in group["measures"]:
                found = {k: group["measures"]["ood"][k] for k in ("value", "low", "high")} | {"rank": group["ranks"]["ood"], "source": name}
                cells.setdefault((group["method"], keep_of(group["budget"]), group["recovery"]), found)
    return cells


def decode_speedups(llamacpp: dict[str, Any]) -> dict[tuple[str, str, float], dict[str, Any]]:
    """(model, method, keep) -> llama.cpp's f16 decode speedup of the checkpoint as pruned (no ``round_to``, no padding)."""
    return {
        (r["model"], r["method"], r["budget"]): r
        for r in llamacpp["rows"]
        if r["dtype"] == "f16" and r.get("round_to") is None and r.get("pad_ffn_to", 1) == 1 and "refused" not in r
    }


def _summary_cell(found: list[tuple[tuple[str, float, str], dict[str, Any]]], model: str, speed: dict[tuple[str, str, float], dict[str, Any]]) -> str:
    """The lowest of ``found``, the candidates its report ranks alike (ties), and its llama.cpp decode speedup."""
    if not found:
        return "not run"
    (method, keep, recovery), cell = min(found, key=lambda kv: kv[1]["value"])
    second_look = "†" if cell["source"].startswith("selected-per-cell-") else ""
    text = f"{method}{'' if recovery == 'none' else ' + ' + recovery}{second_look} {_fmt(cell)}"
    ties = [f"{k[0]} {v['value']:.2f}x" for k, v in found if k[0] != method and (v["source"], v["rank"]) == (cell["source"], cell["rank"])]
    text += f", tied with {', '.join(ties)}" if ties else ""
    row = speed.get((model, method, keep))
    if row is None:
        return text
    paired = row.get("decode_speedup_paired")
    if paired:
        return text + f"; decode {paired['median']:.2f}x [{paired['low']:.2f}, {paired['high']:.2f}]"
    return text + f"; decode {row['decode_speedup']:.2f}x*"


def render_summary(comparisons: dict[str, dict[str, Any]], llamacpp: dict[str, Any]) -> str:
    """The one-screen summary: per model and budget the best method and the best pipeline, unrecovered and recovered."""
    speed = decode_speedups(llamacpp)
    lines = [
        "<!-- generated by benchmarks/docs_report.py summary from docs/runs/*/results.json and benchmarks/results/llamacpp_speed.json; do not edit -->",
        "",
        "| model | keep (prunable) | best method | best method, recovered | best pipeline | best pipeline, recovered |",
        "|---|---|---|---|---|---|",
    ]
    for spec, (name, page) in MODELS.items():
        if f"compare-{spec}" not in comparisons:
            continue
        cells = pooled_cells(f"compare-{spec}", comparisons)
        for keep in SUMMARY_BUDGETS:
            picks = []
            for pipeline, recovered in ((False, False), (False, True), (True, False), (True, True)):
                found = [
                    (k, v)
                    for k, v in cells.items()
                    if k[1] == keep and is_pipeline(k[0]) == pipeline and k[0] not in CONTROLS and (k[2] != "none") == recovered
                ]
                picks.append(_summary_cell(found, spec, speed))
            lines.append(f"| [{name}]({page}) | {keep} | " + " | ".join(picks) + " |")
    lines += [
        "",
        "Cells: the lowest out-of-domain geomean of perplexity / dense (the geometric mean over the sources outside the "
        "calibration text's domain), with its 95% paired-bootstrap interval over windows, as the model's report gives it. "
        "A method is a published method's own pipeline (`random`, a control, is left out); a pipeline is assembled from "
        "pruneframe's parts (a scorer with a `+RECALIBRATION` or `@REMOVAL`). Candidates: every row of a stored comparison "
        "in the model's main protocol (the weights load, calibration, dtype and windows of `docs/runs/compare-MODEL`), "
        "budgets of prunable parameters; rows of other protocols (development text, budgets of all parameters, other "
        "windows, another weights load) are on the model pages only. Decode: llama.cpp's f16 decode speedup over dense of "
        "the same method and budget as pruned (1 thread, batch 1; `docs/llamacpp.md`), the median of the per-repeat "
        "speedups [lowest, highest]; * the fastest repeat, where the row kept no per-repeat speedups. Tied: the candidates "
        "of the same kind that the same report ranks alike (rank: 1 + the methods better beyond the paired interval). † A pick "
        "of the second, per-cell selection rule, fixed after a look at the test text (`docs/results-pipelines.md`). "
        "One seed (SmolLM2's GRASPrune and random: two) and 4-8 windows per source.",
    ]
    return "\n".join(lines)


def summary(args: argparse.Namespace) -> None:
    """Write the summary section of ``docs/results.md``."""
    comparisons = {p.parent.name: load_results(p) for p in RUNS.glob("*/results.json")}
    replace_marked_section(DOCS / "results.md", "summary", render_summary(comparisons, json.loads(LLAMACPP.read_text())))


# --- the model reports ---------------------------------------------------------------------------------


def render_report(results_json: Path) -> str:
    """A comparison's report as ``pruneframe report`` writes it, without its title line."""
    meta, dense, runs = read_results(results_json)
    found = summarise(dense, runs, nested_get(meta, "calibration", "domain") or None)
    text = markdown(rows(dense, runs, meta["units"].get("total_params"), found), meta, dense, found)
    return text.split("\n", 2)[2]


def reports(args: argparse.Namespace) -> None:
    """Write each model's main report into its page."""
    for folder in args.results or _main_runs():
        spec = load_results(folder)["model"]["spec"]
        replace_marked_section(DOCS / MODELS[spec][1], f"report:{spec}", render_report(folder / "results.json"))


# --- ranking transfer ----------------------------------------------------------------------------------


def model_rows(results: dict[str, Any], sources: list[str]) -> list[dict[str, Any]]:
    """Per (method, budget) of one comparison: its ratio on each of ``sources`` and their geometric mean."""
    known = {s["label"]: s for s in results["summary"]["sources"]}
    if missing := [s for s in sources if s not in known]:
        raise ValueError(f"{results['model']['spec']}: no evaluation on {', '.join(missing)}")
    if in_domain := [s for s in sources if known[s]["in_domain"]]:
        raise ValueError(f"{results['model']['spec']}: {', '.join(in_domain)} is in-domain there")
    out = []
    for group in results["summary"]["groups"]:
        if group["recovery"] != "none":
            continue
        ratios = {s: group["measures"][f"ratio:{s}"]["value"] for s in sources}
        out.append(
            {
                "model": results["model"]["spec"],
                "method": group["method"],
                "budget": keep_of(group["budget"]),
                "ratios": ratios,
                "ood_geomean": math.exp(sum(math.log(r) for r in ratios.values()) / len(ratios)),
                "in_domain_source": in_domain_source(results),
                "own_ood_sources": [s["label"] for s in results["summary"]["sources"] if not s["in_domain"]],
            }
        )
    return out


def _ranked(table: list[dict[str, Any]]) -> None:
    """Add ``rank`` (1 = lowest geomean) per (model, budget)."""
    ordered = sorted(table, key=lambda r: (r["model"], r["budget"], r["ood_geomean"]))
    for _, group in itertools.groupby(ordered, key=lambda r: (r["model"], r["budget"])):
        for rank, row in enumerate(group, start=1):
            row["rank"] = rank


def render_ranking(table: list[dict[str, Any]], sources: list[str]) -> str:
    """Per budget, a method x model table of geomean (rank), the pairwise taus, and what holds on every model."""
    models = list(dict.fromkeys(r["model"] for r in table))
    lines = [
        "<!-- generated by benchmarks/docs_report.py ranking-transfer from the stored results.json of each comparison; do not edit -->",
        "",
        f"Out-of-domain geomean over the sources every comparison evaluated out of domain ({', '.join(sources)}), "
        "ratio to each model's dense perplexity, unrecovered; rank: the order of the point values (1 = lowest; "
        "the reports rank by intervals instead). In-domain (the calibration text's domain) for every model: "
        + "; ".join(f"`{m}`: {next(r['in_domain_source'] for r in table if r['model'] == m)}" for m in models)
        + ". Each model's own report may rank on more sources: "
        + "; ".join(f"`{m}`: {', '.join(next(r['own_ood_sources'] for r in table if r['model'] == m))}" for m in models)
        + ".",
    ]
    for budget in sorted({r["budget"] for r in table}, reverse=True):
        at = [r for r in table if r["budget"] == budget]
        methods = sorted({r["method"] for r in at})
        cell = {(r["method"], r["model"]): r for r in at}
        lines += ["", f"**keep {budget}**", "", "| method | " + " | ".join(f"`{m}`" for m in models) + " |", "|---|" + "---|" * len(models)]
        for method in sorted(methods, key=lambda m: sum(cell[(m, x)]["rank"] for x in models if (m, x) in cell)):
            found = [f"{cell[(method, m)]['ood_geomean']:.2f}x ({cell[(method, m)]['rank']})" if (method, m) in cell else "-" for m in models]
            lines.append(f"| {method} | " + " | ".join(found) + " |")
        lines += ["", "Kendall tau between two models' orders of the methods both ran:", ""]
        for a, b in itertools.combinations(models, 2):
            common = [m for m in methods if (m, a) in cell and (m, b) in cell]
            tau = kendall_tau([cell[(m, a)]["ood_geomean"] for m in common], [cell[(m, b)]["ood_geomean"] for m in common])
            lines.append(f"- `{a}` ~ `{b}`: " + ("n/a" if tau is None else f"{tau:+.2f}") + f" ({len(common)} methods)")
        everywhere = [m for m in methods if all((m, x) in cell for x in models)]
        same = [m for m in everywhere if len({cell[(m, x)]["rank"] for x in models}) == 1]
        firsts = {x: next(r["method"] for r in at if r["model"] == x and r["rank"] == 1) for x in models}
        held = ", ".join(f"{m} ranks {cell[(m, models[0])]['rank']}" for m in same) if same else "no method keeps the same rank"
        lines += ["", f"Holds on every model: {held}; best: " + ", ".join(f"`{x}` {m}" for x, m in firsts.items()) + "."]
    return "\n".join(lines)


def ranking_transfer(args: argparse.Namespace) -> None:
    """Write the ranking-transfer rows and section (the sources every main comparison evaluates out of domain)."""
    sources = ["moby-dick", "embedded"]
    table = [row for path in args.results or _main_runs() for row in model_rows(load_results(path), sources)]
    _ranked(table)
    write_json_if_changed(RESULTS / "ranking_transfer.json", {"sources": sources, "rows": table})
    replace_marked_section(DOCS / "results.md", "ranking-transfer", render_ranking(table, sources))


# --- GRASPrune's configurations across domains -----------------------------------------------------------

DEV = ("wiki-valid-heldout", "moby-dick-dev", "python-docs-dev")
TEST = ("wikitext-2-test", "moby-dick-test", "python-docs-test")


def render_domains(data: dict[str, Any]) -> str:
    """Per budget, every run's ratio to dense per source with intervals, the OOD geomeans and the development rule's choice."""
    dense, evaluation = data["dense"], next(iter(data["protocol"]["evaluation"].values()))
    seq_len = evaluation["seq_len"]

    def cell(run: dict[str, Any], source: str) -> str:
        """``ratio [low, high]`` of one run on one source, paired over the windows."""
        dense_nll = dense[source]["window_nll"]
        found = ratio_interval(run["eval"][source]["window_nll"], dense_nll, [seq_len - 1] * len(dense_nll))
        return f"{found.value:.2f} [{found.low:.2f}, {found.high:.2f}]"

    head = ["run", *DEV, "dev OOD geomean", *TEST, "test OOD geomean"]
    out = [
        f"Dense perplexity ({evaluation['windows']} windows of {seq_len} tokens per source): "
        + ", ".join(f"{name} {dense[name]['ppl']:.2f}" for name in (*DEV, *TEST))
        + ".",
        "",
    ]
    for keep in sorted({run["keep"] for run in data["runs"]}, reverse=True):
        runs = sorted((run for run in data["runs"] if run["keep"] == keep), key=lambda r: r["method"] != "grasprune")
        out += [f"**keep {keep}** (ratio of perplexity to dense, 95% paired-bootstrap interval over windows)", ""]
        out += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for run in runs:
            label = run["run"] if run["method"] == "grasprune" else f"{run['run']} (baseline)"
            cells = [cell(run, s) for s in DEV] + [f"{run['dev_ood_geomean']:.2f}"] + [cell(run, s) for s in TEST] + [f"{run['test_ood_geomean']:.2f}"]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        grasp = sorted((run for run in runs if run["method"] == "grasprune"), key=lambda r: (r["dev_ood_geomean"], r["ratio_to_dense"]["wiki-valid-heldout"]))
        if grasp:
            order = ", ".join(f"{r['run']} {r['dev_ood_geomean']:.2f}" for r in grasp)
            best = f"**{grasp[0]['run']}** (dev OOD geomean {grasp[0]['dev_ood_geomean']:.2f}; order: {order})"
            out += ["", f"Selected at keep {keep} by the development rule: {best}."]
        out.append("")
    return "\n".join(out)


def domains(args: argparse.Namespace) -> None:
    """Write the across-domains tables."""
    data = json.loads((RESULTS / "grasprune_domains.json").read_text())
    replace_marked_section(DOCS / "results-grasprune.md", "domains", render_domains(data))


# --- the rest ------------------------------------------------------------------------------------------


def pipeline_selection(args: argparse.Namespace) -> None:
    """Write the pipeline-selection section from its stored JSON (``pipeline_selection.py report`` writes that JSON)."""
    stored = json.loads((RESULTS / "pipeline_selection.json").read_text())
    replace_marked_section(DOCS / "results-pipelines.md", "pipeline-selection", render_selection(stored["selection"], stored["test"], stored.get("per_cell")))


def recovery(args: argparse.Namespace) -> None:
    """Write one recovery section (``--name``), or both stored ones."""
    if args.results and not args.name:
        raise SystemExit("recovery: name the section (--name) that the comparison folder feeds")
    for name in [args.name] if args.name else list(report_studies.RECOVERY):
        folder, page = report_studies.RECOVERY[name]
        folder = args.results[0] if args.results else folder
        table, section = report_studies.recovery_section(load_results(folder), f"recovery_{name}.png", DOCS / f"recovery_{name}.png" if args.figures else None)
        write_json_if_changed(RESULTS / f"recovery_{name}.json", {"source": _rel(folder), "goals": report_studies.GOALS, "rows": table})
        replace_marked_section(DOCS / page, f"recovery:{name}", section)


def width_depth(args: argparse.Namespace) -> None:
    """Write the width-or-depth rows and section (and with ``--figures`` its figure)."""
    folders = args.results or sorted(RUNS.glob("width-depth-*"))
    table = [row for folder in folders for row in report_studies.width_depth_rows(load_results(folder))]
    report_studies.add_llamacpp(table, json.loads(LLAMACPP.read_text()))
    if args.figures:
        report_studies.width_depth_figure(table, DOCS / "width_depth.png")
    write_json_if_changed(RESULTS / "width_depth.json", {"rows": table})
    replace_marked_section(DOCS / "results-pipelines.md", "width-depth", report_studies.render_width_depth(table, "width_depth.png"))


def _vocabulary_bounds(results: dict[str, Any]) -> str:
    """The least share of the total parameters a width method alone, and the vocabulary alone, can keep."""
    units = results["units"]
    total, prunable = units["total_params"], units["prunable_params"]
    record = next(r["prune"]["vocabulary"] for r in results["runs"] if (r.get("prune") or {}).get("vocabulary"))
    rows = record["dense_rows"] * record["row_cost"]
    return (
        f"{results['model']['spec']}: {(total - prunable) / total:.1%} of the total is in no width unit (a floor for a width method "
        f"alone, which each layer's mandatory units raise); {(total - rows) / total:.1%} is outside the embedding and output rows "
        "(a floor for the vocabulary alone, which the tokens it must keep raise)"
    )


def vocabulary(args: argparse.Namespace) -> None:
    """Write the vocabulary rows and section (docs/results.md) from the ``compare-vocab-*`` comparisons."""
    folders = args.results or sorted(RUNS.glob("compare-vocab-*"))
    loaded = [load_results(folder) for folder in folders]
    table = [row for results in loaded for row in report_studies.vocabulary_rows(results)]
    bounds = sorted({_vocabulary_bounds(results) for results in loaded})
    write_json_if_changed(RESULTS / "vocabulary.json", {"sources": [_rel(f) for f in folders], "rows": table})
    replace_marked_section(DOCS / "results.md", "vocabulary", report_studies.render_vocabulary(table, bounds))


def hidden(args: argparse.Namespace) -> None:
    """Write the hidden-channel rows, pairs and section (docs/results.md) from the ``compare-hidden-*`` comparisons."""
    from pipeline_selection import paired_ood_ratio

    folders = args.results or sorted(RUNS.glob("compare-hidden-*"))
    table = report_studies.hidden_rows([load_results(folder) for folder in folders])
    pairs = report_studies.hidden_pairs(table, paired_ood_ratio)
    rows = [{k: v for k, v in row.items() if not k.startswith("_")} for row in table]
    write_json_if_changed(RESULTS / "hidden.json", {"sources": [_rel(f) for f in folders], "rows": rows, "pairs": pairs})
    replace_marked_section(DOCS / "results.md", "hidden", report_studies.render_hidden(table, pairs))


SECTIONS = {
    "summary": summary,
    "reports": reports,
    "ranking-transfer": ranking_transfer,
    "recovery": recovery,
    "width-depth": width_depth,
    "pipeline-selection": pipeline_selection,
    "domains": domains,
    "vocabulary": vocabulary,
    "hidden": hidden,
    "llamacpp": lambda args: llamacpp_report.write_page(),
    "scale": lambda args: report_machines.scale_page(),
    "gpu": lambda args: report_machines.gpu_page(),
}


def main() -> None:
    """Parse the section and its options, then write it (``all``: every section from the stored results)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=["all", *SECTIONS])
    parser.add_argument("results", nargs="*", type=Path, help="comparison folders instead of the stored ones (the sections built from comparisons)")
    parser.add_argument("--name", choices=sorted(report_studies.RECOVERY), help="recovery: this section only (default: both)")
    parser.add_argument("--figures", action="store_true", help="recovery, width-depth: redraw the figures too")
    args = parser.parse_args()
    if args.section == "all" and args.results:
        parser.error("'all' reads the stored results only")
    for name in SECTIONS if args.section == "all" else [args.section]:
        SECTIONS[name](args)
        print(f"{name}: written")


if __name__ == "__main__":
    main()
