"""Uneven layers in transformers' own ``per_layer_config`` form, and native loading where a family honours it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from pruneframe.architectures import adapter_for, discover
from pruneframe.architectures.llama import LlamaAdapter
from pruneframe.checkpoint import _checkpoint_config, load_pruned, save
from pruneframe.checkpoint.modeling_pruneframe import apply_layer_shapes
from pruneframe.pipeline.fold import fold
from pruneframe.pipeline.units import UnitKind
from tiny import FAMILIES, tiny_model, tokens


def _uneven(family: str) -> torch.nn.Module:
    """``family``'s tiny model with layer 1 narrower in FFN channels and, where there are two, KV groups."""
    model = tiny_model(family)
    units = discover(model)
    mask = torch.ones(len(units), dtype=torch.bool)
    mask[units.slice(1, UnitKind.FFN)][:5] = False
    if units.layers[0].kv_groups > 1:
        mask[units.slice(0, UnitKind.KV)][:1] = False
    return fold(model, units, mask)


@pytest.mark.parametrize("family", FAMILIES)
def test_uneven_checkpoint_states_its_widths_in_transformers_per_layer_form(family: str, tmp_path: Path) -> None:
    folded = _uneven(family)
    folder = save(tmp_path / "ckpt", folded, report={"method": "test"})
    stored = json.loads((folder / "config.json").read_text())
    assert stored["per_layer_config"], "uneven layers but no per_layer_config"
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert config.is_heterogeneous
    widths = adapter_for(folded).layer_widths(folded)
    assert [(c.intermediate_size, c.num_attention_heads, c.num_key_value_heads) for c in config.per_layer_config] == [
        (w.ffn, w.q_heads, w.kv_heads) for w in widths
    ]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = tokens(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, folded(ids).logits)
    reloaded, _ = load_pruned(folder)
    resaved = save(tmp_path / "again", reloaded, report={"method": "test"})
    assert json.loads((resaved / "config.json").read_text())["per_layer_config"] == stored["per_layer_config"]


class HeteroLlamaConfig(LlamaConfig):
    """A stand-in for a family whose config validates each layer's widths on its own."""

    model_type = "hetero_llama"

    def validate_architecture(self) -> None:
        for layer in self.per_layer_config if self.is_heterogeneous else [self]:
            if layer.hidden_size % layer.num_attention_heads:
                raise ValueError("hidden_size is not a multiple of num_attention_heads")


class HeteroLlamaForCausalLM(LlamaForCausalLM):
    """A stand-in for a family whose modeling code builds each layer from ``config.per_layer_config``."""

    config_class = HeteroLlamaConfig

    def __init__(self, config: HeteroLlamaConfig) -> None:
        heterogeneous = config.is_heterogeneous
        if heterogeneous:
            config.allow_global_per_layer_attribute_access = True
        super().__init__(config)
        if heterogeneous:
            shapes = [
                {"intermediate_size": c.intermediate_size, "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads}
                for c in config.per_layer_config
            ]
            apply_layer_shapes(self, shapes)
            config.allow_global_per_layer_attribute_access = False


class HeteroLlamaAdapter(LlamaAdapter):
    """The Llama adapter for that family."""

    name = "hetero-llama"

    def family_class(self, model: torch.nn.Module) -> type[torch.nn.Module]:
        return HeteroLlamaForCausalLM


def test_a_family_that_honours_per_layer_config_gets_a_plain_config_it_loads_natively() -> None:
    folded = _uneven("llama-gqa")
    config, widths, plain = _checkpoint_config(folded, adapter=HeteroLlamaAdapter())
    assert plain and config["model_type"] == "hetero_llama"
    assert "auto_map" not in config and "pruned_layers" not in config
    native = HeteroLlamaForCausalLM(HeteroLlamaConfig.from_dict(config)).eval()
    assert LlamaAdapter().layer_widths(native) == widths
    native.load_state_dict(folded.state_dict())
    ids = tokens(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(native(ids).logits, folded(ids).logits)


def test_a_family_that_ignores_per_layer_config_gets_the_shipped_class() -> None:
    config, _, plain = _checkpoint_config(_uneven("llama-gqa"))
    assert not plain and config["model_type"] == "pruneframe_llama"
    assert config["per_layer_config"] and config["allow_global_per_layer_attribute_access"] is True
