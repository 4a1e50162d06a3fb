"""The report's figures (pruneframe.harness.figures) show the table's own numbers, and ``pruneframe report``
regenerates report and figures from a stored results.json without rerunning anything."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pruneframe.cli import main
from pruneframe.evaluation.stats import proportion_interval
from pruneframe.harness.figures import quality_points, recovery_pairs, render, speed_points
from pruneframe.harness.group_values import speedup, wilson_interval
from pruneframe.harness.report import markdown, read_results, rows, write_results
from pruneframe.harness.summary import summarise
from test_summary import DOMAINS, PRUNE_REPORT, WINDOWS, ppl_block

BUDGETS = {"keep 0.8": 160, "keep 0.5": 100}  # budget label -> kept params
DENSE_PARAMS = 200
ITEMS = 20
PNG = b"\x89PNG\r\n\x1a\n"


def nll(base: dict[str, np.ndarray], shift: float, seed: int) -> dict[str, np.ndarray]:
    """Every window's NLL raised by ``shift`` nats per window plus noise (the ratio to dense grows with the shift)."""
    rng = np.random.default_rng(seed)
    return {label: values + shift + rng.normal(0, 1.0, size=values.size) for label, values in base.items()}


def speed_block(prefill: float, decode: float, width: float, ideal: float) -> dict[str, Any]:
    spread = {"min": 0.0, "q25": 0.0, "median": 0.0, "q75": 0.0, "max": 0.0, "iqr_rel": width}
    return {
        "measured_speedup": {"prefill": prefill, "decode": decode},
        "ideal_speedup": ideal,
        "speedup_spread": {"prefill": spread, "decode": {**spread, "iqr_rel": width / 2}},
    }


def llamacpp_block(prefill: float, decode: float) -> dict[str, Any]:
    return {
        "measured_speedup": {"prefill_64": prefill, "prefill_128": prefill * 1.1, "decode": decode},
        "ideal_speedup": {"prefill": 1.3, "decode": 1.4},
        "protocol": {"prefill_lens": [64, 128]},
    }


def make_record(
    method: str, budget: str, seed: int, shift: float, dense_nll: dict[str, np.ndarray], items: list[int], speed: float, recovery: str = "none"
) -> dict[str, Any]:
    """A run record as the runner stores it: perplexity, zero-shot items, both speed evaluators, the prune report."""
    run_id = f"{method}-{budget.split()[-1]}-s{seed}" + ("" if recovery == "none" else f"+{recovery.replace(' ', '-')}")
    ci = proportion_interval(items)
    ev = {
        "perplexity": ppl_block(nll(dense_nll, shift, seed + 10 * len(method))),
        "zeroshot": {"tasks": {"mc": {"acc": float(np.mean(items)), "acc_stderr": ci["se"], "acc_ci": [ci["low"], ci["high"]], "items": {"acc": items}}}},
        "speed": speed_block(speed, speed * 0.8, 0.04, 1.25),
        "llamacpp-speed": llamacpp_block(speed * 1.05, speed * 0.9 + 0.01 * seed),
    }
    kept = BUDGETS[budget]
    record: dict[str, Any] = {
        "run_id": run_id,
        "kind": "pruned" if recovery == "none" else "recovered",
        "status": "ok",
        "eval": ev,
        "protocol": {"method": {"name": method}, "budget": {"label": budget}, "seed": seed},
        "prune": {**PRUNE_REPORT, "kept_params": kept, "kept_fraction_of_total": kept / DENSE_PARAMS},
    }
    if recovery != "none":
        record["protocol"]["recovery"] = {"label": recovery}
        record["recovery"] = {"wall_s": 2.0, "tokens": 512, "tokens_per_s": 256.0, "steps": 4}
    return record


def items(correct: int) -> list[int]:
    return [1] * correct + [0] * (ITEMS - correct)


@pytest.fixture(scope="module")
def comparison() -> dict[str, Any]:
    return build_comparison()


