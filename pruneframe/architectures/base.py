"""The architecture adapter: the one object that answers every family-specific question.

Everything outside ``pruneframe.architectures`` (fold, gates, the collector, refit, size evaluation,
checkpoints, methods) reaches a model's units through an :class:`ArchitectureAdapter`:

* :meth:`~ArchitectureAdapter.decoder_layers`: the decoder layers in order;
* :meth:`~ArchitectureAdapter.layer_slices`: per layer, a :class:`LayerSlices` naming the exact
  rows or columns of which linear layer (fused ones included) each unit owns (:class:`WeightSlice`),
  the modules whose inputs carry the MLP / attention inputs, and the output projections;
* :meth:`~ArchitectureAdapter.discover`: the :class:`~pruneframe.pipeline.units.UnitSet`, costs computed from
  the slices themselves (weights and bias entries a unit owns), so costs and fold never disagree;
* :meth:`~ArchitectureAdapter.layer_widths`: the per-layer widths (:class:`~pruneframe.pipeline.units.LayerWidths`, the one
  representation used by size evaluation, the checkpoint config and the prune report);
* :meth:`~ArchitectureAdapter.set_widths`: module attributes a family's forward reads (head counts,
  intermediate size) after its weights were sliced;
* :meth:`~ArchitectureAdapter.family_class` and :meth:`~ArchitectureAdapter.plain_config`: the
  family's own transformers class (from which a checkpoint with uneven layers derives its classes)
  and its config with every layer alike;
* :meth:`~ArchitectureAdapter.gguf_spec`: how the family is written as a GGUF file for llama.cpp
  (:mod:`pruneframe.architectures.gguf`), or why a model cannot be;
* :meth:`~ArchitectureAdapter.tiny_models`: small random models of the family, which
  :mod:`pruneframe.testing` checks every method on.

A family is one subclass (see :mod:`pruneframe.architectures.llama` for split projections and
:mod:`pruneframe.architectures.phi3` for fused ones), announced through the
``pruneframe_register_architectures`` hook.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from pruneframe.architectures.gguf import ExportRefused, GGUFSpec
from pruneframe.util.blockwise import UPCAST_BLOCK_ELEMENTS, float64_blocks
from pruneframe.pipeline.units import LayerShape, LayerWidths, UnitKind, UnitSet

__all__ = ["WeightSlice", "LayerSlices", "ArchitectureAdapter", "count_parameters", "unit_indices"]

Axis = Literal[0, 1]


def unit_indices(units: torch.Tensor, per_unit: int, offset: int = 0) -> torch.Tensor:
    """Indices of whole blocks: for each unit ``u``, ``offset + u*per_unit .. offset + (u+1)*per_unit - 1``."""
    units = units.long()
    return (offset + units[:, None] * per_unit + torch.arange(per_unit, device=units.device)[None, :]).reshape(-1)


@dataclass(frozen=True)
class WeightSlice:
    """One unit kind's share of one linear layer: a contiguous range of rows (outputs) or columns (inputs).

    Unit ``u`` of the slice owns rows (``axis=0``) or columns (``axis=1``)
    ``start + u*per_unit .. start + (u+1)*per_unit - 1`` of ``owner.<attr>`` (and, for rows, the
    same bias entries). A fused weight holds several slices (Phi-3's ``qkv_proj``: q, k and v rows).

    Attributes:
        name: the slice's role, the same in every family: ``gate_proj``, ``up_proj``, ``down_proj``,
            ``q_proj``, ``k_proj``, ``v_proj`` or ``o_proj``.
        owner: the module holding the linear layer (its attribute ``attr`` is replaced by fold).
        attr: the linear layer's attribute name on ``owner`` (``qkv_proj`` for a fused q slice).
        kind: which units of the layer the slice belongs to.
        axis: 0 when units are output rows, 1 when they are input columns.
        start: first row/column of the slice.
        per_unit: consecutive rows/columns that form one unit (1 for FFN channels, ``G*head_dim``
            for q rows / o columns, ``head_dim`` for k/v rows).
        units: number of units in the slice.
        gated: the unit's gate multiplies here (a unit's scale is folded into these weights): the
            FFN channel's down_proj column (its activation) and the KV group's k and v rows.
    """

    name: str
    owner: nn.Module
    attr: str
    kind: UnitKind
    axis: Axis
    start: int
    per_unit: int
    units: int
    gated: bool = False

    @property
    def linear(self) -> nn.Linear:
        """The linear layer (looked up now, so it is the current one after a fold)."""
        return getattr(self.owner, self.attr)

    @property
    def stop(self) -> int:
        """One past the slice's last row/column."""
        return self.start + self.units * self.per_unit

    @property
    def fused(self) -> bool:
        """Whether the slice is a proper part of its linear layer along ``axis``."""
        return self.start != 0 or self.stop != self.linear.weight.shape[self.axis]

    @property
    def weight(self) -> torch.Tensor:
        """The slice's weights as a view: ``[rows, in]`` for ``axis=0``, ``[out, cols]`` for ``axis=1``."""
        w = self.linear.weight
        return w[self.start : self.stop] if self.axis == 0 else w[:, self.start : self.stop]

    @property
    def bias(self) -> torch.Tensor | None:
        """The slice's bias entries (rows only; an output bias is shared by all columns)."""
        b = self.linear.bias
        return None if b is None or self.axis == 1 else b[self.start : self.stop]

    @property
    def params_per_unit(self) -> int:
        """Weight entries one unit owns here (biases excluded)."""
        return self.per_unit * int(self.linear.weight.shape[1 - self.axis])

    @property
    def cost_per_unit(self) -> int:
        """Parameters one unit owns here: its weights plus its bias entries."""
        return self.params_per_unit + (self.per_unit if self.bias is not None else 0)

    def take(self, values: torch.Tensor) -> torch.Tensor:
        """The slice's part of a tensor shaped like the whole weight (a gradient, a salience, ...)."""
        return values[self.start : self.stop] if self.axis == 0 else values[:, self.start : self.stop]

    def channel_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a slice-shaped tensor over the non-unit axis: one value per row/column."""
        return values.sum(dim=1 - self.axis)

    def per_unit_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a slice-shaped tensor over everything a unit owns: one value per unit."""
        per_channel = self.channel_sum(values)
        return per_channel.reshape(self.units, self.per_unit).sum(dim=1)

    def per_unit_sum_of(self, fn: Callable[[torch.Tensor, slice], torch.Tensor], *, max_elements: int = UPCAST_BLOCK_ELEMENTS) -> torch.Tensor:
        """``per_unit_sum(fn(weight in float64))``, computed a block of units at a time.

        ``fn(block, channels)`` gets the float64 weights of a block of whole units and which rows
        (``axis=0``) or columns (``axis=1``) of the slice they are. Only one block (at most
        ``max_elements`` weights, or one unit) exists in float64 at a time, so a score never holds a
        float64 copy of a whole layer. Returns one value per unit, on the weight's device.
        """
        w = self.weight.detach()
        sums = [
            self.channel_sum(fn(block, channels)).reshape(-1, self.per_unit).sum(dim=1)
            for channels, block in float64_blocks(w, self.axis, group=self.per_unit, max_elements=max_elements)
        ]
        return torch.cat(sums) if sums else torch.zeros(0, dtype=torch.float64, device=w.device)

    def indices(self, keep: torch.Tensor) -> torch.Tensor:
        """Rows/columns of the whole linear layer owned by the units ``keep`` (indices into the slice)."""
        return unit_indices(keep, self.per_unit, self.start)


