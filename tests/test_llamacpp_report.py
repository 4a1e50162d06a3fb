"""The llama.cpp speed page's readings of ``benchmarks/llamacpp_report.py``, on hand-made rows."""

from __future__ import annotations

from types import ModuleType

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return load_benchmark("llamacpp_report")


def _side(ms_per_token: list[float], runs: list[int]) -> dict:
    samples = [1000.0 / ms for ms in ms_per_token]
    return {"repeats": len(samples) // len(runs), "placements": len(runs), "page_runs": runs, "decode_samples": samples, "decode_tokens_per_s": max(samples)}


def _row(method: str, dense_mb: float, pruned_mb: float, fixed_ms: float, ms_per_mb: float, budget: float = 0.5) -> dict:
    """A row whose files decode in exactly ``fixed_ms + ms_per_mb * MB`` per token (two placements of two repeats)."""
    dense_ms, pruned_ms = fixed_ms + ms_per_mb * dense_mb, fixed_ms + ms_per_mb * pruned_mb
    dense, pruned = _side([dense_ms] * 4, [10, 12]), _side([pruned_ms] * 4, [7, 9])
    return {
        "model": "m",
        "method": method,
        "budget": budget,
        "dtype": "f16",
        "weight_bytes_per_token": {"dense": dense_mb * 1e6, "pruned": pruned_mb * 1e6},
        "dense": dense,
        "pruned": pruned,
        "decode_speedup": dense_ms / pruned_ms,
        "decode_speedup_paired": {"median": dense_ms / pruned_ms, "low": dense_ms / pruned_ms, "high": dense_ms / pruned_ms, "repeats": 4},
        "ideal_speedup": {"decode": dense_mb / pruned_mb, "prefill": {"256": 2.0}},
        "prefill_speedup": {"256": 2.0},
    }


def test_heads_table_orders_rows_by_the_kv_heads_they_keep(report: ModuleType) -> None:
    """Timed-over-placements rows of a type are listed from most KV heads kept to fewest, with median over ideal."""
    rows = [_row("few", 270, 165, 2.0, 0.04), _row("many", 270, 165, 2.0, 0.04), _row("old", 270, 165, 2.0, 0.04)]
    for row, kv in zip(rows, ([1, 1], [3, 2], [3, 3]), strict=True):
        row |= {"kv_heads": kv, "ffn_widths": [64, 32]}
    rows[2]["dense"] = {**rows[2]["dense"], "placements": 1}  # timed on one layout: not listed
    table = [line for line in report._heads_lines(rows) if line.startswith("| f16")]
    assert [line.split(" | ")[1] for line in table] == ["many", "few"]
    assert "| 83% | 75% |" in table[0] and "| 33% | 75% |" in table[1]
    ratio = rows[0]["decode_speedup"] / rows[0]["ideal_speedup"]["decode"]
    assert table[0].endswith(f"| {ratio:.2f} |")
    assert report._heads_lines(rows[2:]) == []


def test_placement_lines_pair_page_runs_with_each_placements_decode_ratio(report: ModuleType) -> None:
    """Each placement's page runs (dense / pruned) stand beside the median ratio of that placement's repeats."""
    row = _row("a", 270, 165, 2.0, 0.04)
    row["pruned"]["decode_samples"][2:] = [s * 1.1 for s in row["pruned"]["decode_samples"][2:]]  # the second copy ran faster
    line = report._placement_lines(row)[0]
    first, second = row["decode_speedup"], row["decode_speedup"] * 1.1
    assert f"page runs 10 / 7: decode {first:.3f}x" in line and f"page runs 12 / 9: decode {second:.3f}x" in line


def test_goal_cell_says_when_the_median_disagrees_with_the_fastest_repeat(report: ModuleType) -> None:
    """The goals use the fastest repeats; a median on the other side of the goal is said beside the verdict."""
    row = _row("a", 270, 165, 0.0, 0.04)  # decode exactly at the bytes ideal
    assert report._goal_cell(row) == "met"
    row["decode_speedup_paired"] = {**row["decode_speedup_paired"], "median": 0.9 * row["ideal_speedup"]["decode"]}
    assert report._goal_cell(row) == "met (decode median misses)"
    assert report._goal_cell({**row, "budget": 0.8}) == ""
