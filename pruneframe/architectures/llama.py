"""The Llama family (Llama, Mistral, Qwen2, Qwen3; MHA and GQA): separate q/k/v/o and gate/up/down.

All four share one layout: ``model.model.layers[i].mlp.{gate,up,down}_proj`` and
``model.model.layers[i].self_attn.{q,k,v,o}_proj`` with KV heads laid out contiguously and query
heads grouped by the KV head they share (query head ``j`` reads KV head ``j // G``).
Widths are read from the modules, not the config, so an already pruned model (different widths per
layer) is described correctly too.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from pruneframe.architectures.base import ArchitectureAdapter, LayerSlices, WeightSlice
from pruneframe.pipeline.units import UnitKind

__all__ = ["SplitProjectionAdapter", "LlamaAdapter"]


class SplitProjectionAdapter(ArchitectureAdapter):
    """Families with one linear layer per projection (``mlp.{gate,up,down}_proj``, ``self_attn.{q,k,v,o}_proj``).

    Attributes:
        silu_glu_mlps: MLP class names whose forward is ``down(silu(gate(x)) * up(x))``.
    """

    silu_glu_mlps: ClassVar[frozenset[str]] = frozenset()

    def _glu(self, mlp: nn.Module) -> tuple[nn.Linear, nn.Linear] | None:
        act = getattr(mlp, "act_fn", None)
        silu = isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"
        if silu and type(mlp).__name__ in self.silu_glu_mlps and "forward" not in vars(mlp):
            return mlp.gate_proj, mlp.up_proj
        return None

    def layer_slices(self, model: nn.Module) -> list[LayerSlices]:
        """Per layer: gate/up rows and down columns (FFN), q/k/v rows and o columns (KV)."""
        head_dim = self.head_dim(model)
        out = []
        for i, layer in enumerate(self.decoder_layers(model)):
            attn, mlp = layer.self_attn, layer.mlp
            ffn = mlp.down_proj.in_features
            kv = attn.k_proj.out_features // head_dim
            g = attn.q_proj.out_features // attn.k_proj.out_features if kv else self.queries_per_group(model)
            slices = (
                WeightSlice("gate_proj", mlp, "gate_proj", UnitKind.FFN, 0, 0, 1, ffn),
                WeightSlice("up_proj", mlp, "up_proj", UnitKind.FFN, 0, 0, 1, ffn),
                WeightSlice("down_proj", mlp, "down_proj", UnitKind.FFN, 1, 0, 1, ffn, gated=True),
                WeightSlice("q_proj", attn, "q_proj", UnitKind.KV, 0, 0, g * head_dim, kv),
                WeightSlice("k_proj", attn, "k_proj", UnitKind.KV, 0, 0, head_dim, kv, gated=True),
                WeightSlice("v_proj", attn, "v_proj", UnitKind.KV, 0, 0, head_dim, kv, gated=True),
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
                    mlp_in=mlp.gate_proj,
                    attn_in=attn.q_proj,
                    glu=self._glu(mlp),
                )
            )
        return out


class LlamaAdapter(SplitProjectionAdapter):
    """Llama, Mistral, Qwen2 (q/k/v biases) and Qwen3 (per-head q/k norms)."""

    name = "llama"
    architectures = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
    silu_glu_mlps = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})

    def tiny_models(self) -> dict[str, tuple[type[nn.Module], dict[str, Any]]]:
        """GQA and MHA Llama (the latter with MLP and attention biases), Mistral, Qwen2 (q/k/v biases), Qwen3 (q/k norms)."""
        from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

        return {
            # GQA, G = 3
            "llama-gqa": (LlamaForCausalLM, dict(num_attention_heads=6, num_key_value_heads=2, head_dim=8)),
            # MHA, with MLP and attention biases
            "llama-mha-bias": (LlamaForCausalLM, dict(num_attention_heads=4, num_key_value_heads=4, mlp_bias=True, attention_bias=True)),
            "mistral": (MistralForCausalLM, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=12, sliding_window=None)),
            # q/k/v biases
            "qwen2": (Qwen2ForCausalLM, dict(num_attention_heads=6, num_key_value_heads=3, head_dim=8, tie_word_embeddings=True)),
            # q_norm / k_norm
            "qwen3": (Qwen3ForCausalLM, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)),
        }
