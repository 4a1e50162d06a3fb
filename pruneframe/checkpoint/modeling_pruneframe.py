"""Modeling code shipped inside every pruneframe checkpoint with uneven layers (needs only torch and transformers).

A pruned model is the original architecture with different widths per layer: each layer's FFN
width, KV heads, query heads, and whether down_proj / o_proj gained an output bias are recorded in
``config.pruned_layers``. :func:`pruned_classes` derives, from any family's own transformers model
class, a config class and a model class that build the original model and then resize each layer's
linear modules to the recorded shapes, so the safetensors weights load with strict shapes. Two
layouts: separate projections (``gate_proj`` / ``up_proj``, ``q_proj`` / ``k_proj`` / ``v_proj``) and
fused ``qkv_proj`` / ``gate_up_proj`` (Phi-3, whose attention reads its head counts from a per-layer
config copy).

This file names no family: a checkpoint's copy ends with a few lines that import the family's model
class it was pruned from and derive the two classes its ``config.json`` ``auto_map`` names. Load with
``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)``.

A layer entry with no KV heads has its attention block removed, one with FFN width 0 its MLP block:
the block keeps its (empty) projections, its forward returns only its output bias (zero without
one), and the norms that fed or followed only that block are gone (:func:`remove_blocks`).

A config with ``residual_shortcuts`` (SliceGPT's per-layer rotations) gives every decoder layer two
``[hidden, hidden]`` matrices, ``attn_shortcut`` and ``mlp_shortcut``: each block's residual connection
carries its input times the matrix instead of the input itself (:class:`ResidualShortcut`). The
family's own forward is unchanged; hooks on the layer and on the projections that write each block's
output do the rest (:func:`attach_residual_shortcuts`).
"""

from __future__ import annotations

import copy
import functools
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: ``model_type`` of a pruned checkpoint's config: this prefix and the family's own ``model_type``.
MODEL_TYPE_PREFIX = "pruneframe_"


#: ``config.json`` field: true when every decoder layer carries residual shortcut matrices.
SHORTCUT_FIELD = "residual_shortcuts"

#: Norms inside an attention module that act per head (Qwen3, Gemma 3); a removed attention block loses them.
ATTENTION_INNER_NORMS = ("q_norm", "k_norm")


