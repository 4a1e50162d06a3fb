"""The pipeline-selection rules of ``benchmarks/pipeline_selection.py``, on hand-made development rows."""

from __future__ import annotations

from types import ModuleType

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def selection_module() -> ModuleType:
    return load_benchmark("pipeline_selection")


def _row(model: str, method: str, keep: float, value: float) -> dict:
    return {"model": model, "method": method, "keep": keep, "pipeline": "+" in method or "@" in method, "dev_ood": {"value": value}}


def _selection() -> dict:
    rows = [
        _row("a", "x+scales", 0.8, 1.5),
        _row("a", "y+bias", 0.8, 1.4),
        _row("a", "x+scales", 0.5, 5.0),
        _row("a", "y+bias", 0.5, 9.0),
        _row("a", "x", 0.5, 1.0),  # published: never picked, however low
    ]
    return {"cells": [{"model": "a", "keep": 0.8}, {"model": "a", "keep": 0.5}], "rows": rows}


def test_per_cell_rule_takes_each_cells_best_candidate(selection_module: ModuleType) -> None:
    """Each cell's lowest development ratio among the assembled pipelines, with that model's settings."""
    dev = [{"model": {"spec": "a"}, "config": {"method_configs": {"x+scales": {"recalibration": {"epochs": 2}}}}}]
    picks = selection_module.select_per_cell(_selection(), dev)["picks"]
    assert [(p["keep"], p["method"], p["dev_ood"]) for p in picks] == [(0.8, "y+bias", 1.4), (0.5, "x+scales", 5.0)]
    assert picks[0]["config"] == {} and picks[1]["config"] == {"recalibration": {"epochs": 2}}


def test_verdict_separates_clear_wins_from_ties(selection_module: ModuleType) -> None:
    """Met only when every cell is ahead with its paired interval below 1; ahead with a tie is said as such."""

    def cell(keep: float, beats: bool, high: float) -> dict:
        return {"model": "a", "keep": keep, "beats_best_published": beats, "best_published": "p", "ratio_to_best_published": {"high": high}}

    verdict = selection_module._verdict
    assert "is **met**:" in verdict([cell(0.8, True, 0.9), cell(0.5, True, 0.95)], "x is")
    tied = verdict([cell(0.8, True, 0.9), cell(0.5, True, 1.03)], "x is")
    assert "**met on the point estimates**" in tied and "includes 1 in `a` keep 0.5" in tied
    assert "**not met**" in verdict([cell(0.8, True, 0.9), cell(0.5, False, 1.2)], "x is")


def test_versus_pairs_the_same_windows_and_refuses_another_protocol(selection_module: ModuleType) -> None:
    """A comparison against itself is a ratio of exactly 1; one that scored other windows, or another dtype, is refused."""
    import copy
    import json
    from pathlib import Path

    stored = json.loads((Path(__file__).resolve().parents[1] / "docs" / "runs" / "selected-smollm2-135m" / "results.json").read_text())
    rows = selection_module.versus(stored, stored, "llm-pruner+scales", "llm-pruner+scales")
    assert [r["budget"] for r in rows] == [0.8, 0.5]
    for r in rows:
        assert r["vs_last_best"] == pytest.approx(1.0) and r["vs_last_best_low"] == pytest.approx(1.0) and r["vs_last_best_high"] == pytest.approx(1.0)
        assert r["ood_geomean_low"] <= r["ood_geomean"] <= r["ood_geomean_high"]
    other = copy.deepcopy(stored)
    other["dtype"] = "float32"
    with pytest.raises(SystemExit, match="differ in dtype"):
        selection_module.versus(other, stored, "llm-pruner+scales", "llm-pruner+scales")
    with pytest.raises(SystemExit, match="no budget"):
        selection_module.versus(stored, stored, "flap+refit", "llm-pruner+scales")
