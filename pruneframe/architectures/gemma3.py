"""Gemma 3 text models (``Gemma3ForCausalLM``): the Llama layout plus four norms per layer.

Gemma 3's extra parts are all outside the units: per-head q/k norms (shared by every head, cost
nothing), pre/post attention and pre/post FFN norms over the hidden width (never pruned), scaled
embeddings and sliding-window layers (untouched). Its MLP is a GELU-tanh GLU, so gates multiply
down_proj's input instead of fusing a SiLU product. The small models have one KV head per layer,
so with the default minimum of one KV group per layer only FFN channels are prunable there.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pruneframe.architectures.llama import SplitProjectionAdapter

__all__ = ["Gemma3Adapter"]


class Gemma3Adapter(SplitProjectionAdapter):
    """Gemma 3 text decoders."""

    name = "gemma3"
    architectures = ("Gemma3ForCausalLM",)

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
