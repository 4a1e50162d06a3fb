"""The Llama family (Llama, Mistral, Qwen2, Qwen3; MHA and GQA): separate q/k/v/o and gate/up/down.

All four share one layout: ``model.model.layers[i].mlp.{gate,up,down}_proj`` and
``model.model.layers[i].self_attn.{q,k,v,o}_proj`` with KV heads laid out contiguously and query
heads grouped by the KV head they share (query head ``j`` reads KV head ``j // G``).
Widths are read from the modules, not the config, so an already pruned model (different widths per
layer) is described correctly too.

In GGUF files, Llama and Mistral are llama.cpp's ``llama`` (pairs of adjacent q/k rows rotated), and with
layers of different widths its ``deci`` (per-layer query-head counts, KV-head counts and FFN widths, no
q/k/v or gate/up biases); Qwen2 and Qwen3 are ``qwen2`` and ``qwen3`` (no output-projection biases;
Qwen3's q/k norms), which hold one width for every layer.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from pruneframe.architectures.base import ArchitectureAdapter, LayerSlices, WeightSlice
from pruneframe.architectures.gguf import HEAD_NORMS, ExportRefused, GGUFLayout, GGUFSpec, refuse_scaled_rope
from pruneframe.pipeline.units import UnitKind

__all__ = ["SplitProjectionAdapter", "LlamaAdapter"]

_LLAMA = GGUFLayout("llama", paired_rope=True)
_PER_LAYER = GGUFLayout("deci", per_layer_widths=True, paired_rope=True, input_biases=False)
_NO_PER_LAYER = "llama.cpp holds per-layer widths only in its 'deci' architecture, which lacks what {family} needs ({what})"
#: transformers class -> how it is written as GGUF.
_GGUF: dict[str, GGUFSpec] = {
    "LlamaForCausalLM": GGUFSpec(_LLAMA, _PER_LAYER),
    "MistralForCausalLM": GGUFSpec(_LLAMA, _PER_LAYER),
    "Qwen2ForCausalLM": GGUFSpec(
        GGUFLayout("qwen2", output_biases=False, square_attention=True),
        uneven_refusal=_NO_PER_LAYER.format(family="Qwen2ForCausalLM", what="q/k/v biases"),
    ),
    "Qwen3ForCausalLM": GGUFSpec(
        GGUFLayout("qwen3", output_biases=False, head_norms=HEAD_NORMS),
        uneven_refusal=_NO_PER_LAYER.format(family="Qwen3ForCausalLM", what="per-head q/k norms"),
    ),
}


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

    def gguf_spec(self, model: nn.Module) -> GGUFSpec:
        """``llama`` (uneven widths: ``deci``) for Llama and Mistral, ``qwen2`` / ``qwen3`` for Qwen; settings llama.cpp lacks are refused."""
        family = self.architecture_of(model) or type(model).__name__
        name, config = type(model).__name__, model.config
        spec = _GGUF.get(family)
        if spec is None:
            raise ExportRefused(f"{name}: {type(self).__name__} describes no GGUF layout for {family}, so it is not exported yet")
        refuse_scaled_rope(model)
        window = getattr(config, "sliding_window", None)
        if family == "MistralForCausalLM" and window:
            raise ExportRefused(f"{name}: sliding-window attention ({window} tokens) has no llama.cpp 'llama' equivalent")
        if family == "Qwen2ForCausalLM" and getattr(config, "use_sliding_window", False):
            raise ExportRefused(f"{name}: use_sliding_window=True has no llama.cpp 'qwen2' equivalent")
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise ExportRefused(f"{name}: hidden_act {act!r}; llama.cpp's {family} graph uses silu")
        if getattr(config, "partial_rotary_factor", 1.0) not in (None, 1.0):
            raise ExportRefused(f"{name}: partial rotary embeddings are not exported yet")
        return spec

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
