"""Chained recalibrations (``SCORER+refit+scales``): a later step runs on the earlier step's weights, and both fold."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pruneframe.architectures import discover
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.pipeline.host import PluginHost, UnknownNameError
from pruneframe.pipeline.methods import Recalibration, ScoringContext
from pruneframe.pipeline.recalibration import ChainedRecalibration, RecalibrationMethod, split_pipeline_name
from pruneframe.pipeline.session import PruneSession
from pruneframe.testing import tiny_model, tokens
from test_refit_plugin import assert_folds_to_the_gated_model_and_reloads

REFIT = {"num_windows": 4, "seq_len": 16, "batch_size": 2}
SCALES = {"num_sequences": 4, "offset_sequences": 0, "seq_len": 16, "epochs": 1}


class _Probe(RecalibrationMethod):
    """Records the down_proj weights it sees and returns a scale per unit."""

    name = "probe"

    def recalibrate(self, context: ScoringContext, mask: torch.Tensor) -> Recalibration:
        self.seen = [mods.down_proj.weight.detach().clone() for mods in context.units.layer_slices(context.model)]
        return Recalibration(scales=torch.full((len(context.units),), 0.5))


def test_a_pipeline_name_may_chain_recalibrations() -> None:
    assert split_pipeline_name("llm-pruner+refit+scales") == ("llm-pruner", "refit+scales")
    host = PluginHost.create()
    method = host.method("llm-pruner+refit+scales", {"recalibration": {"refit": {"damping": 0.1}, "scales": {"epochs": 2}}})
    assert method.name == "llm-pruner+refit+scales" and isinstance(method.recalibration, ChainedRecalibration)
    assert method.config.recalibration.refit.damping == 0.1 and method.config.recalibration.scales.epochs == 2
    assert [type(p).__name__ for p in method.code_parts()] == ["LLMPruner", "Refit", "Scales"]
    with pytest.raises(UnknownNameError, match="'scales' returns scales or biases, so no recalibration can follow it"):
        host.method("llm-pruner+scales+refit")
    with pytest.raises(UnknownNameError, match="settings for 'bias', which is not one of its steps"):
        host.method("llm-pruner+refit+scales", {"recalibration": {"bias": {}}})
    with pytest.raises(UnknownNameError, match="names a step twice"):
        host.method("llm-pruner+refit+refit")


def test_the_later_step_sees_the_earlier_weights_and_the_dense_model_is_restored() -> None:
    host = PluginHost.create()
    model = tiny_model("llama-gqa")
    units = discover(model)
    mask = torch.rand(len(units), generator=torch.Generator().manual_seed(0)) < 0.6
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    refit, probe = host.recalibration("refit", REFIT), _Probe()
    context = ScoringContext(
        model=model,
        units=units,
        calibration=CalibrationData(tokens(8, 32), name="tokens"),
        budget=0,
        minimum=torch.zeros(len(units), dtype=torch.bool),
        project=lambda scores: scores > 0,
        progress=False,
    )
    alone = refit.recalibrate(context, mask)
    merged = ChainedRecalibration([refit, probe]).recalibrate(context, mask)
    for seen, replacement in zip(probe.seen, alone.down_proj):
        torch.testing.assert_close(seen, replacement, rtol=0, atol=0)
    assert all(torch.equal(dense[k], v) for k, v in model.state_dict().items())
    assert merged.scales is not None and bool((merged.scales == 0.5).all())
    for got, want in zip(merged.down_proj + merged.o_proj, alone.down_proj + alone.o_proj):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_refit_then_scales_folds_to_the_gated_model_within_the_budget_and_reloads(tmp_path: Path) -> None:
    model = tiny_model("qwen2")
    config = {"num_samples": 4, "seq_len": 16, "recalibration": {"refit": REFIT, "scales": SCALES}}
    result = PruneSession(model, "llm-pruner+refit+scales", 0.6, config).run(tokens(8, 32), progress=False)
    rec = result.recalibration
    assert rec.scales is not None and rec.down_proj is not None and rec.o_proj is not None
    assert result.report.pipeline == {"scorer": "llm-pruner", "recalibration": "refit+scales"}
    assert_folds_to_the_gated_model_and_reloads(model, result, tmp_path)
