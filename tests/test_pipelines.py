"""Recalibrations as plugins and ``SCORER+RECALIBRATION`` pipelines: composition, reuse, reports, keys, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pruneframe
from pruneframe.checkpoint import read_report
from pruneframe.cli import main
from pruneframe.pipeline.host import PluginHost, UnknownNameError
from pruneframe.pipeline.recalibration import PipelineMethod, method_code_digest
from pruneframe.testing import tiny_model, tokens
from pruneframe.pipeline.units import UnitKind
from pruneframe_baselines.flap import BiasCompensation
from pruneframe_baselines.llm_pruner import LLMPruner
from test_compare import compare_settings, write_config
from workspace_files import make_workspace

BIAS = {"num_windows": 4, "seq_len": 16, "batch_size": 2}
CALIB = tokens(8, 32, seed=3)


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost.create()


def test_a_pipeline_is_the_scorers_score_and_the_recalibrations_recalibrate(host: PluginHost) -> None:
    method = host.method("llm-pruner+bias", {"num_samples": 2, "seq_len": 16, "recalibration": BIAS})
    assert isinstance(method, PipelineMethod) and method.name == "llm-pruner+bias"
    assert isinstance(method.scorer, LLMPruner) and method.scorer.config.num_samples == 2
    assert isinstance(method.recalibration, BiasCompensation) and method.recalibration.config.num_windows == 4
    assert method.config.scope == "uniform" and method.config.recalibration.seq_len == 16  # the scorer's own allocation
    dumped = method.config.model_dump(mode="json")
    assert host.method("llm-pruner+bias", dumped).config == method.config  # the settings round-trip
    assert sorted(host.recalibrations()) == ["bias", "none", "refit", "scales"]
    with pytest.raises(UnknownNameError, match="unknown recalibration 'bais'; did you mean 'bias'"):
        host.method("llm-pruner+bais")
    with pytest.raises(UnknownNameError, match="'bias' returns scales or biases, so no recalibration can follow it"):
        host.method("llm-pruner+bias+scales")  # a chain; only a weight refit may lead one
    with pytest.raises(UnknownNameError, match="expected SCORER\\+RECALIBRATION"):
        host.method("llm-pruner++scales")
    with pytest.raises(ValueError, match="num_windows"):
        host.method("magnitude+bias", {"recalibration": {"num_windows": 0}})


def _hand_bias(model: torch.nn.Module, mask: torch.Tensor, units) -> torch.Tensor:
    """FLAP's MLP compensation by hand: W_down[:, removed] @ mean(down_proj input)[removed], per layer."""
    inputs: list[list[torch.Tensor]] = [[] for _ in model.model.layers]
    hooks = [
        layer.mlp.down_proj.register_forward_hook(lambda m, a, o, i=i: inputs[i].append(a[0].reshape(-1, a[0].shape[-1])))
        for i, layer in enumerate(model.model.layers)
    ]
    windows = CALIB.reshape(-1)[: BIAS["num_windows"] * BIAS["seq_len"]].view(BIAS["num_windows"], BIAS["seq_len"])
    with torch.no_grad():
        model(windows)
    for h in hooks:
        h.remove()
    out = []
    for i, layer in enumerate(model.model.layers):
        mean = torch.cat(inputs[i]).double().mean(0)
        removed = ~mask[units.slice(i, UnitKind.FFN)]
        out.append(layer.mlp.down_proj.weight.double()[:, removed] @ mean[removed])
    return torch.stack(out).float()


def test_one_recalibration_is_reused_unchanged_across_two_scorers(host: PluginHost) -> None:
    bias = host.recalibration("bias", BIAS)
    model = tiny_model("llama-gqa")
    results = {}
    for scorer in ("magnitude", "random"):
        pipeline = PipelineMethod(host.method(scorer), bias)  # the very same recalibration object
        results[scorer] = pruneframe.prune(model, method=pipeline, budget=0.5, calibration=CALIB, progress=False, host=host)
    masks = [r.mask for r in results.values()]
    assert not torch.equal(*masks)  # two scorers, two masks
    for scorer, result in results.items():
        rec = result.recalibration
        assert rec is not None and rec.scales is None and rec.attn_bias is not None
        torch.testing.assert_close(rec.mlp_bias, _hand_bias(model, result.mask, result.units), atol=1e-5, rtol=1e-4)
        assert result.report.method == f"{scorer}+bias"
        assert result.report.pipeline == {"scorer": scorer, "recalibration": "bias"}
        assert result.report.stages["score"].plugin == scorer
        assert (result.report.stages["recalibrate"].plugin, result.report.stages["recalibrate"].package) == ("flap", "pruneframe_baselines")
        assert result.report.config["recalibration"] == BIAS | {"offload": "none", "compute_device": None}