@dataclass(frozen=True)
class LayerSlices:
    """One decoder layer as pruning sees it.

    Attributes:
        index: the layer's position.
        layer: the decoder layer module.
        attention: its attention module.
        mlp: its MLP module.
        slices: every :class:`WeightSlice` of the layer's units.
        head_dim: per-head width.
        queries_per_group: G, query heads per KV head.
        mlp_in: the module whose input is the MLP input (gate_proj, or a fused gate_up_proj).
        attn_in: the module whose input is the attention input (q_proj, or a fused qkv_proj).
        down_proj: the MLP output projection; its input columns are the FFN channels.
        o_proj: the attention output projection; its input columns are the heads' outputs.
        glu: ``(gate_proj, up_proj)`` when the MLP computes ``down(silu(gate(x)) * up(x))`` with its
            class's own forward and separate linears (gates may then fuse the gated product); else None.
    """

    index: int
    layer: nn.Module
    attention: nn.Module
    mlp: nn.Module
    slices: tuple[WeightSlice, ...]
    head_dim: int
    queries_per_group: int
    mlp_in: nn.Module
    attn_in: nn.Module
    glu: tuple[nn.Linear, nn.Linear] | None = None

    @property
    def down_proj(self) -> nn.Linear:
        """The MLP output projection (current module)."""
        return self.slice("down_proj").linear

    @property
    def o_proj(self) -> nn.Linear:
        """The attention output projection (current module)."""
        return self.slice("o_proj").linear

    def of(self, kind: UnitKind) -> list[WeightSlice]:
        """The slices of one unit kind."""
        return [s for s in self.slices if s.kind == kind]

    def slice(self, name: str) -> WeightSlice:
        """The slice called ``name`` (``gate_proj``, ``k_proj``, ...)."""
        for s in self.slices:
            if s.name == name:
                return s
        raise KeyError(f"layer {self.index} has no slice {name!r}; it has {[s.name for s in self.slices]}")

    @property
    def ffn_channels(self) -> int:
        """FFN width (units of kind FFN)."""
        return self.slice("down_proj").units

    @property
    def kv_groups(self) -> int:
        """KV heads (units of kind KV)."""
        return self.slice("k_proj").units

    def unit_cost(self, kind: UnitKind) -> int:
        """Parameters removed with one unit of ``kind``: the sum over its slices."""
        return sum(s.cost_per_unit for s in self.of(kind))


