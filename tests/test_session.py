"""One prune session: budget resolved up front, one typed report, read back by field everywhere."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import pytest
import torch

from pruneframe.architectures import discover, layer_slices
from pruneframe.pipeline.budget import BudgetError, KeepTotal, resolve
from pruneframe.checkpoint import read_report, read_report_json, save
from pruneframe.harness.report import rows
from pruneframe.pipeline.host import PluginHost
from pruneframe.pipeline.prune_report import CheckpointReport, PruneReport
from pruneframe.pipeline.session import PruneSession
from tiny import tiny_model, tokens


def test_the_budget_is_resolved_when_the_session_is_built() -> None:
    model = tiny_model()
    session = PruneSession(model, "magnitude", 0.6, budget_kind="total")
    assert session.budget == KeepTotal(keep=0.6)
    assert session.target == resolve(session.budget, discover(model), session.method.minimum(session.units))
    with pytest.raises(BudgetError, match="mandatory"):
        PruneSession(model, "magnitude", 0.01)  # fails before any scoring
    with pytest.raises(ValueError, match="method given by name"):
        PruneSession(model, session.method, 0.5, {"norm": "l1"})


def test_run_returns_a_typed_report_that_survives_json() -> None:
    model = tiny_model("llama-gqa")  # no biases: flap adds its corrections as new ones
    session = PruneSession(model, "flap", 0.5, {"num_windows": 4, "seq_len": 16, "batch_size": 2}, host=PluginHost.create(), model_identity={"spec": "tiny"})
    result = session.run(tokens(8, 16), progress=False, calibration_source={"origin": "random ids"})
    report = result.report
    assert isinstance(report, PruneReport) and report.method == "flap" and report.budget_label == "keep 0.5 of prunable params"
    assert report.kept_params == sum(p.numel() for p in result.model.parameters())
    assert report.kept_params == result.units.kept_params(result.mask) + report.added_params and report.added_params > 0
    assert report.kept_prunable_params <= report.budget_prunable_params == session.target
    assert report.kept_fraction_of_total == pytest.approx(report.kept_params / report.dense_params)
    assert report.calibration is not None and report.calibration_tokens == report.calibration.tokens_read > 0
    t = report.timings
    assert t.total_s == pytest.approx(t.score_s + t.project_recalibrate_s + t.fold_s)
    assert report.memory.peak_rss_bytes >= report.memory.start_rss_bytes > 0
    assert (report.device, report.dtype, report.units) == ("cpu", "float32", len(result.units))
    assert report.model == {"spec": "tiny"} and report.calibration_source == {"origin": "random ids"}
    assert set(report.software) >= {"torch", "transformers", "pruneframe"}
    assert PruneReport.model_validate_json(json.dumps(report.model_dump(mode="json"))) == report
    with pytest.raises(RuntimeError, match="already ran"):
        session.run(tokens(8, 16), progress=False)


def test_checkpoint_and_comparison_table_read_the_report_by_field(tmp_path: Path) -> None:
    result = PruneSession(tiny_model(), "magnitude", 0.5).run(progress=False)
    path = save(tmp_path / "ckpt", result.model, report=result.report)
    stored = read_report(path)
    assert isinstance(stored, CheckpointReport) and stored.kept_params == result.report.kept_params == stored.parameters
    assert [layer["intermediate_size"] for layer in stored.layers] == [w["ffn_channels"] for w in result.units.widths(result.mask)]
    assert PruneReport.model_validate(stored.model_dump(exclude={"layers", "config_form", "parameters"})) == result.report

    record = {"run_id": "magnitude-0.5-s0", "kind": "pruned", "status": "ok", "prune": result.report.model_dump(mode="json"), "eval": {}}
    _, row = rows({"run_id": "dense", "kind": "dense", "eval": {}}, [record], result.report.dense_params)
    assert row["kept_params"] == result.report.kept_params and row["kept_fraction"] == result.report.kept_fraction_of_total
    assert row["prune_s"] == result.report.timings.total_s and row["tokens_processed"] == 0
    assert row["peak_rss_mb"] == result.report.memory.peak_rss_bytes / 2**20

    save(tmp_path / "by-hand", result.model, report={"method": "by hand"})
    assert read_report_json(tmp_path / "by-hand")["method"] == "by hand"
    with pytest.raises(ValueError, match="not a prune's report"):
        read_report(tmp_path / "by-hand")


def test_an_inplace_prune_leaves_no_dense_weight_alive() -> None:
    model = tiny_model()
    old = [weakref.ref(layer.mlp_in.weight) for layer in layer_slices(model)]
    old += [weakref.ref(layer.o_proj.weight) for layer in layer_slices(model)]
    result = PruneSession(model, "magnitude", 0.5).run(progress=False, inplace=True)
    gc.collect()
    assert result.model is model and all(ref() is None for ref in old)
    assert result.report.kept_params == sum(p.numel() for p in model.parameters())


def test_device_argument_moves_the_model_and_is_recorded() -> None:
    model = tiny_model().to(torch.bfloat16)
    result = PruneSession(model, "magnitude", 0.5, device="cpu").run(progress=False)
    assert (result.report.device, result.report.dtype) == ("cpu", "bfloat16")


def test_a_model_with_offloaded_weights_is_refused_by_name() -> None:
    """Weights left on the meta device (accelerate's offload keeps them outside the module) cannot be scored or folded."""
    from accelerate import cpu_offload

    model = tiny_model("llama-gqa")
    model.model.layers[1].mlp.down_proj.to("meta")
    with pytest.raises(ValueError, match=r"LlamaForCausalLM\.model\.layers\.1\.mlp\.down_proj\.weight has no data"):
        PruneSession(model, "magnitude", 0.5)
    offloaded = cpu_offload(tiny_model("llama-gqa"), execution_device=torch.device("cpu"))
    assert offloaded(tokens(1, 4)).logits.shape[-1] == 97  # it runs, its weights outside the module
    with pytest.raises(ValueError, match=r"embed_tokens\.weight has no data .*offload: cpu"):
        PruneSession(offloaded, "magnitude", 0.5)
