"""Gemma 3 text models (``Gemma3ForCausalLM``): the Llama layout plus four norms per layer.

Gemma 3's extra parts are all outside the units: per-head q/k norms (shared by every head, cost
nothing), pre/post attention and pre/post FFN norms over the hidden width (never pruned), scaled
embeddings and sliding-window layers (untouched). Its MLP is a GELU-tanh GLU, so gates multiply
down_proj's input instead of fusing a SiLU product. The small models have one KV head per layer,
so with the default minimum of one KV group per layer only FFN channels are prunable there.
"""

from __future__ import annotations

from pruneframe.architectures.llama import SplitProjectionAdapter

__all__ = ["Gemma3Adapter"]


class Gemma3Adapter(SplitProjectionAdapter):
    """Gemma 3 text decoders."""

    name = "gemma3"
    architectures = ("Gemma3ForCausalLM",)

    def checkpoint_classes(self, model: object) -> tuple[str, str]:
        """Gemma 3's text config class is ``Gemma3TextConfig``."""
        return "PrunedGemma3TextConfig", "PrunedGemma3ForCausalLM"