def block_norm_names(layer: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(attention block's norms, MLP block's norms)``: the decoder layer's attribute names of the
    norms whose output only that block reads or that only normalise its output.

    A pre-norm layer (Llama, Qwen, Mistral, Phi-3) has ``input_layernorm`` before attention and
    ``post_attention_layernorm`` before the MLP; a sandwich layer (Gemma 2/3, recognised by its
    ``pre_feedforward_layernorm``) adds a norm after each block.
    """
    sandwich = hasattr(layer, "pre_feedforward_layernorm")
    attn = ("input_layernorm", "post_attention_layernorm") if sandwich else ("input_layernorm",)
    mlp = ("pre_feedforward_layernorm", "post_feedforward_layernorm") if sandwich else ("post_attention_layernorm",)
    return tuple(n for n in attn if hasattr(layer, n)), tuple(n for n in mlp if hasattr(layer, n))


class _RemovedAttention:
    """Forward of an attention block with no heads: its output bias (or zeros); the cache still learns the length."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - the family's signature
        out = self.o_proj(hidden_states.new_zeros(*hidden_states.shape[:-1], 0))
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            # one zero channel per position: a cache layer with no elements would read as empty (length 0)
            b, s = hidden_states.shape[:2]
            marker = hidden_states.new_zeros(b, 1, s, 1)
            cache.update(marker, marker, self.layer_idx)
        return out, None


class _RemovedMLP:
    """Forward of an MLP block with no channels: its output bias (or zeros)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        return self.down_proj(hidden_states.new_zeros(*hidden_states.shape[:-1], 0))


@functools.cache
def _removed_class(base: type, forward: type) -> type:
    return type(f"Removed{base.__name__}", (forward, base), {"__doc__": f"{base.__name__} whose block was removed by pruning."})


def is_removed(module: nn.Module) -> bool:
    """Whether ``module`` is an attention or MLP block removed by :func:`remove_blocks`."""
    return isinstance(module, (_RemovedAttention, _RemovedMLP))


def remove_blocks(layer: nn.Module, attention: nn.Module | None = None, mlp: nn.Module | None = None) -> None:
    """Mark ``layer``'s (already emptied) ``attention`` and/or ``mlp`` block removed, in place.

    The block's class becomes a subclass whose forward skips the empty computation (its projections
    stay, with zero heads or channels, so its output bias still applies), and the norms that belong
    to it (:func:`block_norm_names`, and q/k norms inside attention) become parameter-free identities.
    """
    attn_norms, mlp_norms = block_norm_names(layer)
    if attention is not None:
        if not is_removed(attention):
            attention.__class__ = _removed_class(type(attention), _RemovedAttention)
        for name in ATTENTION_INNER_NORMS:
            if isinstance(getattr(attention, name, None), nn.Module):
                setattr(attention, name, nn.Identity())
        for name in attn_norms:
            setattr(layer, name, nn.Identity())
    if mlp is not None:
        if not is_removed(mlp):
            mlp.__class__ = _removed_class(type(mlp), _RemovedMLP)
        for name in mlp_norms:
            setattr(layer, name, nn.Identity())


def _resize(linear: nn.Linear, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    with warnings.catch_warnings():  # a removed block's projections have no elements to initialise
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features, bias=bias, device=linear.weight.device, dtype=linear.weight.dtype)


def _resize_split(mlp: nn.Module, attn: nn.Module, width: int, q: int, kv: int) -> None:
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
        if hasattr(attn, "qkv_proj"):
            _resize_fused(mlp, attn, width, q, kv, shape)
        else:
            _resize_split(mlp, attn, width, q, kv)
        mlp.down_proj = _resize(mlp.down_proj, width, mlp.down_proj.out_features, bool(shape.get("down_proj_bias", False)))
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width
        attn.o_proj = _resize(attn.o_proj, q, attn.o_proj.out_features, bool(shape.get("o_proj_bias", False)))
        for name, value in (("num_heads", shape["num_attention_heads"]), ("num_key_value_heads", shape["num_key_value_heads"])):
            if hasattr(attn, name):
                setattr(attn, name, int(value))
        remove_blocks(layer, attention=attn if kv == 0 else None, mlp=mlp if width == 0 else None)


class ResidualShortcut(nn.Module):
    """A ``[d, d]`` matrix ``S`` on one block's residual connection: the block's input ``x`` joins the
    block's output as ``x @ S`` instead of ``x``.

    The family's decoder layer adds ``x`` to the block's output itself; the hook on the projection that
    writes that output (:meth:`add_to_output`) adds ``x @ S - x`` to it, so the sum is ``x @ S + output``.
    ``x`` is handed over beforehand (:meth:`hold`). The identity (the initial weight) changes nothing.
    """

    def __init__(self, width: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(width, device=device, dtype=dtype))
        self._input: torch.Tensor | None = None

    def hold(self, x: torch.Tensor) -> None:
        """Keep the block's input ``x`` until its output is written."""
        self._input = x

    def add_to_output(self, _module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the block's output projection: ``output + x @ S - x``."""
        x, self._input = self._input, None
        if x is None:
            raise RuntimeError("a residual shortcut's block wrote its output before its layer received an input")
        return output + (x @ self.weight.to(x.dtype) - x).to(output.dtype)

    def extra_repr(self) -> str:
        return f"width={self.weight.shape[0]}"


class _ShortcutLayer:
    """The hooks of one decoder layer with residual shortcuts (bound methods, so a deep copy of the model keeps its own)."""

    def __init__(self, attn: ResidualShortcut, mlp: ResidualShortcut) -> None:
        self.attn, self.mlp = attn, mlp

    def layer_input(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.attn.hold(args[0] if args else kwargs["hidden_states"])

    def attention_output(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = self.attn._input
        out = self.attn.add_to_output(module, args, output)
        self.mlp.hold(x + out)  # the stream the MLP block reads, exactly as the layer forms it
        return out


def attach_residual_shortcuts(blocks: list[tuple[nn.Module, nn.Module, nn.Module]], width: int) -> None:
    """Give each decoder layer ``attn_shortcut`` and ``mlp_shortcut`` (identities of ``width``) and their hooks.

    Args:
        blocks: per decoder layer, ``(layer, the attention output projection, the MLP output projection)``:
            the projections whose outputs the layer adds to its residual stream (o_proj, down_proj).
        width: the hidden width.
    """
    for layer, attn_out, mlp_out in blocks:
        if isinstance(getattr(layer, "attn_shortcut", None), ResidualShortcut):
            raise ValueError("the decoder layer already carries residual shortcuts")
        weight = attn_out.weight
        layer.attn_shortcut = ResidualShortcut(width, device=weight.device, dtype=weight.dtype)
        layer.mlp_shortcut = ResidualShortcut(width, device=weight.device, dtype=weight.dtype)
        hooks = _ShortcutLayer(layer.attn_shortcut, layer.mlp_shortcut)
        layer.register_forward_pre_hook(hooks.layer_input, with_kwargs=True)
        attn_out.register_forward_hook(hooks.attention_output)
        mlp_out.register_forward_hook(layer.mlp_shortcut.add_to_output)


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
        if getattr(config, SHORTCUT_FIELD, False):
            blocks = [(layer, layer.self_attn.o_proj, layer.mlp.down_proj) for layer in self.model.layers]
            attach_residual_shortcuts(blocks, int(config.hidden_size))


@functools.cache
def pruned_classes(family: type[nn.Module]) -> tuple[type, type]:
    """``(config class, model class)`` with per-layer widths, derived from a family's own model class.

    ``family`` is a transformers model class (``<Family>ForCausalLM``) whose
    ``config_class`` is its config. The derived config is named ``Pruned<config class>`` with
    ``model_type`` ``pruneframe_<family model_type>`` and reads ``pruned_layers``; the derived model is
    named ``Pruned<model class>``, builds the family's model and resizes every layer to those widths.
    The same family always gives the same two classes.
    """
    base_config = family.config_class
    config_cls = type(
        f"Pruned{base_config.__name__}",
        (_PrunedConfigMixin, base_config),
        {"model_type": MODEL_TYPE_PREFIX + base_config.model_type, "__doc__": f"{base_config.__name__} with per-layer widths in ``pruned_layers``."},
    )
    model_cls = type(
        f"Pruned{family.__name__}",
        (_PrunedMixin, family),
        {"config_class": config_cls, "__doc__": f"{family.__name__} with per-layer widths."},
    )
    return config_cls, model_cls