def build_comparison() -> dict[str, Any]:
    """Two methods at two budgets; ``noisy`` has two seeds far apart (geometric and arithmetic means differ);
    every run also recovered with ``distill 512``."""
    rng = np.random.default_rng(0)
    dense_nll = {label: rng.uniform(60, 120, size=WINDOWS) for label in DOMAINS}
    dense = {
        "run_id": "dense",
        "kind": "dense",
        "status": "ok",
        "eval": {
            "perplexity": ppl_block(dense_nll),
            "zeroshot": {"tasks": {"mc": {"acc": 0.7, "acc_stderr": 0.1, "items": {"acc": items(14)}}}},
            "speed": {"model": {"prefill_tokens_per_s": 1000.0, "decode_tokens_per_s": 50.0}, "protocol": {"repeats": 3, "statistic": "min"}},
        },
    }
    runs = []
    for b, budget in enumerate(BUDGETS):
        for recovery, gain in (("none", 1.0), ("distill 512", 0.5)):
            runs.append(make_record("steady", budget, 0, (10 + 20 * b) * gain, dense_nll, items(12 - b), 1.2 + 0.3 * b, recovery))
            for seed, shift in ((0, 4.0), (1, 120.0)):
                runs.append(make_record("noisy", budget, seed, (shift + 20 * b) * gain, dense_nll, items(9 + seed), 1.1 + 0.3 * b, recovery))
    meta = {
        "model": {"spec": "tiny"},
        "config": {"dtype": "float32", "budget_kind": "prunable", "budgets": [{"kind": "prunable", "keep": k} for k in (0.8, 0.5)]},
        "units": {"total_params": DENSE_PARAMS, "prunable_params": 100},
        "budgets": {"0.8": 80, "0.5": 50},
        "calibration": {"name": "wiki", "origin": "test", "split": "train", "domain": "wikitext-2", "tokens": 1000, "fingerprint": "f"},
        "evaluation": {"perplexity": {"config": {"protocol": "custom", "seq_len": 32}}, "zeroshot": {"config": {"tasks": ["mc"], "limit": ITEMS}}},
    }
    summary = summarise(dense, runs, "wikitext-2")
    return {"dense": dense, "runs": runs, "meta": meta, "summary": summary, "md": markdown(rows(dense, runs, DENSE_PARAMS, summary), meta, dense, summary)}


def table_cell(md: str, header: str, method: str, budget: str, recovery: str = "none") -> str:
    """The Markdown table's cell in column ``header`` of the group's row (bold marks removed)."""
    lines = md.splitlines()
    headers = [c.strip() for c in next(line for line in lines if line.startswith("| method")).strip("|").split("|")]
    for line in lines:
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        if cells[:3] == [method, budget, recovery]:
            return cells[headers.index(header)]
    raise AssertionError(f"no table row for {method} at {budget} ({recovery})")


def test_the_plotted_perplexity_is_the_tables_geometric_mean_not_the_arithmetic(comparison: dict[str, Any]) -> None:
    summary, md = comparison["summary"], comparison["md"]
    point = next(p for p in quality_points(summary, "ood")["noisy"] if p.budget == "keep 0.8")
    seeds = [summary.per_run[r["run_id"]]["ood"].value() for r in comparison["runs"] if r["run_id"] in ("noisy-0.8-s0", "noisy-0.8-s1")]
    assert point.y == pytest.approx(math.sqrt(seeds[0] * seeds[1]), rel=1e-12)
    assert abs(point.y - (seeds[0] + seeds[1]) / 2) > 0.2 * point.y  # the two means really differ here
    # the table's cell, as printed: value, 95% interval and seed range
    cell = f"{point.y:.2f} [{point.low:.2f}, {point.high:.2f}] s {point.seed_low:.2f}-{point.seed_high:.2f}"
    assert table_cell(md, "OOD geomean", "noisy", "keep 0.8") == cell
    assert point.x == BUDGETS["keep 0.8"] and point.seed_low == pytest.approx(min(seeds))


