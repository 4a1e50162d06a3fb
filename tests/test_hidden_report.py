"""The hidden-channel section of docs/results.md: its rows are the stored comparisons' own numbers, its
pairs the paired bootstrap of the best hidden run over the best width-only run of each cell."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import load_benchmark

RUNS = Path(__file__).resolve().parent.parent / "docs" / "runs"


def _load(name: str) -> dict:
    return json.loads((RUNS / name / "results.json").read_text())


def test_the_hidden_rows_and_pairs_are_the_stored_comparisons_numbers() -> None:
    studies, selection = load_benchmark("report_studies"), load_benchmark("pipeline_selection")
    results = _load("compare-hidden-smollm2-135m")
    table = studies.hidden_rows([results])
    by_row = {r["run_id"]: r for r in results["rows"]}
    minitron = next(r for r in table if (r["method"], r["keep"], r["recovery"]) == ("minitron", 0.5, "none"))
    assert minitron["ood_geomean"] == by_row["minitron-0.5-s0"]["ood_ratio"] and minitron["cuts_hidden"] and minitron["hidden_width"] < 576
    assert all(r["hidden_width"] == 576 for r in table if not r["cuts_hidden"])
    assert {r["recovery"] for r in table} == {"none", "distill 32k"} and all(r["hf_decode_speedup"] is None for r in table if r["recovery"] != "none")
    pairs = studies.hidden_pairs(table, selection.paired_ood_ratio)
    cell = next(p for p in pairs if (p["keep"], p["recovery"]) == (0.5, "distill 32k"))
    best = {r["method"]: r for r in table if (r["keep"], r["recovery"]) == (0.5, "distill 32k")}
    assert cell["best_hidden"] == min((m for m in best if best[m]["cuts_hidden"]), key=lambda m: best[m]["ood_geomean"])
    assert cell["best_width"] == min((m for m in best if not best[m]["cuts_hidden"]), key=lambda m: best[m]["ood_geomean"])
    assert cell["ratio"] == pytest.approx(cell["best_hidden_ood"] / cell["best_width_ood"])
    assert cell["ratio_low"] < cell["ratio"] < cell["ratio_high"]
    section = studies.render_hidden(table, pairs)
    assert "met on 0 of 1 models measured" in section and f"| {cell['ratio']:.3f} [" in section


def test_a_speed_only_rerun_adds_its_llama_cpp_column_once_and_a_differing_rerun_is_shown() -> None:
    studies = load_benchmark("report_studies")
    results = _load("compare-hidden-gemma3-270m-keep0.5")
    rerun = copy.deepcopy(results)
    rerun["rows"] = [r for r in rerun["rows"] if r["kind"] != "recovered"]
    for row in rerun["rows"]:
        if row["kind"] == "pruned":
            row["llamacpp_decode_speedup"] = 1.5
    table = studies.hidden_rows([results, rerun])
    assert len(table) == 2  # minitron with and without recovery, each once
    none = next(r for r in table if r["recovery"] == "none")
    assert none["llamacpp_decode_speedup"] == 1.5 and "rerun_ood_geomean" not in none
    assert next(r for r in table if r["recovery"] != "none")["llamacpp_decode_speedup"] is None
    next(r for r in rerun["rows"] if r["kind"] == "pruned")["ood_ratio"] *= 1.01
    assert studies.hidden_rows([results, rerun])[0]["rerun_ood_geomean"] == pytest.approx(none["ood_geomean"] * 1.01)
    pairs = studies.hidden_pairs(table, None)  # no width-only run at keep 0.5 of Gemma's total: nothing to pair
    assert [p["best_width"] for p in pairs] == [None, None] and "none reaches this budget" in studies.render_hidden(table, pairs)
