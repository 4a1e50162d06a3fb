"""Phi-3 (``Phi3ForCausalLM``): fused ``qkv_proj`` and ``gate_up_proj``.

A unit owns row ranges inside the fused weights: FFN channel ``c`` is row ``c`` (gate) and row
``I + c`` (up) of ``gate_up_proj`` (``I`` the FFN width) and column ``c`` of ``down_proj``; KV group
``k`` is its query rows ``k*G*hd ..`` of ``qkv_proj``, its key rows ``Hq*hd + k*hd ..`` and value rows
``Hq*hd + Hkv*hd + k*hd ..``, and its ``o_proj`` columns. Phi-3's attention splits ``qkv`` with
``config.num_attention_heads``, so a layer whose heads were pruned gets its own copy of the config
with its own head counts (:meth:`Phi3Adapter.set_widths`).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from pruneframe.architectures.base import ArchitectureAdapter, LayerSlices, WeightSlice
from pruneframe.pipeline.units import LayerWidths, UnitKind

__all__ = ["Phi3Adapter"]


class Phi3Adapter(ArchitectureAdapter):
    """Phi-3 and Phi-3.5 decoders."""

    name = "phi3"
    architectures = ("Phi3ForCausalLM",)

    def layer_slices(self, model: nn.Module) -> list[LayerSlices]:
        """Per layer: the gate and up row ranges of ``gate_up_proj``, the q/k/v row ranges of ``qkv_proj``."""
        head_dim = self.head_dim(model)
        out = []
        for i, layer in enumerate(self.decoder_layers(model)):
            attn, mlp = layer.self_attn, layer.mlp
            ffn = mlp.down_proj.in_features
            q_rows = attn.o_proj.in_features
            kv_rows = (attn.qkv_proj.out_features - q_rows) // 2
            kv = kv_rows // head_dim
            g = q_rows // kv_rows if kv_rows else self.queries_per_group(model)
            slices = (
                WeightSlice("gate_proj", mlp, "gate_up_proj", UnitKind.FFN, 0, 0, 1, ffn),
                WeightSlice("up_proj", mlp, "gate_up_proj", UnitKind.FFN, 0, ffn, 1, ffn),
                WeightSlice("down_proj", mlp, "down_proj", UnitKind.FFN, 1, 0, 1, ffn, gated=True),
                WeightSlice("q_proj", attn, "qkv_proj", UnitKind.KV, 0, 0, g * head_dim, kv),
                WeightSlice("k_proj", attn, "qkv_proj", UnitKind.KV, 0, q_rows, head_dim, kv, gated=True),
                WeightSlice("v_proj", attn, "qkv_proj", UnitKind.KV, 0, q_rows + kv_rows, head_dim, kv, gated=True),
                WeightSlice("o_proj", attn, "o_proj", UnitKind.KV, 1, 0, g * head_dim, kv),
            )
            out.append(
                LayerSlices(
                    index=i,
                    layer=layer,
                    attention=attn,
                    mlp=mlp,
                    slices=slices,
                    head_dim=head_dim,
                    queries_per_group=g,
                    mlp_in=mlp.gate_up_proj,
                    attn_in=attn.qkv_proj,
                )
            )
        return out

    def set_widths(self, layer: LayerSlices, widths: LayerWidths, config: Any) -> None:
        """Head counts on the attention module and, when they differ from the model's, a per-layer config copy."""
        super().set_widths(layer, widths, config)
        attn = layer.attention
        if widths.q_heads != config.num_attention_heads or widths.kv_heads != config.num_key_value_heads:
            own = copy.copy(config)
            own.num_attention_heads, own.num_key_value_heads = widths.q_heads, widths.kv_heads
            attn.config = own
        else:
            attn.config = config
        attn.num_key_value_groups = widths.q_heads // max(widths.kv_heads, 1)

    def tiny_models(self) -> dict[str, tuple[type[nn.Module], dict[str, Any]]]:
        """One tiny Phi-3: fused ``qkv_proj`` and ``gate_up_proj``, GQA."""
        from transformers import Phi3ForCausalLM

        return {"phi3": (Phi3ForCausalLM, dict(num_attention_heads=6, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2))}
