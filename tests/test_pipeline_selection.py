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