def test_accuracy_points_carry_the_wilson_interval_the_evaluator_records(comparison: dict[str, Any]) -> None:
    summary = comparison["summary"]
    points = quality_points(summary, "acc:mc")
    steady = next(p for p in points["steady"] if p.budget == "keep 0.5")
    expected = proportion_interval(items(11))
    assert (steady.y, steady.low, steady.high) == pytest.approx((expected["acc"], expected["low"], expected["high"]), abs=1e-9)
    assert steady.seed_low is None  # one seed: no seed range
    noisy = next(p for p in points["noisy"] if p.budget == "keep 0.5")
    assert noisy.y == pytest.approx((9 + 10) / 2 / ITEMS) and (noisy.seed_low, noisy.seed_high) == pytest.approx((0.45, 0.5))
    assert table_cell(comparison["md"], "acc mc", "noisy", "keep 0.5").startswith(f"{noisy.y:.3f} ±")


def test_wilson_interval_matches_the_binomial_test_and_names_bad_input() -> None:
    for k, n in ((0, 5), (3, 7), (24, 24), (11, 24)):
        expected = proportion_interval([1] * k + [0] * (n - k))
        assert wilson_interval(k / n, n) == pytest.approx((expected["low"], expected["high"]), abs=1e-9)
    with pytest.raises(ValueError, match="items must be positive, got 0"):
        wilson_interval(0.5, 0)


def test_speed_points_are_the_tables_speedups_with_spread_and_ideal(comparison: dict[str, Any]) -> None:
    summary, md = comparison["summary"], comparison["md"]
    points = {(p.method, p.recovery): p for p in speed_points(summary, "keep 0.5", "decode")}
    assert set(points) == {("steady", "none"), ("noisy", "none"), ("steady", "distill 512"), ("noisy", "distill 512")}
    noisy = points[("noisy", "none")]
    group = next(g for g in summary.groups if (g.method, g.budget, g.recovery) == ("noisy", "keep 0.5", "none"))
    assert noisy.x == pytest.approx(1.4 * 0.8) and noisy.ideal == 1.25
    assert (noisy.x_low, noisy.x_high) == pytest.approx((noisy.x * 0.98, noisy.x * 1.02))
    assert noisy.y == group.measures["ood"].value()
    assert table_cell(md, "decode speedup (meas ±IQR / ideal)", "noisy", "keep 0.5") == f"{noisy.x:.2f}x ±2% / 1.25x"
    assert speedup(group, "decode").value == noisy.x
    llama = {(p.method, p.recovery): p for p in speed_points(summary, "keep 0.5", "decode", "llamacpp")}
    assert llama[("noisy", "none")].x == pytest.approx(1.4 * 0.9 + 0.005)  # mean over the two seeds
    assert (llama[("noisy", "none")].x_low, llama[("noisy", "none")].x_high) == pytest.approx((1.26, 1.27))
    prefill = {(p.method, p.recovery): p for p in speed_points(summary, "keep 0.5", "prefill", "llamacpp")}
    assert prefill[("steady", "none")].x == pytest.approx(1.5 * 1.05) and prefill[("steady", "none")].ideal == 1.3


def test_recovered_groups_are_their_own_series_joined_to_their_unrecovered_point(comparison: dict[str, Any]) -> None:
    points = quality_points(comparison["summary"], "ood")
    assert set(points) == {"steady", "noisy", "steady (distill 512)", "noisy (distill 512)"}
    pairs = recovery_pairs(p for pts in points.values() for p in pts)
    assert sorted((a.method, a.budget, b.recovery) for a, b in pairs) == sorted((m, b, "distill 512") for m in ("steady", "noisy") for b in BUDGETS)
    for before, after in pairs:
        assert before.recovery == "none" and after.y < before.y  # recovery helped, by construction


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG
    return struct.unpack(">II", data[16:24])


