"""Architecture adapters: slices of fused weights, checkpoints of every family (plain and per-layer), plugin families."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import FAMILIES, tiny_model, tokens
from transformers import AutoModelForCausalLM

from pruneframe.architectures import LayerSlices, SplitProjectionAdapter, adapter_for, builtin_adapters, discover
from pruneframe.checkpoint import CheckpointError, load_pruned, read_report_json, save
from pruneframe.evaluation.size import layer_widths, parameter_counts
from pruneframe.pipeline.fold import fold
from pruneframe.toolkit.gates import gated
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.host import PluginHost
from pruneframe.pipeline.units import UnitKind, UnitSet


def _uniform_mask(units: UnitSet, ffn: int, kv: int) -> torch.Tensor:
    """Keep the last ``ffn`` channels and the first ``kv`` groups of every layer (same widths everywhere)."""
    mask = torch.zeros(len(units), dtype=torch.bool)
    for i in range(units.num_layers):
        f, k = units.slice(i, UnitKind.FFN), units.slice(i, UnitKind.KV)
        mask[f.stop - ffn : f.stop] = True
        mask[k.start : k.start + kv] = True
    return mask


def _uneven_mask(units: UnitSet, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(len(units), generator=g) > 0.4
    for i in range(units.num_layers):
        mask[units.slice(i, UnitKind.KV).start] = True  # at least one KV group
        mask[units.slice(i, UnitKind.FFN).start + i] = False  # widths differ between layers
    return mask


def test_phi3_units_are_row_ranges_of_the_fused_weights() -> None:
    model = tiny_model("phi3")
    layer = adapter_for(model).layer_slices(model)[0]
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    hd, q_rows = 8, 6 * 8
    assert layer.slice("q_proj").linear is attn.qkv_proj and layer.slice("k_proj").linear is attn.qkv_proj
    assert (layer.slice("q_proj").start, layer.slice("q_proj").stop) == (0, q_rows)
    assert (layer.slice("k_proj").start, layer.slice("k_proj").stop) == (q_rows, q_rows + 2 * hd)
    assert (layer.slice("v_proj").start, layer.slice("v_proj").stop) == (q_rows + 2 * hd, q_rows + 4 * hd)
    assert (layer.slice("up_proj").start, layer.slice("up_proj").stop) == (40, 80)
    assert layer.mlp_in is mlp.gate_up_proj and layer.attn_in is attn.qkv_proj
    # the second KV group's key rows are rows q_rows + hd .. q_rows + 2 hd of qkv_proj
    k = layer.slice("k_proj")
    assert k.indices(torch.tensor([1])).tolist() == list(range(q_rows + hd, q_rows + 2 * hd))
    torch.testing.assert_close(k.weight, attn.qkv_proj.weight[q_rows : q_rows + 2 * hd])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_uneven_checkpoint_reloads_identically_through_both_loaders(tmp_path, family: str) -> None:
    model = tiny_model(family)
    units = discover(model)
    folded = fold(model, units, _uneven_mask(units))
    out = save(tmp_path / "ckpt", folded)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"].startswith("pruneframe_") and "auto_map" in config
    assert read_report_json(out)["config_form"] == "pruneframe"
    ids = tokens(2, 10, seed=4)
    loaded, _ = load_pruned(out)
    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        want = folded(ids).logits
        torch.testing.assert_close(loaded(ids).logits, want, atol=0, rtol=0)
        torch.testing.assert_close(remote(ids).logits, want, atol=0, rtol=0)
    assert layer_widths(loaded) == layer_widths(folded)
    assert len({(w.ffn, w.kv_heads) for w in layer_widths(loaded)}) > 1


def test_the_tiny_models_are_the_ones_the_adapters_describe() -> None:
    described = {name: adapter for adapter in builtin_adapters() for name in adapter.tiny_models()}
    assert set(FAMILIES) == set(described)
    for name, adapter in described.items():
        model = tiny_model(name)
        assert type(model) is adapter.tiny_models()[name][0]
        assert adapter_for(model) is not None and type(adapter_for(model)) is type(adapter)


def _uneven_checkpoint(tmp_path, family: str = "qwen2"):
    model = tiny_model(family)
    units = discover(model)
    folded = fold(model, units, _uneven_mask(units))
    return folded, save(tmp_path / "ckpt", folded)


def test_a_checkpoint_written_before_the_family_field_still_loads(tmp_path) -> None:
    """Older checkpoints name their family only by ``model_type`` (``pruneframe_qwen2``)."""
    folded, out = _uneven_checkpoint(tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config.pop("pruned_family") == "transformers.models.qwen2.modeling_qwen2.Qwen2ForCausalLM"
    (out / "config.json").write_text(json.dumps(config))
    loaded, _ = load_pruned(out)
    ids = tokens(2, 10, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, folded(ids).logits, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("family", "error", "message"),
    [
        # no registered adapter handles the name: refused before the module is imported
        ("pruneframe_nowhere.NowhereForCausalLM", NotImplementedError, "no installed plugin handles NowhereForCausalLM"),
        ("collections.Qwen2ForCausalLM", CheckpointError, "'collections.Qwen2ForCausalLM' cannot be imported"),
        ("builtins.object", NotImplementedError, "no installed plugin handles object"),
        ("Qwen2ForCausalLM", CheckpointError, "must be 'module.ClassName'"),
    ],
)
def test_a_family_field_naming_anything_else_is_refused(tmp_path, family: str, error: type, message: str) -> None:
    _, out = _uneven_checkpoint(tmp_path)
    config = json.loads((out / "config.json").read_text())
    config["pruned_family"] = family
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(error, match=message):
        load_pruned(out)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_uniform_widths_save_a_plain_config_of_the_family(tmp_path, family: str) -> None:
    model = tiny_model(family)
    units = discover(model)
    kv = 1 if units.layers[0].kv_groups == 1 else units.layers[0].kv_groups - 1
    folded = fold(model, units, _uniform_mask(units, ffn=24, kv=kv))
    out = save(tmp_path / "ckpt", folded)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == model.config.model_type
    assert "auto_map" not in config and not (out / "modeling_pruneframe.py").exists()
    assert config["intermediate_size"] == 24 and config["num_key_value_heads"] == kv
    plain = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False).eval()
    assert type(plain) is type(model)
    ids = tokens(2, 10, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, folded(ids).logits, atol=0, rtol=0)
    loaded, _ = load_pruned(out)
    assert type(loaded) is type(model)
    assert read_report_json(out)["config_form"] == "plain"


def test_folding_a_reloaded_checkpoint_again_stays_exact(tmp_path) -> None:
    """A pruned Phi-3 (per-layer head counts) reloads, is discovered again and folds again exactly."""
    model = tiny_model("phi3")
    units = discover(model)
    first = fold(model, units, _uneven_mask(units, seed=1))
    loaded, _ = load_pruned(save(tmp_path / "one", first))
    again_units = discover(loaded)
    assert again_units.layers == discover(first).layers
    mask = _uneven_mask(again_units, seed=2)
    ids = tokens(2, 10, seed=7)
    with torch.no_grad(), gated(loaded, again_units, mask):
        want = loaded(ids).logits
    with torch.no_grad():
        torch.testing.assert_close(fold(loaded, again_units, mask)(ids).logits, want, atol=1e-5, rtol=1e-5)


def test_size_counts_the_fused_weights_as_prunable() -> None:
    model = tiny_model("phi3")
    counts = parameter_counts(model)
    units = discover(model)
    output_biases = 0  # phi3 has none
    assert counts["prunable"] == units.prunable_params + output_biases
    assert counts["total"] == units.total_params


def test_a_plugin_registers_a_family_through_the_one_hook() -> None:
    inner = tiny_model("llama-gqa")
    cls = type("NewFamilyForCausalLM", (type(inner),), {})
    model = cls(inner.config).eval()
    model.load_state_dict(inner.state_dict())

    class NewFamilyAdapter(SplitProjectionAdapter):
        name = "new-family"
        architectures = ("NewFamilyForCausalLM",)

    class Plugin:
        @hookimpl
        def pruneframe_register_architectures(self, register) -> None:
            register(NewFamilyAdapter())

    host = PluginHost.create(plugins=[Plugin()])
    adapter = host.adapter_for(model)
    assert isinstance(adapter, NewFamilyAdapter)  # the plugin's adapter comes before the core's
    units = host.discover_units(model)
    assert units.architecture == "NewFamilyForCausalLM" and units.adapter is adapter
    assert all(isinstance(ls, LayerSlices) for ls in units.layer_slices(model))
    with pytest.raises(TypeError, match="not an ArchitectureAdapter"):

        class Bad:
            @hookimpl
            def pruneframe_register_architectures(self, register) -> None:
                register(object())

        PluginHost.create(plugins=[Bad()]).adapters()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("max_elements", [1, 50, 1 << 22])
def test_blockwise_per_unit_sums_equal_the_whole_slice_sums(family: str, max_elements: int) -> None:
    """``per_unit_sum_of`` (float64 a block at a time) equals ``per_unit_sum`` of the whole upcast slice,
    and each block function sees the slice channels its block covers."""
    model = tiny_model(family).to(torch.bfloat16)
    for layer in adapter_for(model).layer_slices(model):
        for kind in (UnitKind.FFN, UnitKind.KV):
            for part in layer.of(kind):
                w = part.weight.detach().double()
                whole = part.per_unit_sum(w.square())
                blocks = part.per_unit_sum_of(lambda block, _: block.square(), max_elements=max_elements)
                torch.testing.assert_close(blocks, whole, rtol=1e-12, atol=0)
                # weight each slice channel (row or column) by its position: the block must see its own channels
                position = torch.arange(w.shape[part.axis], dtype=torch.float64)
                shaped = (lambda p: p[:, None]) if part.axis == 0 else (lambda p: p[None, :])
                ref = part.per_unit_sum(w.abs() * shaped(position))
                got = part.per_unit_sum_of(lambda block, ch: block.abs() * shaped(position[ch]), max_elements=max_elements)
                torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
