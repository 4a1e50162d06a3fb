"""Gemma 3 text models (``Gemma3ForCausalLM``): the Llama layout plus four norms per layer.

Gemma 3's extra parts are all outside the units: per-head q/k norms (shared by every head, cost
nothing), pre/post attention and pre/post FFN norms over the hidden width (never pruned), scaled
embeddings and sliding-window layers (untouched). Its MLP is a GELU-tanh GLU, so gates multiply
down_proj's input instead of fusing a SiLU product. The small models have one KV head per layer,
so with the default minimum of one KV group per layer only FFN channels are prunable there.

In GGUF files it is llama.cpp's ``gemma3``: norms stored as ``1 + weight`` (llama.cpp scales by the stored
weight), the q/k norms and post-norms written, and its sliding window and layer pattern in the header.
llama.cpp's ``gemma3`` reads one FFN width for every layer, so FFN widths that differ are zero-padded to
the widest layer's (exact, but the padding is read: the speed follows the widest layer).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pruneframe.architectures.gguf import HEAD_NORMS, ExportRefused, GGUFLayout, GGUFNorm, GGUFSpec, global_rope, refuse_scaled_rope
from pruneframe.architectures.llama import SplitProjectionAdapter

__all__ = ["Gemma3Adapter"]


def _gguf_metadata(writer: Any, config: Any) -> None:
    """Gemma 3's sliding window, its layer pattern, soft-capping and global RoPE scaling."""
    import gguf

    window = getattr(config, "sliding_window", None)
    if window:
        writer.add_sliding_window(int(window))
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in config.layer_types])
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap:
        writer.add_final_logit_softcapping(float(softcap))
    rope = global_rope(config)
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


_GGUF = GGUFSpec(
    GGUFLayout(
        "gemma3",
        pad_ffn_to_widest=True,
        output_biases=False,
        norm_offset=1.0,
        head_norms=HEAD_NORMS,
        attention_post_norms=(GGUFNorm("post_attention_norm", "post_attention_layernorm"),),
        ffn_norms=(GGUFNorm("ffn_norm", "pre_feedforward_layernorm"),),
        ffn_post_norms=(GGUFNorm("post_ffw_norm", "post_feedforward_layernorm"),),
        metadata=_gguf_metadata,
    )
)


class Gemma3Adapter(SplitProjectionAdapter):
    """Gemma 3 text decoders."""

    name = "gemma3"
    architectures = ("Gemma3ForCausalLM",)

    def gguf_spec(self, model: nn.Module) -> GGUFSpec:
        """llama.cpp's ``gemma3``; settings its graph does not reproduce are refused, naming which."""
        refuse_scaled_rope(model)
        name, config = type(model).__name__, model.config
        act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
        if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise ExportRefused(f"{name}: hidden_activation {act!r}; llama.cpp's gemma3 graph uses tanh-approximated GELU")
        head_dim = int(getattr(config, "head_dim", None))
        if getattr(config, "query_pre_attn_scalar", head_dim) != head_dim:
            scalar = getattr(config, "query_pre_attn_scalar", None)
            raise ExportRefused(f"{name}: query_pre_attn_scalar {scalar} != head_dim {head_dim}; llama.cpp scales queries by head_dim")
        if getattr(config, "attn_logit_softcapping", None) is not None:
            raise ExportRefused(f"{name}: attention logit soft-capping has no llama.cpp gemma3 equivalent")
        if getattr(config, "use_bidirectional_attention", False):
            raise ExportRefused(f"{name}: bidirectional attention has no llama.cpp gemma3 equivalent")
        params = getattr(config, "rope_parameters", None) or {}
        local = params.get("sliding_attention", {}) if isinstance(params, dict) else {}
        if local.get("rope_theta", getattr(config, "rope_local_base_freq", 10000.0)) != 10000.0 or local.get("rope_type", "default") != "default":
            raise ExportRefused(f"{name}: sliding layers' RoPE {local}; llama.cpp's gemma3 fixes base 10000, unscaled")
        full = params.get("full_attention", {}) if isinstance(params, dict) else {}
        if full.get("rope_type", "default") not in ("default", "linear"):
            raise ExportRefused(f"{name}: global layers' RoPE of type {full.get('rope_type')!r} is not exported yet (default and linear are)")
        return _GGUF

    def norm_weight_offset(self, norm: nn.Module) -> float:
        """Gemma's RMSNorm scales by ``1 + weight``."""
        return 1.0

    def tiny_models(self) -> dict[str, tuple[type[nn.Module], dict[str, Any]]]:
        """One tiny Gemma 3: q/k norms, four norms per layer, scaled embeddings, sliding and full layers.

        It has one KV head, so only FFN channels are prunable; a wider FFN leaves room for a keep-0.5 budget.
        """
        from transformers import Gemma3ForCausalLM

        return {
            "gemma3": (
                Gemma3ForCausalLM,
                dict(
                    intermediate_size=160,
                    num_attention_heads=4,
                    num_key_value_heads=1,
                    head_dim=16,
                    sliding_window=4,
                    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                    query_pre_attn_scalar=16,
                ),
            )
        }
