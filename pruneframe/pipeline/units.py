"""Prunable units: the structured groups a method scores and the projector keeps or drops.

A :class:`UnitSet` is a flat table, one row per unit, ordered layer by layer and, inside a layer,
all FFN channels first and then all KV groups. Every stage (scoring, projection, recalibration,
folding) speaks in this one flat order, so a score vector, a mask and a scale vector are plain
1-D tensors of length ``len(units)``.

This module is the vocabulary the architecture adapters and the pipeline share (:class:`UnitKind`,
:class:`LayerShape`, :class:`LayerWidths`, :class:`UnitSet`); it imports no adapter, not even for type
hints. A unit set reaches its adapter through :class:`UnitAdapter`, the one method it calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

import torch

from pruneframe.pipeline.removal import empty_groups

__all__ = ["UnitKind", "UnitSet", "LayerShape", "LayerWidths", "UnitAdapter"]


class UnitKind(IntEnum):
    """What a unit is: one FFN channel or one KV-head group."""

    FFN = 0
    KV = 1


@dataclass(frozen=True)
class LayerShape:
    """The prunable shape of one decoder layer.

    Attributes:
        ffn_channels: intermediate (FFN) width.
        kv_groups: number of KV heads; each carries ``queries_per_group`` query heads.
        queries_per_group: G, the number of query heads that share one KV head.
        ffn_cost: parameters removed with one FFN channel.
        kv_cost: parameters removed with one KV group.
        ffn_overhead: parameters removed with the MLP block once all its channels are (its norms).
        kv_overhead: parameters removed with the attention block once all its KV groups are (its
            norms, q/k norms included).
    """

    ffn_channels: int
    kv_groups: int
    queries_per_group: int
    ffn_cost: int
    kv_cost: int
    ffn_overhead: int = 0
    kv_overhead: int = 0


@dataclass(frozen=True)
class LayerWidths:
    """The prunable widths of one decoder layer, as its modules have them now (one representation for all).

    Attributes:
        index: layer index.
        ffn: FFN (intermediate) channels.
        q_heads: query heads.
        kv_heads: KV heads.
        head_dim: per-head width.
        hidden: model width (the output projections' out_features).
        down_proj_bias: whether the MLP output projection has a bias.
        o_proj_bias: whether the attention output projection has a bias.
    """

    index: int
    ffn: int
    q_heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    down_proj_bias: bool = False
    o_proj_bias: bool = False

    def to_config(self) -> dict[str, int | bool]:
        """The entry of ``config.pruned_layers`` (transformers' attribute names)."""
        return {
            "intermediate_size": self.ffn,
            "num_attention_heads": self.q_heads,
            "num_key_value_heads": self.kv_heads,
            "down_proj_bias": self.down_proj_bias,
            "o_proj_bias": self.o_proj_bias,
        }

    def same_shape(self, other: "LayerWidths") -> bool:
        """Whether two layers have identical widths and bias flags (the index aside)."""
        return (self.ffn, self.q_heads, self.kv_heads, self.head_dim, self.hidden, self.down_proj_bias, self.o_proj_bias) == (
            other.ffn,
            other.q_heads,
            other.kv_heads,
            other.head_dim,
            other.hidden,
            other.down_proj_bias,
            other.o_proj_bias,
        )


class UnitAdapter(Protocol):
    """What a :class:`UnitSet` asks of the adapter that discovered it: where each layer's unit weights are.

    Every :class:`~pruneframe.architectures.ArchitectureAdapter` is one; the protocol lets this module
    name it without importing the adapters, which import this module.
    """

    def layer_slices(self, model: torch.nn.Module) -> list[Any]:
        """Per decoder layer of ``model``, its :class:`~pruneframe.architectures.LayerSlices`."""
        ...


@dataclass
class UnitSet:
    """Every prunable unit of a model, with its exact parameter cost.

    Attributes:
        architecture: name of the discovery plugin's architecture family (e.g. ``"llama"``).
        layers: per decoder layer, its :class:`LayerShape`.
        total_params: ``sum(p.numel() for p in model.parameters())`` (tied weights counted once).
        head_dim: attention head dimension.
        hidden_size: model width.
        adapter: the :class:`~pruneframe.architectures.ArchitectureAdapter` that discovered the
            units (fold, gates and the collector ask it where each unit's weights are).
    """

    architecture: str
    layers: list[LayerShape]
    total_params: int
    head_dim: int
    hidden_size: int
    adapter: UnitAdapter | None = field(default=None, repr=False, compare=False)
    layer: torch.Tensor = field(init=False, repr=False)
    kind: torch.Tensor = field(init=False, repr=False)
    index: torch.Tensor = field(init=False, repr=False)
    cost: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        layer, kind, index, cost = [], [], [], []
        for i, shape in enumerate(self.layers):
            for k, n, c in ((UnitKind.FFN, shape.ffn_channels, shape.ffn_cost), (UnitKind.KV, shape.kv_groups, shape.kv_cost)):
                layer.append(torch.full((n,), i, dtype=torch.long))
                kind.append(torch.full((n,), int(k), dtype=torch.long))
                index.append(torch.arange(n, dtype=torch.long))
                cost.append(torch.full((n,), c, dtype=torch.long))
        self.layer = torch.cat(layer) if layer else torch.zeros(0, dtype=torch.long)
        self.kind = torch.cat(kind) if kind else torch.zeros(0, dtype=torch.long)
        self.index = torch.cat(index) if index else torch.zeros(0, dtype=torch.long)
        self.cost = torch.cat(cost) if cost else torch.zeros(0, dtype=torch.long)
        if self.nonprunable_params < 0:
            raise ValueError("unit costs exceed the model's parameter count; discovery is inconsistent")

    def layer_slices(self, model: torch.nn.Module) -> list[Any]:
        """Per decoder layer of ``model`` (the model these units were discovered on), its weight slices
        (:class:`~pruneframe.architectures.LayerSlices`)."""
        return self.require_adapter().layer_slices(model)

    def require_adapter(self) -> Any:
        """The :class:`~pruneframe.architectures.ArchitectureAdapter` that discovered these units (an error names how to get one when there is none)."""
        if self.adapter is None:
            raise ValueError(
                f"this UnitSet ({self.architecture}) carries no architecture adapter; "
                "discover units with ArchitectureAdapter.discover or PluginHost.discover_units"
            )
        return self.adapter

    def __len__(self) -> int:
        return int(self.cost.numel())

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return len(self.layers)

    @property
    def prunable_params(self) -> int:
        """Total cost of all units (FFN + attention parameters that can be removed)."""
        return int(self.cost.sum())

    @property
    def nonprunable_params(self) -> int:
        """Parameters no mask can remove (embeddings, norms, output biases, lm_head)."""
        return self.total_params - self.prunable_params

    @property
    def groups(self) -> torch.Tensor:
        """Projection group of every unit: ``2 * layer + kind`` (one group per layer and kind)."""
        return 2 * self.layer + self.kind

    @property
    def overhead(self) -> torch.Tensor:
        """Per projection group, the parameters its block sheds once the group keeps no unit (int64)."""
        return torch.tensor([c for shape in self.layers for c in (shape.ffn_overhead, shape.kv_overhead)], dtype=torch.long)

    def removed_groups(self, mask: torch.Tensor) -> torch.Tensor:
        """Per projection group, whether ``mask`` keeps none of its units (its block is removed)."""
        return empty_groups(mask.cpu(), self.groups, self.num_groups)

    def removed_overhead(self, mask: torch.Tensor) -> int:
        """Parameters shed with the blocks ``mask`` removes (the overhead of every group it empties)."""
        return int(self.overhead[self.removed_groups(mask)].sum())

    @property
    def num_groups(self) -> int:
        """Number of projection groups (two per layer)."""
        return 2 * self.num_layers

    def slice(self, layer: int, kind: UnitKind) -> slice:
        """Position of one layer's units of one kind in the flat order."""
        start = 0
        for i, shape in enumerate(self.layers):
            if i == layer:
                if kind == UnitKind.FFN:
                    return slice(start, start + shape.ffn_channels)
                start += shape.ffn_channels
                return slice(start, start + shape.kv_groups)
            start += shape.ffn_channels + shape.kv_groups
        raise IndexError(f"layer {layer} out of range (model has {self.num_layers} layers)")

    def kept_params(self, mask: torch.Tensor) -> int:
        """Total parameter count of a model folded with ``mask`` (no output biases added).

        A group the mask empties removes its block, and the block's norms with it.
        """
        return self.nonprunable_params + int(self.cost[mask.bool()].sum()) - self.removed_overhead(mask)

    def budget_cost(self, mask: torch.Tensor) -> int:
        """What ``mask`` spends of a budget: kept unit cost minus the overhead of the blocks it removes.

        Budgets count prunable parameters with every block present, so a removed block's norms are
        credited back: ``kept_params(mask) == nonprunable_params + budget_cost(mask)``.
        """
        return self.kept_cost(mask) - self.removed_overhead(mask)

    def kept_cost(self, mask: torch.Tensor) -> int:
        """Summed cost of the kept units."""
        return int(self.cost[mask.bool()].sum())

    def widths(self, mask: torch.Tensor) -> list[dict[str, int]]:
        """Per layer: kept FFN channels, KV groups and query heads under ``mask``."""
        out = []
        mask = mask.bool()
        for i, shape in enumerate(self.layers):
            ffn = int(mask[self.slice(i, UnitKind.FFN)].sum())
            kv = int(mask[self.slice(i, UnitKind.KV)].sum())
            out.append({"ffn_channels": ffn, "kv_groups": kv, "query_heads": kv * shape.queries_per_group})
        return out

    def default_minimum(self, ffn: int = 1, kv: int = 1) -> torch.Tensor:
        """Per projection group minimum: ``ffn`` channels and ``kv`` groups kept in every layer."""
        return torch.tensor([ffn, kv] * self.num_layers, dtype=torch.long)