def test_render_draws_every_figure_and_a_llamacpp_row_only_when_measured(comparison: dict[str, Any]) -> None:
    summary, dense = comparison["summary"], comparison["dense"]
    images = render(summary, dense, DENSE_PARAMS)
    assert set(images) == {"ppl_vs_params", "acc_vs_params", "quality_vs_speed_keep-0.8", "quality_vs_speed_keep-0.5"}
    runs = [{**r, "eval": {k: v for k, v in r["eval"].items() if k != "llamacpp-speed"}} for r in comparison["runs"]]
    without = render(summarise(dense, runs, "wikitext-2"), dense, DENSE_PARAMS)
    assert png_size(images["quality_vs_speed_keep-0.5"])[1] > 1.5 * png_size(without["quality_vs_speed_keep-0.5"])[1]
    no_speed = [{**r, "eval": {"perplexity": r["eval"]["perplexity"]}} for r in comparison["runs"]]
    assert set(render(summarise(dense, no_speed, "wikitext-2"), dense, DENSE_PARAMS)) == {"ppl_vs_params"}


@pytest.fixture
def stored(comparison: dict[str, Any], tmp_path: Path) -> Path:
    out = tmp_path / "compare"
    write_results(out, comparison["meta"], comparison["dense"], comparison["runs"])
    return out


def test_report_command_rewrites_everything_from_results_json(stored: Path, comparison: dict[str, Any]) -> None:
    before = (stored / "results.md").read_text()  # sources and budgets in the comparison's order, not sorted
    for name in ("results.md", "ppl_vs_params.png", "quality_vs_speed_keep-0.5.png"):
        (stored / name).unlink()
    assert main(["report", str(stored)]) == 0
    assert (stored / "results.md").read_text() == before
    assert (stored / "ppl_vs_params.png").read_bytes()[:8] == PNG
    meta, dense, runs = read_results(stored / "results.json")
    assert meta == comparison["meta"] and [r["run_id"] for r in runs] == [r["run_id"] for r in comparison["runs"]]
    stored_groups = json.loads((stored / "results.json").read_text())["summary"]["groups"]
    noisy = next(g for g in stored_groups if (g["method"], g["budget"], g["recovery"]) == ("noisy", "keep 0.8", "none"))
    point = next(p for p in quality_points(summarise(dense, runs, "wikitext-2"), "ood")["noisy"] if p.budget == "keep 0.8")
    assert point.y == pytest.approx(noisy["measures"]["ood"]["value"], rel=1e-12)


def test_report_command_writes_figures_only_with_a_suffix(stored: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.md").write_text("hand-written")
    assert main(["report", str(stored), "--figures-only", "--out", str(docs), "--suffix", "_tiny"]) == 0
    assert sorted(p.name for p in docs.iterdir()) == sorted(
        ["results.md", "ppl_vs_params_tiny.png", "acc_vs_params_tiny.png", "quality_vs_speed_keep-0.8_tiny.png", "quality_vs_speed_keep-0.5_tiny.png"]
    )
    assert (docs / "results.md").read_text() == "hand-written"


def test_report_command_refuses_bad_folders(stored: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "holds no results.json" in capsys.readouterr().err
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.md").write_text("hand-written")
    assert main(["report", str(stored), "--out", str(docs)]) == 2
    assert "would overwrite its results.md" in capsys.readouterr().err and (docs / "results.md").read_text() == "hand-written"
    assert main(["report", str(stored), "--suffix", "_x"]) == 2
    assert "add --figures-only" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("[1, 2]")
    assert main(["report", str(tmp_path / "bad")]) == 2
    assert "not a comparison's results.json" in capsys.readouterr().err


def test_a_value_outside_its_bootstrap_interval_is_drawn_inside_a_widened_one() -> None:
    """One window: every bootstrap draw is the point summed in another order, a rounding error away; the figure still draws."""
    from pruneframe.harness.summary import Measure

    built = build_comparison()
    summary = built["summary"]
    for group in summary.groups:
        measure = group.measures["ood"]
        above = Measure(point=measure.point, draws=np.full_like(measure.draws, measure.point + 1e-12), seed_points=[measure.point], log_scale=True)
        low, high = above.interval()
        assert low == pytest.approx(above.value(), rel=0, abs=0) and high > above.value()
        group.measures["ood"] = above
    point = quality_points(summary, "ood")["steady"][0]
    assert point.low <= point.y <= point.high
    assert set(render(summary, built["dense"], DENSE_PARAMS)) >= {"ppl_vs_params"}
