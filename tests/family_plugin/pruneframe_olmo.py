"""A plugin package adding a model family pruneframe does not ship: OLMo (``OlmoForCausalLM``).

It is the whole of what a family needs: one adapter (OLMo keeps Llama's module names, so the split
projection adapter covers its units) with a tiny model for the method checks, registered through
``pruneframe_register_architectures``. Its checkpoints, uneven ones included, follow from it.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import OlmoForCausalLM

from pruneframe.architectures import SplitProjectionAdapter
from pruneframe.pipeline.hookspecs import hookimpl


class OlmoAdapter(SplitProjectionAdapter):
    """OLMo decoders: separate q/k/v/o and gate/up/down projections, parameter-free layer norms."""

    name = "olmo"
    architectures = ("OlmoForCausalLM",)
    silu_glu_mlps = frozenset({"OlmoMLP"})

    def tiny_models(self) -> dict[str, tuple[type[nn.Module], dict[str, Any]]]:
        """One tiny OLMo with GQA (G = 3) and attention biases."""
        return {
            "olmo": (OlmoForCausalLM, dict(num_attention_heads=6, num_key_value_heads=2, attention_bias=True, pad_token_id=0, bos_token_id=1, eos_token_id=2))
        }


@hookimpl
def pruneframe_register_architectures(register) -> None:
    """Register the OLMo adapter."""
    register(OlmoAdapter())