def count_parameters(model: nn.Module) -> int:
    """``sum(p.numel() for p in model.parameters())``; shared (tied) tensors are counted once."""
    return sum(p.numel() for p in model.parameters())


class ArchitectureAdapter(ABC):
    """Everything pruneframe needs to know about one model family.

    Subclasses set :attr:`name` and :attr:`architectures` and implement :meth:`layer_slices`;
    the rest has family-neutral defaults built on the slices.

    Attributes:
        name: short family name (``llama``, ``gemma3``, ``phi3``).
        architectures: model class names this adapter handles (a subclass of one matches too).
    """

    name: ClassVar[str]
    architectures: ClassVar[tuple[str, ...]]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # identity ---------------------------------------------------------------------------------

    def architecture_of(self, model: nn.Module) -> str | None:
        """The handled class name ``model`` is (a subclass of), or None."""
        for cls in type(model).__mro__:
            if cls.__name__ in self.architectures:
                return cls.__name__
        return None

    def matches(self, model: nn.Module) -> bool:
        """Whether this adapter handles ``model``."""
        return self.architecture_of(model) is not None

    # structure --------------------------------------------------------------------------------

    def decoder_layers(self, model: nn.Module) -> list[nn.Module]:
        """The decoder layers in order (default: ``model.model.layers``)."""
        return list(model.model.layers)

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The norm the decoder applies after its last layer (default: the decoder's ``norm``).

        A layer-streamed gradient pass (:func:`pruneframe.toolkit.streaming.streamed_backward`) applies it to
        the last layer's output to form the decoder's final hidden states.
        """
        return model.get_decoder().norm

    def queries_per_group(self, model: nn.Module) -> int:
        """G, query heads per KV head, from the config (what a layer whose attention was removed still has)."""
        config = model.config
        heads = int(config.num_attention_heads)
        return heads // int(getattr(config, "num_key_value_heads", None) or heads)

    def head_dim(self, model: nn.Module) -> int:
        """Per-head width from the config (``head_dim``, else ``hidden_size // num_attention_heads``)."""
        config = model.config
        return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)

    @abstractmethod
    def layer_slices(self, model: nn.Module) -> list[LayerSlices]:
        """Per decoder layer, its :class:`LayerSlices` (widths read from the modules, not the config)."""

    def discover(self, model: nn.Module) -> UnitSet:
        """Every FFN channel and KV group of ``model`` with its exact parameter cost.

        A unit's cost is what its slices own: weight rows/columns plus the bias entries of its rows
        (an output projection's bias is per output, so it stays). Norms acting per ``head_dim``
        (q_norm / k_norm) are shared by every head and cost nothing.
        """
        arch = self.architecture_of(model)
        if arch is None:
            raise NotImplementedError(f"{type(model).__name__} is not a {self.name} model; handled: {', '.join(self.architectures)}")
        layers = self.layer_slices(model)
        shapes = [
            LayerShape(
                ffn_channels=ls.ffn_channels,
                kv_groups=ls.kv_groups,
                queries_per_group=ls.queries_per_group,
                ffn_cost=ls.unit_cost(UnitKind.FFN),
                kv_cost=ls.unit_cost(UnitKind.KV),
                ffn_overhead=self.block_overhead(ls, UnitKind.FFN),
                kv_overhead=self.block_overhead(ls, UnitKind.KV),
            )
            for ls in layers
        ]
        return UnitSet(
            architecture=arch,
            layers=shapes,
            total_params=count_parameters(model),
            head_dim=layers[0].head_dim if layers else self.head_dim(model),
            hidden_size=int(model.config.hidden_size),
            adapter=self,
        )

    def norm_weight_offset(self, norm: nn.Module) -> float:
        """What the family's norm adds to its stored weight before scaling (0; Gemma's ``1 + w``: 1).

        Cutting hidden channels rescales a norm's applied scale (:mod:`pruneframe.architectures.hidden`).
        """
        return 0.0

    def block_norms(self, layer: LayerSlices, kind: UnitKind) -> list[nn.Module]:
        """The norms that go with the attention (``KV``) or MLP (``FFN``) block when it is removed whole.

        The default reads the layer's attribute names (:func:`~pruneframe.checkpoint.modeling_pruneframe.block_norm_names`:
        pre-norms, and post-norms of a sandwich layout) and, for attention, its per-head q/k norms.
        """
        from pruneframe.checkpoint.modeling_pruneframe import ATTENTION_INNER_NORMS, block_norm_names  # lazy: checkpoint imports this module

        attn_names, mlp_names = block_norm_names(layer.layer)
        out = [getattr(layer.layer, n) for n in (attn_names if kind == UnitKind.KV else mlp_names)]
        if kind == UnitKind.KV:
            out += [m for n in ATTENTION_INNER_NORMS if isinstance(m := getattr(layer.attention, n, None), nn.Module)]
        return out

    def input_norm(self, layer: LayerSlices, kind: UnitKind) -> nn.Module | None:
        """The pre-norm whose output the attention (``KV``) or MLP (``FFN``) block's input projections read.

        The default is the first of the block's norm names (``input_layernorm`` before attention;
        ``post_attention_layernorm`` in pre-norm layers or ``pre_feedforward_layernorm`` in sandwich
        layers before the MLP); None where the layer has none. A rotation of the residual stream folds
        this norm's scale into those projections (:mod:`pruneframe.architectures.rotation`).
        """
        from pruneframe.checkpoint.modeling_pruneframe import block_norm_names  # lazy: checkpoint imports this module

        attn_names, mlp_names = block_norm_names(layer.layer)
        names = attn_names if kind == UnitKind.KV else mlp_names
        return getattr(layer.layer, names[0]) if names else None

    def block_overhead(self, layer: LayerSlices, kind: UnitKind) -> int:
        """Parameters a removed block sheds beyond its units: those of its :meth:`block_norms`."""
        return sum(p.numel() for m in self.block_norms(layer, kind) for p in m.parameters())

    def remove_blocks(self, layer: LayerSlices, attention: bool, mlp: bool) -> None:
        """Mark the layer's emptied attention and/or MLP block removed (after fold sliced it to zero width).

        The default is the checkpoint's own :func:`~pruneframe.checkpoint.modeling_pruneframe.remove_blocks`,
        so a reloaded checkpoint has exactly the modules the fold left.
        """
        from pruneframe.checkpoint.modeling_pruneframe import remove_blocks  # lazy: checkpoint imports this module

        remove_blocks(layer.layer, attention=layer.attention if attention else None, mlp=layer.mlp if mlp else None)

    def drop_layers(self, model: nn.Module, indices: list[int]) -> None:
        """Remove the decoder layers at ``indices`` (both blocks removed: they compute the identity).

        The default edits ``model.model.layers`` and the config (``num_hidden_layers``, a per-layer
        ``layer_types`` list) and renumbers the kept attention modules' ``layer_idx`` (their KV-cache
        slot), so the model is the family's own model with fewer layers.
        """
        drop = set(indices)
        decoder = model.model
        kept = [layer for i, layer in enumerate(decoder.layers) if i not in drop]
        decoder.layers = nn.ModuleList(kept)
        config = model.config
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, (list, tuple)) and len(layer_types) == len(kept) + len(drop):
            config.layer_types = [t for i, t in enumerate(layer_types) if i not in drop]
        config.num_hidden_layers = len(kept)
        for i, layer in enumerate(kept):
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = i

    def layer_widths(self, model: nn.Module) -> list[LayerWidths]:
        """Per layer, the widths its modules have now (a pruned model reports its own, uneven ones)."""
        out = []
        for ls in self.layer_slices(model):
            down, o = ls.down_proj, ls.o_proj
            out.append(
                LayerWidths(
                    index=ls.index,
                    ffn=ls.ffn_channels,
                    q_heads=ls.kv_groups * ls.queries_per_group,
                    kv_heads=ls.kv_groups,
                    head_dim=ls.head_dim,
                    hidden=int(o.out_features),
                    down_proj_bias=down.bias is not None,
                    o_proj_bias=o.bias is not None,
                )
            )
        return out

    def prunable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The weights and biases of every linear layer that holds unit slices."""
        params: dict[int, nn.Parameter] = {}
        for ls in self.layer_slices(model):
            for s in ls.slices:
                for p in s.linear.parameters(recurse=False):
                    params[id(p)] = p
        return list(params.values())

    def set_widths(self, layer: LayerSlices, widths: LayerWidths, config: Any) -> None:
        """Update the attributes a layer's forward reads after its weights were sliced to ``widths``.

        The default sets ``intermediate_size`` on the MLP and ``num_heads`` / ``num_key_value_heads``
        on the attention module where they exist.
        """
        if hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = widths.ffn
        for attr, value in (("num_heads", widths.q_heads), ("num_key_value_heads", widths.kv_heads)):
            if hasattr(layer.attention, attr):
                setattr(layer.attention, attr, value)

    # checkpoints ------------------------------------------------------------------------------

    def family_class(self, model: nn.Module) -> type[nn.Module]:
        """The family's own model class among ``model``'s bases (``LlamaForCausalLM`` for a pruned Llama).

        A checkpoint with uneven layers derives its config and model classes from it (and its
        ``config_class``) and names it by module and class, so it must be importable by that name.
        """
        arch = self.architecture_of(model)
        for cls in type(model).__mro__:
            if cls.__name__ == arch:
                return cls
        raise NotImplementedError(f"{type(model).__name__} is not a {self.name} model")

    def plain_config(self, config: dict[str, Any], widths: LayerWidths) -> dict[str, Any] | None:
        """The original family's config with every layer at ``widths``, or None when it cannot say so.

        The default sets ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads`` and
        ``head_dim``. The checkpoint writer builds the family's model from it on the meta device and
        uses it only when every layer then has exactly ``widths`` (bias flags included). Layers whose
        attention or MLP block was removed (zero heads or channels) have no plain form: None.
        """
        if widths.ffn == 0 or widths.kv_heads == 0:
            return None
        out = dict(config)
        out.update(
            intermediate_size=widths.ffn,
            num_attention_heads=widths.q_heads,
            num_key_value_heads=widths.kv_heads,
            head_dim=widths.head_dim,
        )
        return out

    # export -----------------------------------------------------------------------------------

    def gguf_spec(self, model: nn.Module) -> GGUFSpec:
        """How ``model``, as it is now, is written as a GGUF file for llama.cpp (a :class:`~pruneframe.architectures.gguf.GGUFSpec`).

        A family that llama.cpp runs overrides this: it names the llama.cpp architectures its layers
        are written as and how its modules become tensors, and raises
        :class:`~pruneframe.architectures.gguf.ExportRefused` for any setting or state of ``model``
        llama.cpp cannot hold, saying why. The default describes no layout and refuses every model.
        """
        raise ExportRefused(f"{type(model).__name__}: {type(self).__name__} (family {self.name!r}) describes no GGUF layout, so it is not exported yet")

    # tests ------------------------------------------------------------------------------------

    def tiny_models(self) -> dict[str, tuple[type[nn.Module], dict[str, Any]]]:
        """Small random models of the family for tests: name -> (model class, config settings).

        :func:`pruneframe.testing.tiny_model` builds ``model_class(model_class.config_class(**settings))``
        with ``settings`` laid over :data:`pruneframe.testing.COMMON` (vocabulary 97, width 48, FFN 40,
        3 layers), so every method's checks run on the family. Describe each layout the family's units
        can take (GQA and MHA, biases, norms). The default describes none.
        """
        return {}