def test_flap_plus_bias_is_flap_and_flap_plus_none_is_flap_without_compensation(host: PluginHost) -> None:
    model = tiny_model("llama-gqa")
    flap = {"num_windows": 4, "seq_len": 16, "batch_size": 2}
    own = pruneframe.prune(model, method="flap", budget=0.5, calibration=CALIB, config=flap, progress=False, host=host)
    piped = pruneframe.prune(model, method="flap+bias", budget=0.5, calibration=CALIB, config={**flap, "recalibration": BIAS}, progress=False, host=host)
    bare = pruneframe.prune(model, method="flap+none", budget=0.5, calibration=CALIB, config=flap, progress=False, host=host)
    assert torch.equal(own.mask, piped.mask) and torch.equal(own.mask, bare.mask)
    for name, value in own.model.state_dict().items():
        assert torch.equal(value, piped.model.state_dict()[name]), name
    assert bare.recalibration is None and own.recalibration is not None
    assert bare.report.kept_params < own.report.kept_params  # no compensation biases were added


def test_grasprune_plus_scales_recalibrates_as_grasprune_does(host: PluginHost) -> None:
    model = tiny_model("llama-gqa")
    stage_a = {"num_sequences": 4, "seq_len": 16, "epochs": 1, "attn_implementation": "eager"}
    scales = {"num_sequences": 4, "offset_sequences": 4, "seq_len": 16, "attn_implementation": "eager"}
    own = pruneframe.prune(model, method="grasprune", budget=0.5, calibration=CALIB, config=stage_a, progress=False, host=host)
    piped = pruneframe.prune(
        model, method="grasprune+scales", budget=0.5, calibration=CALIB, config={**stage_a, "recalibration": scales}, progress=False, host=host
    )
    assert torch.equal(own.mask, piped.mask)
    torch.testing.assert_close(piped.recalibration.scales, own.recalibration.scales, atol=0, rtol=0)
    assert not torch.equal(own.recalibration.scales, torch.ones_like(own.recalibration.scales))
    other = pruneframe.prune(model, method="magnitude+scales", budget=0.5, calibration=CALIB, config={"recalibration": scales}, progress=False, host=host)
    assert other.report.stages["recalibrate"].package == "pruneframe_grasprune" and other.recalibration.scales is not None


def test_the_key_covers_the_recalibration_and_its_code(host: PluginHost) -> None:
    plain, piped = host.method("magnitude"), host.method("magnitude+bias")
    assert method_code_digest(piped) not in (method_code_digest(plain), method_code_digest(piped.recalibration))
    stages = host.stage_candidates(piped)
    assert [r.package for r in stages["score"]] == ["pruneframe_baselines"]
    assert [r.plugin for r in stages["recalibrate"]] == ["flap"]
    assert [r.plugin for r in host.stage_candidates(host.method("magnitude+scales"))["recalibrate"]] == ["grasprune"]
    assert piped.config.model_dump() != host.method("magnitude+bias", {"recalibration": {"num_windows": 8}}).config.model_dump()


def test_cli_prune_and_compare_take_pipelines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(ws["data_dir"]))
    ckpt = tmp_path / "ckpt"
    assert (
        main(
            [
                "prune",
                "--model",
                str(ws["model"]),
                "--method",
                "magnitude+bias",
                "--budget",
                "0.5",
                "--method-config",
                json.dumps({"recalibration": BIAS}),
                "--calib",
                str(ws["calib"]),
                "--out",
                str(ckpt),
                "--quiet",
            ]
        )
        == 0
    )
    report = read_report(ckpt)
    assert report.method == "magnitude+bias" and report.pipeline == {"scorer": "magnitude", "recalibration": "bias"}
    assert report.config["recalibration"]["num_windows"] == 4 and report.stages["recalibrate"].plugin == "flap"
    out = tmp_path / "out"
    settings = {**compare_settings(ws, out), "methods": {"magnitude": {}, "magnitude+bias": {"recalibration": BIAS}}, "budgets": [0.5]}
    settings["evaluation"] = {**settings["evaluation"], "speed": None}
    assert main(["compare", "--config", str(write_config(tmp_path / "c.json", settings)), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    runs = {r["run_id"]: r for r in results["runs"]}
    assert set(runs) == {"magnitude-0.5-s0", "magnitude+bias-0.5-s0"}
    assert runs["magnitude+bias-0.5-s0"]["cache_key"] != runs["magnitude-0.5-s0"]["cache_key"]
    md = (out / "results.md").read_text()
    assert "| magnitude+bias | keep 0.5" in md and "| magnitude | keep 0.5" in md
    assert main(["plugins"]) == 0 and "RECALIBRATIONS" in capsys.readouterr().out
