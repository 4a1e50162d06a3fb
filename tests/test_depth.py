"""Depth: whole blocks and layers as units (fold, checkpoints, generation) and the Block Influence methods."""

from __future__ import annotations

import json

import pytest
import torch
from test_compare import compare_settings, write_config
from tiny import tiny_model, tokens
from workspace_files import make_workspace

import pruneframe
from pruneframe.architectures import discover
from pruneframe.checkpoint import read_report
from pruneframe.cli import main
from pruneframe.pipeline.fold import fold
from pruneframe.pipeline.session import PruneSession
from pruneframe.pipeline.units import UnitKind
from pruneframe.testing import check_prune_fold_reload
from pruneframe.toolkit.gates import gated
from pruneframe_baselines.depth import block_influence

SMALL = {"num_windows": 4, "seq_len": 16, "batch_size": 2}


def _hand_layer_influence(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``1 - mean cos(h_i, h_{i+1})`` from the model's own hidden states (final norm set aside)."""
    norm = model.model.norm
    model.model.norm = torch.nn.Identity()
    try:
        with torch.no_grad():
            states = model(ids, output_hidden_states=True).hidden_states
    finally:
        model.model.norm = norm
    out = []
    for a, b in zip(states[:-1], states[1:]):
        cos = torch.nn.functional.cosine_similarity(a.double().flatten(0, 1), b.double().flatten(0, 1), dim=-1)
        out.append(1.0 - cos.mean())
    return torch.stack(out)


@pytest.mark.parametrize("family", ["llama-gqa", "gemma3", "phi3"])
def test_block_influence_matches_a_hand_computation(family: str) -> None:
    """Layer BI equals the hidden-state computation; a block made to output zero has BI exactly 0 and
    leaves the layer's BI to the other block."""
    model = tiny_model(family, num_hidden_layers=3)
    units = discover(model)
    layer = units.layer_slices(model)[1]
    with torch.no_grad():
        layer.o_proj.weight.zero_()  # layer 1's attention now adds nothing to the stream
    ids = tokens(4, 12, seed=3)
    got = block_influence(model, units, ids, batch_size=3)
    torch.testing.assert_close(got["layer"], _hand_layer_influence(model, ids), atol=1e-9, rtol=0)
    assert abs(float(got["attention"][1])) < 1e-12
    torch.testing.assert_close(got["mlp"][1], got["layer"][1], atol=1e-12, rtol=0)
    assert bool((got["attention"][[0, 2]] > 1e-6).all())


def test_shortgpt_removes_the_layer_of_lowest_influence() -> None:
    """At a budget of one layer less, ShortGPT drops the hand-computed argmin of Block Influence."""
    model = tiny_model("llama-gqa", num_hidden_layers=4)
    units = discover(model)
    calibration = tokens(8, 16, seed=1)
    expected = int(torch.argmin(_hand_layer_influence(model, calibration.reshape(-1, 16)[:4])))
    keep = 1 - (units.prunable_params // 4) / units.prunable_params
    result = pruneframe.prune(model, "shortgpt", keep, calibration=calibration, config=SMALL, progress=False)
    widths = units.widths(result.mask)
    removed = [i for i, w in enumerate(widths) if w["ffn_channels"] == 0 and w["kv_groups"] == 0]
    assert removed == [expected]
    assert result.model.config.num_hidden_layers == 3
    assert sum(p.numel() for p in result.model.parameters()) == units.kept_params(result.mask)


def test_block_influence_removes_the_idle_mlp_block_alone() -> None:
    """An MLP block that outputs zero has the lowest influence; at a budget of one MLP block less it
    goes, and its layer keeps its attention."""
    model = tiny_model("llama-gqa", num_hidden_layers=3)
    units = discover(model)
    with torch.no_grad():
        units.layer_slices(model)[2].down_proj.weight.zero_()
    ffn_cost = units.layers[2].ffn_cost * units.layers[2].ffn_channels
    keep = (units.prunable_params - ffn_cost) / units.prunable_params
    result = pruneframe.prune(model, "block-influence", keep, calibration=tokens(4, 16), config=SMALL, progress=False)
    widths = units.widths(result.mask)
    assert [(w["ffn_channels"], w["kv_groups"]) for w in widths] == [(40, 2), (40, 2), (0, 2)]
    assert not hasattr(result.model.model.layers[2], "post_attention_layernorm") or isinstance(
        result.model.model.layers[2].post_attention_layernorm, torch.nn.Identity
    )


@pytest.mark.parametrize("family", ["llama-gqa", "llama-mha-bias", "qwen2", "qwen3", "mistral", "gemma3", "phi3"])
@pytest.mark.parametrize(("method", "removal"), [("shortgpt", "layers"), ("block-influence", "blocks"), ("magnitude", "mixed")])
def test_removed_blocks_fold_exactly_and_reload(family: str, method: str, removal: str, tmp_path) -> None:
    """Budget check, fold == gated dense, reload with load_pruned and trust_remote_code, in every family."""
    config = {"removal": removal} | (SMALL if method != "magnitude" else {})
    check_prune_fold_reload(method, family, tmp_path, config=config, budget=0.45)


def test_mixed_removes_a_block_exactly_when_its_units_go() -> None:
    """A width method with ``removal="mixed"``: scores that rank all of one layer's FFN channels last
    empty that MLP block; its norm's parameters are credited and spent on other units."""
    model = tiny_model("llama-gqa", num_hidden_layers=3)
    units = discover(model)
    scores = torch.rand(len(units), generator=torch.Generator().manual_seed(0)) + 1.0
    scores[units.slice(1, UnitKind.FFN)] = -1.0
    session = PruneSession(model, "magnitude", 0.6, config={"removal": "mixed"})
    result = session.run(scores=scores, progress=False)
    widths = units.widths(result.mask)
    assert widths[1]["ffn_channels"] == 0 and all(w["kv_groups"] > 0 for w in widths)
    assert units.removed_overhead(result.mask) == units.layers[1].ffn_overhead > 0
    assert sum(p.numel() for p in result.model.parameters()) == units.kept_params(result.mask)
    # without removal the same scores keep the method's minimum of one channel there
    plain = PruneSession(tiny_model("llama-gqa", num_hidden_layers=3), "magnitude", 0.6).run(scores=scores, progress=False)
    assert units.widths(plain.mask)[1]["ffn_channels"] == 1


def test_generation_with_the_first_attention_removed_matches_the_gated_dense_model() -> None:
    """The KV cache keeps counting positions through a layer without attention (greedy decoding, 8 tokens)."""
    model = tiny_model("llama-gqa", num_hidden_layers=3)
    units = discover(model)
    mask = torch.ones(len(units), dtype=torch.bool)
    mask[units.slice(0, UnitKind.KV)] = False
    folded = fold(model, units, mask)
    ids = tokens(1, 6, seed=2)
    with torch.no_grad(), gated(model, units, mask):
        want = model.generate(ids, max_new_tokens=8, do_sample=False)
    got = folded.generate(ids, max_new_tokens=8, do_sample=False)
    assert got.tolist() == want.tolist()


def test_removed_layers_with_uniform_widths_save_as_the_family_with_fewer_layers(tmp_path) -> None:
    """ShortGPT's output is the family's own model with fewer layers: a plain config, no remote code."""
    model = tiny_model("llama-gqa", num_hidden_layers=4)
    result = pruneframe.prune(model, "shortgpt", 0.5, calibration=tokens(4, 16), config=SMALL, progress=False)
    saved = result.save(tmp_path / "short")
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 2
    assert "auto_map" not in config
    report = json.loads((saved / "pruning.json").read_text())
    assert report["method"] == "shortgpt"


def test_round_to_and_removal_are_refused_together() -> None:
    """The two constraints are not combined: the error names both settings."""
    with pytest.raises(ValueError, match="round_to cannot be combined with removal"):
        PruneSession(tiny_model("llama-gqa"), "magnitude", 0.5, config={"removal": "mixed", "round_to": 8})


def test_name_at_removal_is_the_method_with_that_setting() -> None:
    """``flap@mixed`` is FLAP with ``removal: mixed``, reported under its full name; a bad mode is refused by name."""
    from pruneframe.pipeline.host import PluginHost, UnknownNameError

    host = PluginHost.create()
    method = host.method("flap+scales@mixed", {"num_windows": 8})
    assert method.name == "flap+scales@mixed" and method.config.removal == "mixed"
    with pytest.raises(UnknownNameError, match="flap@deep"):
        host.method("flap@deep")


@pytest.mark.parametrize("method", ["block-influence+bias", "shortgpt+bias"])
def test_a_removed_blocks_bias_passes_its_post_norm_in_sandwich_layers(method: str) -> None:
    """Gemma 3: bias compensation of removed blocks folds exactly (the post-norm applied to the constant bias)."""
    model = tiny_model("gemma3")
    result = pruneframe.prune(model, method, 0.5, calibration=tokens(64, 128), config=SMALL, progress=False)
    assert result.report.removed_blocks is not None
    ids = tokens(2, 10, seed=5)
    with torch.no_grad(), gated(model, result.units, result.mask, result.recalibration):
        want = model(ids).logits
    with torch.no_grad():
        got = result.model(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_cli_prune_and_compare_take_depth_pipelines(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``prune --method shortgpt`` saves the family's model with fewer layers; ``compare`` runs depth and
    ``@mixed`` pipelines as rows of their own, each recording what it removed."""
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(ws["data_dir"]))
    ckpt = tmp_path / "ckpt"
    args = ["prune", "--model", str(ws["model"]), "--method", "shortgpt", "--budget", "0.5", "--method-config", json.dumps(SMALL)]
    assert main([*args, "--calib", str(ws["calib"]), "--out", str(ckpt), "--quiet"]) == 0
    report = read_report(ckpt)
    assert report.method == "shortgpt" and report.removed_blocks and report.removed_blocks["layers"]
    out = tmp_path / "out"
    methods = {"shortgpt": SMALL, "block-influence": SMALL, "magnitude@mixed": {}}
    settings = {**compare_settings(ws, out), "methods": methods, "budgets": [0.5]}
    settings["evaluation"] = {**settings["evaluation"], "speed": None}
    assert main(["compare", "--config", str(write_config(tmp_path / "c.json", settings)), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {r["run_id"] for r in results["runs"]} == {"shortgpt-0.5-s0", "block-influence-0.5-s0", "magnitude@mixed-0.5-s0"}
    assert all(r["status"] == "ok" for r in results["runs"])


@pytest.mark.parametrize("family", ["llama-gqa", "gemma3", "phi3"])
def test_streamed_logits_of_a_model_with_removed_blocks_equal_its_forward(family: str) -> None:
    """Layer-by-layer evaluation (``--eval-compute-device``) runs removed blocks as the whole model does."""
    from pruneframe.toolkit.streaming import streamed_logits

    model = tiny_model(family)
    units = discover(model)
    mask = torch.ones(len(units), dtype=torch.bool)
    mask[units.slice(0, UnitKind.KV)] = False
    mask[units.slice(1, UnitKind.FFN)] = False
    mask[units.slice(2, UnitKind.FFN)] = False
    mask[units.slice(2, UnitKind.KV)] = False
    folded = fold(model, units, mask)
    batches = tokens(4, 12, seed=7).split(2)
    with torch.no_grad():
        streamed = list(streamed_logits(folded, batches, "cpu"))
        whole = [folded(input_ids=b, use_cache=False).logits for b in batches]
    for s, w in zip(streamed, whole, strict=True):
        torch.testing.assert_close(s, w, rtol=1e-5, atol=1e-5)


class _Skip(torch.nn.Module):
    """A decoder layer's stand-in that returns the stream it receives."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.attention_type = getattr(layer, "attention_type", None)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


def _hand_skip_losses(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Per layer, the model's own mean loss with that layer swapped for a pass-through, minus the dense loss."""

    def loss() -> float:
        with torch.no_grad():
            return float(model(ids, labels=ids).loss)

    dense, layers, out = loss(), model.model.layers, []
    for i in range(len(layers)):
        original = layers[i]
        layers[i] = _Skip(original)
        try:
            out.append(loss() - dense)
        finally:
            layers[i] = original
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("family", ["llama-gqa", "gemma3"])
def test_minitron_depth_ranks_layers_by_the_loss_of_skipping_them(family: str) -> None:
    """The depth mode's importance is the loss increase of the model with that layer swapped by hand for a
    pass-through; an idle layer costs nothing, and at a budget of one layer less the least important goes."""
    from pruneframe_baselines.minitron import layer_loss_importance

    model = tiny_model(family, num_hidden_layers=3)
    units = discover(model)
    ids = tokens(4, 16, seed=2)
    got = layer_loss_importance(model, units, ids, batch_size=3)
    torch.testing.assert_close(got, _hand_skip_losses(model, ids), atol=1e-5, rtol=0)
    layer = units.layer_slices(model)[1]
    with torch.no_grad():  # layer 1 now adds nothing to the stream
        layer.o_proj.weight.zero_()
        layer.down_proj.weight.zero_()
    assert abs(float(layer_loss_importance(model, units, ids, batch_size=4)[1])) < 1e-6
    keep = 1 - (units.prunable_params // 3) / units.prunable_params
    result = pruneframe.prune(model, "minitron@layers", keep, calibration=tokens(16, 16, seed=1), config=SMALL, progress=False)
    widths = units.widths(result.mask)
    increase = result.report.method_stats["layer_loss_increase"]
    assert increase[1] == pytest.approx(0, abs=1e-6)  # random layers may even lower the loss: the least important goes
    assert [i for i, w in enumerate(widths) if w["ffn_channels"] == 0 and w["kv_groups"] == 0] == [min(range(3), key=increase.__getitem__)]
    assert result.model.config.num_hidden_layers == 2 and result.model.config.hidden_size == model.config.hidden_size
