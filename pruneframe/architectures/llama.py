"""Unit discovery for the Llama family (Llama, Mistral, Qwen2, Qwen3; MHA and GQA).

All four share one layout: ``model.model.layers[i].mlp.{gate,up,down}_proj`` and
``model.model.layers[i].self_attn.{q,k,v,o}_proj`` with KV heads laid out contiguously and query
heads grouped by the KV head they share (query head ``j`` reads KV head ``j // G``).
Widths are read from the modules, not the config, so an already pruned model (different widths per
layer) is discovered correctly too.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pruneframe.hookspecs import hookimpl
from pruneframe.units import LayerShape, UnitSet

__all__ = ["SUPPORTED_ARCHITECTURES", "LayerModules", "layer_modules", "discover", "is_supported", "count_parameters"]

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


@dataclass(frozen=True)
class LayerModules:
    """The linear layers of one decoder layer that pruning touches."""

    gate_proj: nn.Linear
    up_proj: nn.Linear
    down_proj: nn.Linear
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear
    attention: nn.Module
    mlp: nn.Module
    head_dim: int

    @property
    def kv_groups(self) -> int:
        """Number of KV heads (one unit each)."""
        return self.k_proj.out_features // self.head_dim

    @property
    def queries_per_group(self) -> int:
        """G: query heads that share one KV head."""
        return self.q_proj.out_features // self.k_proj.out_features


def _base_architecture(model: nn.Module) -> str | None:
    for cls in type(model).__mro__:
        if cls.__name__ in SUPPORTED_ARCHITECTURES:
            return cls.__name__
    return None


def is_supported(model: nn.Module) -> bool:
    """True when ``model`` is (a subclass of) one of :data:`SUPPORTED_ARCHITECTURES`."""
    return _base_architecture(model) is not None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a supported model."""
    return model.model.layers


def layer_modules(model: nn.Module) -> list[LayerModules]:
    """Per decoder layer, the modules that hold its units."""
    head_dim = int(getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads)
    out = []
    for layer in decoder_layers(model):
        attn, mlp = layer.self_attn, layer.mlp
        out.append(
            LayerModules(
                gate_proj=mlp.gate_proj, up_proj=mlp.up_proj, down_proj=mlp.down_proj,
                q_proj=attn.q_proj, k_proj=attn.k_proj, v_proj=attn.v_proj, o_proj=attn.o_proj,
                attention=attn, mlp=mlp, head_dim=head_dim,
            )
        )
    return out


def count_parameters(model: nn.Module) -> int:
    """``sum(p.numel() for p in model.parameters())``; shared (tied) tensors are counted once."""
    return sum(p.numel() for p in model.parameters())


def _bias_numel(linear: nn.Linear) -> int:
    return 0 if linear.bias is None else 1


def discover(model: nn.Module) -> UnitSet:
    """Find every FFN channel and KV group of a Llama-family model, with its exact parameter cost.

    Cost of one FFN channel: its gate_proj and up_proj rows (+ their bias entries) and its
    down_proj column (down_proj's bias is per output, so it is not removed with a channel).
    Cost of one KV group: its G query rows, 1 key and 1 value row block of ``head_dim`` rows each
    (+ bias entries), and the G matching o_proj column blocks (o_proj's bias stays).
    Qwen3's q_norm/k_norm weights act per head_dim and are shared by all heads: they cost nothing.
    """
    arch = _base_architecture(model)
    if arch is None:
        raise NotImplementedError(
            f"{type(model).__name__} is not supported by the llama-family discovery; supported: "
            + ", ".join(SUPPORTED_ARCHITECTURES)
        )
    hidden = int(model.config.hidden_size)
    shapes = []
    head_dim = 0
    for mods in layer_modules(model):
        head_dim = mods.head_dim
        d_in = mods.gate_proj.in_features
        ffn_cost = 2 * d_in + mods.down_proj.out_features + _bias_numel(mods.gate_proj) + _bias_numel(mods.up_proj)
        g = mods.queries_per_group
        per_head_in = mods.q_proj.in_features * head_dim
        per_head_out = mods.o_proj.out_features * head_dim
        kv_cost = (g + 2) * per_head_in + g * per_head_out + head_dim * (
            g * _bias_numel(mods.q_proj) + _bias_numel(mods.k_proj) + _bias_numel(mods.v_proj)
        )
        shapes.append(
            LayerShape(
                ffn_channels=mods.down_proj.in_features,
                kv_groups=mods.kv_groups,
                queries_per_group=g,
                ffn_cost=ffn_cost,
                kv_cost=kv_cost,
            )
        )
    return UnitSet(
        architecture=arch,
        layers=shapes,
        total_params=count_parameters(model),
        head_dim=head_dim,
        hidden_size=hidden,
    )


@hookimpl
def pruneframe_discover_units(model: nn.Module) -> UnitSet | None:
    """Discovery for the llama family; ``None`` for other models so other plugins can answer."""
    return discover(model) if is_supported(model) else None


@hookimpl
def pruneframe_architectures() -> list[str]:
    """Architectures this plugin discovers units for."""
    return list(SUPPORTED_ARCHITECTURES)
