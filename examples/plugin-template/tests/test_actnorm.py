"""act-norm passes pruneframe's plugin checks on every family, and its scores are what it says."""

from __future__ import annotations

import pytest
import torch

from pruneframe.architectures import discover
from pruneframe.toolkit.collect import collect_input_moments
from pruneframe.pipeline.host import PluginHost
from pruneframe.testing import FAMILIES, check_method, check_scores, tiny_model, tokens
from pruneframe.pipeline.units import UnitKind

FAST = {"num_windows": 4, "seq_len": 16, "batch_size": 2}


def test_the_entry_point_registers_the_method() -> None:
    assert "act-norm" in PluginHost.create().methods()


@pytest.mark.parametrize("family", FAMILIES)
def test_passes_the_plugin_checks(family: str, tmp_path) -> None:
    check_method("act-norm", family, tmp_path, config=FAST)


def test_ffn_scores_are_activation_rms_times_down_column_norm() -> None:
    model = tiny_model("llama-gqa")
    scores = check_scores("act-norm", "llama-gqa", FAST)
    units = discover(model)
    # the checks' calibration stream is tokens(4, 16); act-norm cuts FAST's windows from it
    from pruneframe.pipeline.calibration import CalibrationData

    windows = CalibrationData(tokens(4, 16), name="tokens").windows(FAST["num_windows"], FAST["seq_len"])
    moments = collect_input_moments(model, windows, {"down": lambda m: m.down_proj}, progress=False)
    layer = model.model.layers[1]
    want = moments["down"][1].mean_square().sqrt() * layer.mlp.down_proj.weight.detach().double().norm(dim=0)
    torch.testing.assert_close(scores[units.slice(1, UnitKind.FFN)], want.float())
