"""The decode-cost diagnostic's pure parts (``benchmarks/llamacpp_costs.py``) and its section of the llama.cpp page."""

from __future__ import annotations

import json
from types import ModuleType

import pytest

from conftest import load_benchmark
from pruneframe.architectures import discover
from pruneframe.export import plan_export
from pruneframe.pipeline.fold import fold
from pruneframe.pipeline.units import UnitKind
from pruneframe.testing import tiny_model


@pytest.fixture(scope="module")
def costs() -> ModuleType:
    return load_benchmark("llamacpp_costs")


def test_leading_units_mask_gives_every_layer_the_asked_widths(costs: ModuleType) -> None:
    """FFN-only variants keep every KV group; KV-only variants keep the full FFN; folding gives exactly those widths."""
    model = tiny_model("llama-gqa")
    units = discover(model)
    full = units.layers[0]
    for ffn, kv, want in ((5, None, (5, full.kv_groups)), (None, 1, (full.ffn_channels, 1))):
        mask = costs.leading_units_mask(units, ffn, kv)
        folded = discover(fold(model, units, mask))
        assert {(s.ffn_channels, s.kv_groups) for s in folded.layers} == {want}
        first = units.slice(0, UnitKind.FFN)
        assert bool(mask[first.start]) and int(mask.sum()) == sum(want) * units.num_layers


def test_leading_units_mask_takes_one_count_per_layer(costs: ModuleType) -> None:
    """A checkpoint's twin: per-layer counts (zero KV groups included) cut from the dense weights give exactly those widths."""
    model = tiny_model("llama-gqa")
    units = discover(model)
    ffn = [3 + i for i in range(units.num_layers)]
    kv = [i % 2 for i in range(units.num_layers)]
    kv[0] = 1
    folded = discover(fold(model, units, costs.leading_units_mask(units, ffn, kv)))
    assert [(s.ffn_channels, s.kv_groups) for s in folded.layers] == list(zip(ffn, kv, strict=True))


def test_plan_shape_counts_padded_channels_llama_cpp_computes(costs: ModuleType) -> None:
    """Zero channels the export pads in are counted (llama.cpp multiplies them); KV groups are summed per layer."""
    model = tiny_model("llama-gqa")
    units = discover(model)
    mask = costs.leading_units_mask(units, 5, 1)
    plan = plan_export(fold(model, units, mask), "f16", pad_ffn_to=8)
    assert costs.plan_shape(plan) == {"ffn_channels": 8 * units.num_layers, "kv_groups": units.num_layers}


def test_fit_recovers_the_costs_that_made_the_times(costs: ModuleType) -> None:
    """Times made by a known linear cost are fitted back exactly, and predictions follow that cost."""
    made = {"fixed": 0.2, "per_channel": 1e-5, "per_group": 4e-3}
    shapes = [(46080, 90), (30720, 90), (15360, 90), (46080, 60), (46080, 30)]
    rows = [{"ffn_channels": c, "kv_groups": g, "relative_time": costs.predicted_time(made, {"ffn_channels": c, "kv_groups": g})} for c, g in shapes]
    fitted = costs.fit_costs(rows)
    for key, value in made.items():
        assert fitted[key] == pytest.approx(value, rel=1e-9)
    assert fitted["largest_residual"] < 1e-12
    rows[1]["relative_time"] += 0.05  # one slow variant shows up as a residual
    assert costs.fit_costs(rows)["largest_residual"] > 0.01


def test_with_run_keeps_every_run_and_adds_the_new_one_last(costs: ModuleType, tmp_path) -> None:
    """Runs accumulate (a rerun shows the spread between runs): the stored ones first, in order, then the new one."""
    path = tmp_path / "c.json"
    first = {"protocol": {"model": "m", "dtype": "f16", "context": 256}, "rows": [1]}
    assert costs.with_run(path, first) == [first]
    path.write_text(json.dumps({"runs": [first, first | {"rows": [2]}]}))
    assert [r["rows"] for r in costs.with_run(path, first | {"rows": [3]})] == [[1], [2], [3]]


