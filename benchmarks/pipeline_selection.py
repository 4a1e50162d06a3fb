"""A pipeline chosen on development text, then reported on test text beside every published pipeline.

``select`` applies the rule fixed before any run to development comparisons (perplexity on development text
alone): among the pipelines assembled from pruneframe's parts (names with ``+RECALIBRATION`` or ``@REMOVAL``),
the lowest geometric mean, over every (model, budget) cell, of the out-of-domain geomean ratio to dense; a
candidate that failed in some cell is out. ``select --rule per-cell`` is the second rule over the same rows,
each cell's best candidate; fixed after the first rule's test table had been read, it is a second look at
the test text, and the report says so. ``report`` reads the chosen pipeline's run in each model's main
protocol beside that model's main comparison (checked to share weights, calibration and windows; ``random`` is
a control), stores each cell's test geomean and the paired-bootstrap interval of its ratio to the best published
pipeline in ``benchmarks/results/pipeline_selection.json``, and with ``--docs`` writes the section
``python benchmarks/docs_report.py pipeline-selection`` also writes. ``versus`` pairs one pipeline's test runs
with another comparison's pipeline in the same protocol (rows in ``benchmarks/results/reconstruction.json``)::

    python benchmarks/pipeline_selection.py select docs/runs/select-pipelines-smollm2-135m docs/runs/select-pipelines-gemma3-270m
    python benchmarks/pipeline_selection.py report --test docs/runs/selected-smollm2-135m docs/runs/selected-gemma3-270m \
        --published docs/runs/compare-smollm2-135m docs/runs/compare-gemma3-270m --docs docs/results-pipelines.md
    python benchmarks/pipeline_selection.py select --rule per-cell docs/runs/select-pipelines-smollm2-135m docs/runs/select-pipelines-gemma3-270m
    python benchmarks/pipeline_selection.py report --rule per-cell --test docs/runs/selected-smollm2-135m \
        docs/runs/selected-per-cell-smollm2-135m-mixed docs/runs/selected-gemma3-270m docs/runs/selected-per-cell-gemma3-270m-flap \
        docs/runs/selected-per-cell-gemma3-270m-mixed --published docs/runs/compare-smollm2-135m docs/runs/compare-gemma3-270m
    python benchmarks/pipeline_selection.py versus --test docs/runs/selected-reconstruction-smollm2-135m \
        --pipeline llm-pruner+refit@mixed --reference docs/runs/reference-scales-smollm2-135m --reference-pipeline llm-pruner+scales
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from statistics import geometric_mean
from typing import Any

import numpy as np

from common import CONTROLS, in_domain_source, is_pipeline, load_results, ood_cells, protocol_mismatch
from pruneframe.evaluation.stats import bootstrap_indices, log_ppl_draws, percentile_interval
from pruneframe.util.io import replace_marked_section, write_json_atomic


def in_domain_cells(results: dict[str, Any]) -> dict[tuple[str, float], dict[str, Any]]:
    """(method, keep) -> the ratio to dense on the in-domain source (the calibration text's domain), if there is one."""
    source = in_domain_source(results)
    return ood_cells(results, f"ratio:{source}") if source else {}


def select(dev_results: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply the selection rule to the development comparisons; the rows, the ranking and the choice."""
    rows = []
    for results in dev_results:
        model = results["model"]["spec"]
        ood_sources = [s["label"] for s in results["summary"]["sources"] if not s["in_domain"]]
        for (method, keep), ood in ood_cells(results).items():
            rows.append({"model": model, "method": method, "keep": keep, "pipeline": is_pipeline(method), "dev_ood": ood, "dev_sources": ood_sources})
    cells = sorted({(r["model"], r["keep"]) for r in rows})
    ranking = []
    for method in sorted({r["method"] for r in rows if r["pipeline"]}):
        mine = {(r["model"], r["keep"]): r["dev_ood"]["value"] for r in rows if r["method"] == method}
        if all(cell in mine and math.isfinite(mine[cell]) for cell in cells):
            ranking.append({"method": method, "dev_score": geometric_mean(mine[cell] for cell in cells)})
    if not ranking:
        raise SystemExit("no candidate pipeline has a result in every (model, budget) cell")
    ranking.sort(key=lambda r: r["dev_score"])
    chosen = ranking[0]["method"]
    configs = {results["model"]["spec"]: results["config"]["method_configs"].get(chosen, {}) for results in dev_results}
    return {
        "rule": "lowest geometric mean over every (model, budget) cell of the out-of-domain geomean ratio to dense on development text",
        "cells": [{"model": m, "keep": k} for m, k in cells],
        "rows": rows,
        "ranking": ranking,
        "chosen": chosen,
        "chosen_config": configs,
    }


PER_CELL_RULE = "in each (model, budget) cell, the candidate with the lowest out-of-domain geomean ratio to dense on development text there"


def select_per_cell(selection: dict[str, Any], dev_results: list[dict[str, Any]]) -> dict[str, Any]:
    """The second rule over the first rule's development rows: each cell's best candidate, with its settings."""
    configs = {results["model"]["spec"]: results["config"]["method_configs"] for results in dev_results}
    picks = []
    for cell in selection["cells"]:
        here = [
            r for r in selection["rows"] if r["pipeline"] and (r["model"], r["keep"]) == (cell["model"], cell["keep"]) and math.isfinite(r["dev_ood"]["value"])
        ]
        best = min(here, key=lambda r: r["dev_ood"]["value"])
        picks.append({**cell, "method": best["method"], "dev_ood": best["dev_ood"]["value"], "config": configs[cell["model"]].get(best["method"], {})})
    return {"rule": PER_CELL_RULE, "picks": picks}


def _run(results: dict[str, Any], method: str, keep: float) -> dict[str, Any] | None:
    """The first seed's unrecovered run of ``method`` at ``keep``, or None."""
    runs = [
        r
        for r in results["runs"]
        if r.get("kind") == "pruned" and r["status"] == "ok" and (r["protocol"]["method"]["name"], r["protocol"]["budget"]["keep"]) == (method, keep)
    ]
    runs.sort(key=lambda r: r["protocol"]["seed"])
    return runs[0] if runs else None


def paired_ood_ratio(first: dict[str, Any], second: dict[str, Any], sources: list[str]) -> dict[str, float]:
    """``first`` over ``second``: the geomean over ``sources`` of their perplexity ratio, with a paired-bootstrap interval.

    Both runs scored the same windows; each resample draws the same windows for both runs and every source.
    """
    first_ppl, second_ppl = (r["eval"]["perplexity"]["sources"] for r in (first, second))
    n = len(first_ppl[sources[0]]["window_nll"])
    indices = bootstrap_indices(n)
    draws = np.zeros(indices.shape[0])
    point = 0.0
    for source in sources:
        a, b = first_ppl[source], second_ppl[source]
        if (a["windows"], a["window_tokens"]) != (b["windows"], b["window_tokens"]):
            raise ValueError(f"{source}: the two runs scored different windows")
        tokens = [a["window_tokens"]] * n  # every window predicts the same number of tokens
        draws += log_ppl_draws(a["window_nll"], tokens, indices) - log_ppl_draws(b["window_nll"], tokens, indices)
        point += math.log(a["ppl"]) - math.log(b["ppl"])
    low, high = percentile_interval(draws / len(sources))
    return {"value": math.exp(point / len(sources)), "low": math.exp(low), "high": math.exp(high)}


def report(
    selection: dict[str, Any], tests: list[dict[str, Any]], published: list[dict[str, Any]], picks: dict[tuple[str, float], str] | None = None
) -> list[dict[str, Any]]:
    """Per (model, budget): the chosen pipeline's test geomean against every published pipeline's.

    ``picks`` maps each cell to its pipeline (the per-cell rule); by default every cell the tests ran takes
    the first rule's choice.
    """
    by_model = {r["model"]["spec"]: r for r in published}
    cells = []
    models = list(dict.fromkeys(t["model"]["spec"] for t in tests))
    if picks is None:
        picks = {(t["model"]["spec"], k): method for t in tests for (method, k) in ood_cells(t) if method == selection["chosen"]}
    for model, keep in sorted(picks, key=lambda cell: (models.index(cell[0]) if cell[0] in models else len(models), -cell[1])):
        chosen = picks[(model, keep)]
        test = next((t for t in tests if t["model"]["spec"] == model and (chosen, keep) in ood_cells(t)), None)
        if test is None:
            raise SystemExit(f"{model} keep {keep}: no test comparison given ran {chosen}")
        if model not in by_model:
            raise SystemExit(f"{model}: no published comparison given for it")
        pub = by_model[model]
        diffs = protocol_mismatch(test, pub)
        if diffs:
            raise SystemExit(f"{model}: the chosen pipeline's run and the published comparison differ in {', '.join(diffs)}")
        sources = [s["label"] for s in pub["summary"]["sources"] if not s["in_domain"]]
        test_cells, pub_cells = ood_cells(test), ood_cells(pub)
        test_in, pub_in = in_domain_cells(test), in_domain_cells(pub)
        rivals = {m: v for (m, k), v in pub_cells.items() if k == keep and not is_pipeline(m) and m not in CONTROLS}
        best = min(rivals, key=lambda m: rivals[m]["value"])
        chosen_run, best_run = _run(test, chosen, keep), _run(pub, best, keep)
        versus = paired_ood_ratio(chosen_run, best_run, sources) if chosen_run and best_run else None
        dev_rows = [r for r in selection["rows"] if (r["model"], r["keep"]) == (model, keep)]
        dev = next((r["dev_ood"]["value"] for r in dev_rows if r["method"] == chosen), None)
        dev_best = min((r["dev_ood"]["value"] for r in dev_rows if not r["pipeline"] and r["method"] not in CONTROLS), default=None)
        cells.append(
            {
                "model": model,
                "keep": keep,
                "sources": sources,
                "chosen": chosen,
                "chosen_test_ood": test_cells[(chosen, keep)],
                "published": rivals,
                "best_published": best,
                "ratio_to_best_published": versus,
                "beats_best_published": test_cells[(chosen, keep)]["value"] < rivals[best]["value"],
                "chosen_in_domain": test_in.get((chosen, keep)),
                "best_published_in_domain": pub_in.get((best, keep)),
                "chosen_dev_ood": dev,
                "best_reference_dev_ood": dev_best,
            }
        )
    return cells


def _fmt(ood: dict[str, float]) -> str:
    return f"{ood['value']:.2f}x [{ood['low']:.2f}, {ood['high']:.2f}]"


def _value(measure: dict[str, float] | None) -> str:
    return "-" if measure is None else f"{measure['value']:.2f}x"


def _cell(cell: dict[str, Any]) -> str:
    return f"`{cell['model']}` keep {cell['keep']}"


def render(selection: dict[str, Any], cells: list[dict[str, Any]], per_cell: dict[str, Any] | None = None) -> str:
    """The docs section: the development ranking, then the test table and what it says."""
    chosen = selection["chosen"]
    lines = [
        "<!-- generated by benchmarks/pipeline_selection.py from the stored results.json of each comparison; do not edit -->",
        "",
        f"Rule, fixed before any run: {selection['rule']}. Development text: "
        + "; ".join(sorted({f"`{r['model']}`: {', '.join(r['dev_sources'])}" for r in selection["rows"]}))
        + " (the halves the reports never read). Candidates and their development score (lower is better):",
        "",
        "| pipeline | " + " | ".join(f"`{c['model']}` keep {c['keep']}" for c in selection["cells"]) + " | score |",
        "|---|" + "---|" * (len(selection["cells"]) + 1),
    ]
    dev = {(r["method"], r["model"], r["keep"]): r["dev_ood"]["value"] for r in selection["rows"]}
    score = {r["method"]: r["dev_score"] for r in selection["ranking"]}
    methods = sorted({r["method"] for r in selection["rows"]}, key=lambda m: (m not in score, score.get(m, 0.0), m))
    for method in methods:
        label = f"**{method}**" if method == chosen else method if method in score else f"{method} (published)"
        row = [f"{dev[(method, c['model'], c['keep'])]:.2f}x" if (method, c["model"], c["keep"]) in dev else "-" for c in selection["cells"]]
        lines.append(f"| {label} | " + " | ".join(row) + f" | {score[method]:.2f} |" if method in score else f"| {label} | " + " | ".join(row) + " | - |")
    lines += [
        "",
        f"Chosen: **{chosen}**. On test text, in each model's main comparison protocol (same weights, calibration "
        "and windows; the published rows are that comparison's own), out-of-domain geomean ratio to dense with 95% "
        "intervals, the chosen pipeline over the best published one with a paired-bootstrap interval, and both "
        "pipelines' ratio on the in-domain source (WikiText-2 test, the calibration text's domain):",
        "",
    ]
    lines += _test_table(cells, per_cell=False)
    lines += ["", _verdict(cells, f"{chosen} is") + "."]
    if per_cell:
        lines += _per_cell_lines(per_cell)
    return "\n".join(lines)


def _test_table(cells: list[dict[str, Any]], per_cell: bool) -> list[str]:
    """The test table: per cell the chosen pipeline's out-of-domain geomean against the published pipelines'."""
    lines = [
        "| model | keep | "
        + ("pipeline | " if per_cell else "")
        + "chosen | best published | chosen / best | in-domain: chosen, best | every published pipeline |",
        "|---|---|---|---|---|---|---|" + ("---|" if per_cell else ""),
    ]
    for c in cells:
        versus = c["ratio_to_best_published"]
        others = ", ".join(f"{m} {v['value']:.2f}x" for m, v in sorted(c["published"].items(), key=lambda kv: kv[1]["value"]))
        lines.append(
            f"| `{c['model']}` | {c['keep']} | "
            + (f"{c['chosen']} | " if per_cell else "")
            + f"{_fmt(c['chosen_test_ood'])} | {c['best_published']} {_fmt(c['published'][c['best_published']])} | "
            + (_fmt(versus) if versus else "-")
            + f" | {_value(c['chosen_in_domain'])}, {_value(c['best_published_in_domain'])} | {others} |"
        )
    return lines


def _verdict(cells: list[dict[str, Any]], who: str) -> str:
    """Whether ``who`` (the chosen pipeline, or the per-cell picks) beats every published pipeline in every cell."""
    won = [c for c in cells if c["beats_best_published"]]
    clear = [c for c in won if c["ratio_to_best_published"] and c["ratio_to_best_published"]["high"] < 1.0]
    lost = [c for c in cells if not c["beats_best_published"]]
    if lost:
        verdict = "**not met**"
    elif len(clear) == len(cells):
        verdict = "**met**"
    else:
        verdict = "**met on the point estimates**, not clearly"
    summary = f"The goal (beat every published pipeline at both budgets on both models) is {verdict}: {who} ahead in {len(won)} of {len(cells)} cells"
    if won:
        summary += f" ({', '.join(_cell(c) for c in won)}; the paired interval lies below 1 in {len(clear)}"
        tied = [c for c in won if c not in clear]
        summary += f", and includes 1 in {', '.join(_cell(c) for c in tied)})" if tied else ")"
    if lost:
        summary += "; behind in " + ", ".join(f"{_cell(c)} ({c['best_published']})" for c in lost)
    return summary


def _per_cell_lines(per_cell: dict[str, Any]) -> list[str]:
    """The second rule's section: when it was fixed, its picks and their test table."""
    picks = ", ".join(f"{_cell(p)}: {p['method']} ({p['dev_ood']:.2f}x)" for p in per_cell["picks"])
    lines = [
        "",
        "**A second rule, per cell.** Fixed after the table above had been read, so its test table is a second look "
        f"at the test text (its picks read development text alone): {per_cell['rule']}. Its picks, from the development "
        f"table above: {picks}. On test text, in the same protocols:",
        "",
    ]
    if "test" not in per_cell:
        return lines + ["Not run on test text yet."]
    lines += _test_table(per_cell["test"], per_cell=True)
    return lines + ["", _verdict(per_cell["test"], "the per-cell picks are") + "."]


def versus(test: dict[str, Any], reference: dict[str, Any], pipeline: str, reference_pipeline: str) -> list[dict[str, Any]]:
    """Per budget: ``pipeline``'s test geomean and its paired ratio to ``reference_pipeline`` (another comparison, same protocol).

    The rows of ``benchmarks/results/reconstruction.json``: ``vs_last_best`` is the paired-bootstrap ratio of the
    two pipelines' out-of-domain geomeans on the same windows, with its 95% interval.
    """
    diffs = protocol_mismatch(test, reference)
    if diffs:
        raise SystemExit(f"the test comparison and the reference differ in {', '.join(diffs)}")
    sources = [s["label"] for s in reference["summary"]["sources"] if not s["in_domain"]]
    mine, theirs = ood_cells(test), ood_cells(reference)
    rows = []
    for (method, keep), ood in sorted(mine.items(), key=lambda kv: -kv[0][1]):
        if method != pipeline or (reference_pipeline, keep) not in theirs:
            continue
        ratio = paired_ood_ratio(_run(test, pipeline, keep), _run(reference, reference_pipeline, keep), sources)
        rows.append(
            {
                "model": test["model"]["spec"],
                "budget": keep,
                "budget_kind": test["config"]["budget_kind"],
                "pipeline": pipeline,
                "ood_geomean": ood["value"],
                "ood_geomean_low": ood["low"],
                "ood_geomean_high": ood["high"],
                "last_best": reference_pipeline,
                "last_best_ood_geomean": theirs[(reference_pipeline, keep)]["value"],
                "vs_last_best": ratio["value"],
                "vs_last_best_low": ratio["low"],
                "vs_last_best_high": ratio["high"],
            }
        )
    if not rows:
        raise SystemExit(f"no budget where the test ran {pipeline} and the reference ran {reference_pipeline}")
    return rows


def main() -> None:
    """``select``, ``report`` or ``versus``, as the module docstring shows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sel = sub.add_parser("select", help="apply the selection rule to development comparisons")
    sel.add_argument("dev", nargs="+", type=Path, help="development comparisons (folders or results.json)")
    sel.add_argument("--json", type=Path, default=Path("benchmarks/results/pipeline_selection.json"))
    sel.add_argument("--rule", choices=("pooled", "per-cell"), default="pooled", help="per-cell: the second rule, over the stored selection's rows")
    rep = sub.add_parser("report", help="the chosen pipeline on test text beside the published pipelines")
    rep.add_argument("--json", type=Path, default=Path("benchmarks/results/pipeline_selection.json"))
    rep.add_argument("--test", nargs="+", type=Path, required=True, help="comparisons that ran the chosen pipeline")
    rep.add_argument("--published", nargs="+", type=Path, required=True, help="the models' main comparisons")
    rep.add_argument("--docs", type=Path, default=None)
    rep.add_argument("--rule", choices=("pooled", "per-cell"), default="pooled", help="which rule's picks the --test comparisons ran")
    vs = sub.add_parser("versus", help="a pipeline's test rows against last round's best pipeline, paired")
    vs.add_argument("--test", type=Path, required=True, help="the comparison that ran the pipeline on test text")
    vs.add_argument("--pipeline", required=True)
    vs.add_argument("--reference", type=Path, required=True, help="the comparison that ran the reference pipeline, same protocol")
    vs.add_argument("--reference-pipeline", required=True)
    vs.add_argument("--json", type=Path, default=Path("benchmarks/results/reconstruction.json"))
    args = parser.parse_args()
    if args.command == "versus":
        new_rows = versus(load_results(args.test), load_results(args.reference), args.pipeline, args.reference_pipeline)
        old_rows = json.loads(args.json.read_text())["rows"] if args.json.exists() else []
        keys = {(r["model"], r["budget"], r["pipeline"]) for r in new_rows}
        write_json_atomic(args.json, {"rows": [r for r in old_rows if (r["model"], r["budget"], r["pipeline"]) not in keys] + new_rows})
        for r in new_rows:
            print(
                f"{r['model']} keep {r['budget']}: {r['pipeline']} {r['ood_geomean']:.2f}x; {r['last_best']} {r['last_best_ood_geomean']:.2f}x; "
                f"ratio {r['vs_last_best']:.3f} [{r['vs_last_best_low']:.3f}, {r['vs_last_best_high']:.3f}]"
            )
        return
    if args.command == "select" and args.rule == "per-cell":
        stored = json.loads(args.json.read_text())
        per_cell = select_per_cell(stored["selection"], [load_results(p) for p in args.dev])
        write_json_atomic(args.json, {**stored, "per_cell": per_cell})
        for pick in per_cell["picks"]:
            settings = f"'{pick['method']}={json.dumps(pick['config'])}'"
            print(
                f"{pick['model']} keep {pick['keep']}: {pick['method']} ({pick['dev_ood']:.3f}); pruneframe compare --config <{pick['model']}'s "
                f"main config> --methods {pick['method']} --method-config {settings} --budgets {pick['keep']}"
            )
        return
    if args.command == "select":
        selection = select([load_results(p) for p in args.dev])
        write_json_atomic(args.json, {"selection": selection})
        for r in selection["ranking"]:
            print(f"{r['method']:32s} {r['dev_score']:.3f}")
        chosen = selection["chosen"]
        print(f"chosen: {chosen}")
        for model, config in selection["chosen_config"].items():
            settings = f"'{chosen}={json.dumps(config)}'"
            print(f"pruneframe compare --config <{model}'s main config> --methods {chosen} --method-config {settings} --out docs/runs/selected-{model}")
        return
    stored = json.loads(args.json.read_text())
    tests, published = [load_results(p) for p in args.test], [load_results(p) for p in args.published]
    if args.rule == "per-cell":
        picks = {(p["model"], p["keep"]): p["method"] for p in stored["per_cell"]["picks"]}
        stored["per_cell"]["test"] = report(stored["selection"], tests, published, picks)
        write_json_atomic(args.json, stored)
    else:
        stored["test"] = report(stored["selection"], tests, published)
        write_json_atomic(args.json, stored)
    section = render(stored["selection"], stored["test"], stored.get("per_cell"))
    if args.docs:
        replace_marked_section(args.docs, "pipeline-selection", section)
    print(section)


if __name__ == "__main__":
    main()
