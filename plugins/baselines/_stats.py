"""Shared helpers of the baseline methods: where a unit's weights are, layer ranges.

Input statistics come from the core collector, :mod:`pruneframe.collect`.

* :func:`unit_parts` lists, per layer, the weight matrices that make up its units and along which
  axis a unit's channels lie (FFN channel: gate/up rows + down column; KV group: q/k/v rows + o
  columns), so every method gathers "the weights of a unit" the same way.
* :func:`resolve_layer_range` and :func:`range_minimum` keep layers outside a range whole, as
  LLM-Pruner does with the first and last layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pruneframe.architectures.llama import LayerModules
from pruneframe.units import UnitKind, UnitSet

__all__ = [
    "Part",
    "unit_parts",
    "channels_to_units",
    "resolve_layer_range",
    "range_minimum",
    "LayerBound",
]

LayerBound = int | float


@dataclass(frozen=True)
class Part:
    """One weight matrix's share of a layer's units.

    Attributes:
        name: the linear layer's attribute name (``gate_proj``, ``o_proj``, ...).
        linear: the layer itself.
        kind: which units of the layer it belongs to.
        axis: the weight axis that indexes channels (0: output rows, 1: input columns).
        per_unit: consecutive channels along ``axis`` that form one unit (1 for FFN channels,
            ``G * head_dim`` for q rows / o columns, ``head_dim`` for k/v rows).
    """

    name: str
    linear: nn.Linear
    kind: UnitKind
    axis: int
    per_unit: int

    @property
    def params_per_unit(self) -> int:
        """Weight entries one unit owns in this matrix."""
        other = self.linear.weight.shape[1 - self.axis]
        return self.per_unit * int(other)

    def channel_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a weight-shaped tensor over the non-channel axis: one value per channel."""
        return values.sum(dim=1 - self.axis)


def unit_parts(mods: LayerModules) -> list[Part]:
    """The seven projection matrices of one layer with the unit layout of each."""
    hd, g = mods.head_dim, mods.queries_per_group
    return [
        Part("gate_proj", mods.gate_proj, UnitKind.FFN, 0, 1),
        Part("up_proj", mods.up_proj, UnitKind.FFN, 0, 1),
        Part("down_proj", mods.down_proj, UnitKind.FFN, 1, 1),
        Part("q_proj", mods.q_proj, UnitKind.KV, 0, g * hd),
        Part("k_proj", mods.k_proj, UnitKind.KV, 0, hd),
        Part("v_proj", mods.v_proj, UnitKind.KV, 0, hd),
        Part("o_proj", mods.o_proj, UnitKind.KV, 1, g * hd),
    ]


def channels_to_units(values: torch.Tensor, per_unit: int) -> torch.Tensor:
    """Sum consecutive blocks of ``per_unit`` channel values: one value per unit."""
    if values.numel() % per_unit:
        raise ValueError(f"{values.numel()} channel values do not split into units of {per_unit}")
    return values.reshape(-1, per_unit).sum(dim=1)


# ----------------------------------------------------------------------------- layer ranges


def _bound(value: LayerBound, num_layers: int, *, end: bool, field: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{field} must be an int layer index or a float fraction, got {value!r}")
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{field}={value!r}: a fraction of the layers must lie in [0, 1]")
        # rounded inward, with a small tolerance so 0.1 * 30 counts as 3, not 3.0000000000000004
        exact = value * num_layers
        return math.floor(exact + 1e-9) if end else math.ceil(exact - 1e-9)
    index = value + num_layers if value < 0 else value
    if not 0 <= index <= num_layers:
        raise ValueError(f"{field}={value!r} is outside a model with {num_layers} layers")
    return index


def resolve_layer_range(
    start: LayerBound, end: LayerBound, num_layers: int, *, fractions_from: int = 8
) -> tuple[int, int]:
    """The pruned layer range ``[first, stop)`` from ints (indices, negative from the end) or fractions.

    Fractions are rounded inward (``start=0.1, end=0.95`` gives ``[4, 30)`` of 32 layers, LLM-Pruner's
    LLaMA-7B range, and ``[3, 28)`` of 30). Models with fewer than ``fractions_from`` layers are too
    small to spare whole layers, so fractional bounds there mean the full range.

    Raises:
        ValueError: a bound outside the model or an empty range; the message names the bounds.
    """
    if num_layers < fractions_from:
        first = 0 if isinstance(start, float) else _bound(start, num_layers, end=False, field="layer_start")
        stop = num_layers if isinstance(end, float) else _bound(end, num_layers, end=True, field="layer_end")
    else:
        first = _bound(start, num_layers, end=False, field="layer_start")
        stop = _bound(end, num_layers, end=True, field="layer_end")
    if first >= stop:
        raise ValueError(
            f"layer_start={start!r}, layer_end={end!r} leave no layer to prune in a model with {num_layers} layers"
        )
    return first, stop


def range_minimum(units: UnitSet, first: int, stop: int) -> torch.Tensor:
    """Per projection group: every unit for layers outside ``[first, stop)``, else one FFN channel and one KV group."""
    minimum = units.default_minimum()
    for i, shape in enumerate(units.layers):
        if not first <= i < stop:
            minimum[2 * i + int(UnitKind.FFN)] = shape.ffn_channels
            minimum[2 * i + int(UnitKind.KV)] = shape.kv_groups
    return minimum