def test_report_prints_the_costs_and_each_files_prediction(costs: ModuleType) -> None:
    """The page's section states the fit, a KV group's price in channels by time and by bytes, and one row per file."""
    report = load_benchmark("llamacpp_report")
    fit = {"fixed": 0.1, "per_channel": 1e-5, "per_group": 5e-3, "largest_residual": 0.004}
    fit |= {"group_in_channels_by_time": 500.0, "group_in_channels_by_bytes": 170.7}
    row = {"file": "llm-pruner-0.5", "kind": "checkpoint", "ffn_channels": 17000, "kv_groups": 58, "ideal_decode": 1.65}
    row |= {"decode_speedup": 1.52, "relative_time_spread": [0.6, 0.7], "predicted_speedup": 1.50}
    row |= {"measured_over_ideal": 1.52 / 1.65, "predicted_over_ideal": 1.50 / 1.65}
    run = {"protocol": {"model": "m", "dtype": "f16", "context": 256, "placements": 3, "repeats": 4}, "costs": fit, "rows": [row]}
    lines = report._costs_lines([run])
    text = "\n".join(lines)
    assert "takes the time of 500 FFN channels; by bytes it weighs 171" in text
    assert "| llm-pruner-0.5 | 17000 | 58 | 1.65x | 1.52x [1.43, 1.67] | 1.50x | 0.92 | 0.91 |" in lines
    assert not any(line.startswith("Every file") for line in lines)
    assert report._costs_lines([]) == []
    again = json.loads(json.dumps(run))
    again["rows"][0] |= {"measured_over_ideal": 0.97}
    again["costs"]["group_in_channels_by_time"] = 520.0
    lines = report._costs_lines([run, again])
    assert "the latest of 2 run(s)" in lines[1] and "| 1.52x [1.43, 1.67] |" in "\n".join(lines)
    assert "- llm-pruner-0.5: 0.92, 0.97" in lines and "by time: 500, 520" in "\n".join(lines)
    longer = json.loads(json.dumps(run))
    longer["protocol"]["prefill_lens"] = [256, 512]
    sections = [line for line in report._costs_lines([run, longer]) if line.startswith("**Where decode time goes**")]
    assert len(sections) == 2 and "each repeat also prefilling 512 tokens" in sections[1]
    again["rows"][0]["file"] = "other"
    assert {"- llm-pruner-0.5: 0.92, -", "- other: -, 0.97"} <= set(report._costs_lines([run, again]))


def test_missed_goal_cites_the_same_files_costs_readings(costs: ModuleType) -> None:
    """A missed row is matched to the costs runs' file of the same method, budget, model and type, padded as they export."""
    report = load_benchmark("llamacpp_report")
    protocol = {"model": "m", "dtype": "f16", "context": 256, "placements": 3, "repeats": 4}
    rows = [
        {"file": "wanda-sp-0.5", "kind": "checkpoint", "measured_over_ideal": 0.93, "predicted_over_ideal": 1.03},
        {"file": "wanda-sp-0.5-twin", "kind": "twin", "measured_over_ideal": 0.94, "predicted_over_ideal": 1.03},
    ]
    runs = [{"protocol": protocol, "costs": {}, "rows": rows}]
    padded = {"model": "m", "method": "wanda-sp", "budget": 0.5, "dtype": "f16", "pad_ffn_to": 32}
    text = report._costs_evidence(padded, runs)
    assert "after a 256-token prompt its decode per repeat reads 0.93 x ideal (its twin, the same widths cut" in text
    assert "from the dense weights: 0.94), the shape fit predicts 1.03" in text
    longer = {"protocol": protocol | {"prefill_lens": [256, 512]}, "costs": {}, "rows": rows[:1]}
    both = report._costs_evidence(padded, runs + [longer])
    assert "after a 256-token prompt its" in both and "; after a 256-token prompt with 512-token prefills its decode per repeat reads 0.93" in both
    assert report._costs_evidence(padded | {"pad_ffn_to": None}, runs) == ""  # other bytes than the costs runs timed
    assert report._costs_evidence(padded | {"dtype": "q8_0"}, runs) == ""  # no q8_0 run
    assert report._costs_evidence(padded | {"method": "flap"}, runs) == ""
