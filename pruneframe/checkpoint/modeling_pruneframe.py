"""Modeling code shipped inside every pruneframe checkpoint with uneven layers (needs only torch and transformers).

A pruned model is the original architecture with different widths per layer: each layer's FFN
width, KV heads, query heads, and whether down_proj / o_proj gained an output bias are recorded in
``config.pruned_layers``. These classes build the original model, then resize each layer's linear
modules to the recorded shapes, so the safetensors weights load with strict shapes. Two layouts:
separate projections (Llama, Mistral, Qwen2, Qwen3, Gemma 3) and fused ``qkv_proj`` /
``gate_up_proj`` (Phi-3, whose attention reads its head counts from a per-layer config copy).
Load with ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)


def _resize(linear: nn.Linear, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=bias, device=linear.weight.device, dtype=linear.weight.dtype)


def _resize_split(mlp: nn.Module, attn: nn.Module, width: int, q: int, kv: int, shape: dict) -> None:
    mlp.gate_proj = _resize(mlp.gate_proj, mlp.gate_proj.in_features, width, mlp.gate_proj.bias is not None)
    mlp.up_proj = _resize(mlp.up_proj, mlp.up_proj.in_features, width, mlp.up_proj.bias is not None)
    attn.q_proj = _resize(attn.q_proj, attn.q_proj.in_features, q, attn.q_proj.bias is not None)
    attn.k_proj = _resize(attn.k_proj, attn.k_proj.in_features, kv, attn.k_proj.bias is not None)
    attn.v_proj = _resize(attn.v_proj, attn.v_proj.in_features, kv, attn.v_proj.bias is not None)


def _resize_fused(mlp: nn.Module, attn: nn.Module, width: int, q: int, kv: int, shape: dict) -> None:
    mlp.gate_up_proj = _resize(mlp.gate_up_proj, mlp.gate_up_proj.in_features, 2 * width, mlp.gate_up_proj.bias is not None)
    attn.qkv_proj = _resize(attn.qkv_proj, attn.qkv_proj.in_features, q + 2 * kv, attn.qkv_proj.bias is not None)
    own = copy.copy(attn.config)
    own.num_attention_heads = int(shape["num_attention_heads"])
    own.num_key_value_heads = int(shape["num_key_value_heads"])
    attn.config = own


def apply_layer_shapes(model: nn.Module, pruned_layers: list[dict]) -> None:
    """Resize every decoder layer's projections to the widths in ``pruned_layers``."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layers = model.model.layers
    if len(pruned_layers) != len(layers):
        raise ValueError(f"config.pruned_layers has {len(pruned_layers)} entries for {len(layers)} layers")
    for layer, shape in zip(layers, pruned_layers):
        mlp, attn = layer.mlp, layer.self_attn
        width = int(shape["intermediate_size"])
        kv = int(shape["num_key_value_heads"]) * head_dim
        q = int(shape["num_attention_heads"]) * head_dim
        resize = _resize_fused if hasattr(attn, "qkv_proj") else _resize_split
        resize(mlp, attn, width, q, kv, shape)
        mlp.down_proj = _resize(mlp.down_proj, width, mlp.down_proj.out_features, bool(shape.get("down_proj_bias", False)))
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width
        attn.o_proj = _resize(attn.o_proj, q, attn.o_proj.out_features, bool(shape.get("o_proj_bias", False)))
        for name, value in (("num_heads", shape["num_attention_heads"]), ("num_key_value_heads", shape["num_key_value_heads"])):
            if hasattr(attn, name):
                setattr(attn, name, int(value))


@contextmanager
def _global_widths() -> Iterator[None]:
    """Inside, reading a heterogeneous config's global widths logs nothing.

    A config with uneven layers also carries them in transformers' ``per_layer_config`` form, and
    with ``allow_global_per_layer_attribute_access`` the family's own code builds every layer at
    the global (original) widths, which :func:`apply_layer_shapes` then resizes: those reads are
    intended, so transformers' warning about them is kept quiet while the model is built.
    """
    log = logging.getLogger("transformers.integrations.heterogeneity.configuration_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


class _PrunedConfigMixin:
    def __init__(self, *args, **kwargs):
        with _global_widths():
            super().__init__(*args, **kwargs)

    def validate_architecture(self):
        with _global_widths():
            super().validate_architecture()


class _PrunedMixin:
    def __init__(self, config, *args, **kwargs):
        with _global_widths():
            super().__init__(config, *args, **kwargs)
        apply_layer_shapes(self, list(getattr(config, "pruned_layers", None) or []))


class PrunedLlamaConfig(_PrunedConfigMixin, LlamaConfig):
    """Llama config with per-layer widths in ``pruned_layers``."""

    model_type = "pruneframe_llama"


class PrunedMistralConfig(_PrunedConfigMixin, MistralConfig):
    """Mistral config with per-layer widths in ``pruned_layers``."""

    model_type = "pruneframe_mistral"


class PrunedQwen2Config(_PrunedConfigMixin, Qwen2Config):
    """Qwen2 config with per-layer widths in ``pruned_layers``."""

    model_type = "pruneframe_qwen2"


class PrunedQwen3Config(_PrunedConfigMixin, Qwen3Config):
    """Qwen3 config with per-layer widths in ``pruned_layers``."""

    model_type = "pruneframe_qwen3"


class PrunedLlamaForCausalLM(_PrunedMixin, LlamaForCausalLM):
    """A Llama model with per-layer widths."""

    config_class = PrunedLlamaConfig


class PrunedMistralForCausalLM(_PrunedMixin, MistralForCausalLM):
    """A Mistral model with per-layer widths."""

    config_class = PrunedMistralConfig


class PrunedQwen2ForCausalLM(_PrunedMixin, Qwen2ForCausalLM):
    """A Qwen2 model with per-layer widths."""

    config_class = PrunedQwen2Config


class PrunedQwen3ForCausalLM(_PrunedMixin, Qwen3ForCausalLM):
    """A Qwen3 model with per-layer widths."""

    config_class = PrunedQwen3Config


class PrunedGemma3TextConfig(_PrunedConfigMixin, Gemma3TextConfig):
    """Gemma 3 text config with per-layer widths in ``pruned_layers``."""

    model_type = "pruneframe_gemma3_text"


class PrunedPhi3Config(_PrunedConfigMixin, Phi3Config):
    """Phi-3 config with per-layer widths in ``pruned_layers``."""

    model_type = "pruneframe_phi3"


class PrunedGemma3ForCausalLM(_PrunedMixin, Gemma3ForCausalLM):
    """A Gemma 3 text model with per-layer widths."""

    config_class = PrunedGemma3TextConfig


class PrunedPhi3ForCausalLM(_PrunedMixin, Phi3ForCausalLM):
    """A Phi-3 model with per-layer widths."""

    config_class = PrunedPhi3Config


FAMILIES = {
    "LlamaForCausalLM": (PrunedLlamaConfig, PrunedLlamaForCausalLM),
    "MistralForCausalLM": (PrunedMistralConfig, PrunedMistralForCausalLM),
    "Qwen2ForCausalLM": (PrunedQwen2Config, PrunedQwen2ForCausalLM),
    "Qwen3ForCausalLM": (PrunedQwen3Config, PrunedQwen3ForCausalLM),
    "Gemma3ForCausalLM": (PrunedGemma3TextConfig, PrunedGemma3ForCausalLM),
    "Phi3ForCausalLM": (PrunedPhi3Config, PrunedPhi3ForCausalLM),
}
