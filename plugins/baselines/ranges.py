"""Layer ranges shared by the baselines: keep layers outside a range whole, as LLM-Pruner does.

:func:`resolve_layer_range` reads a range from layer indices or fractions; :func:`range_minimum`
turns it into the projector's per-group minimum. Where a unit's weights are comes from the core's
architecture adapter (:meth:`pruneframe.pipeline.methods.ScoringContext.layers`).
"""

from __future__ import annotations

import math
import torch

from pruneframe.pipeline.units import UnitKind, UnitSet

__all__ = [
    "resolve_layer_range",
    "range_minimum",
    "LayerBound",
]

LayerBound = int | float


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


def resolve_layer_range(start: LayerBound, end: LayerBound, num_layers: int, *, fractions_from: int = 8) -> tuple[int, int]:
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
        raise ValueError(f"layer_start={start!r}, layer_end={end!r} leave no layer to prune in a model with {num_layers} layers")
    return first, stop


def range_minimum(units: UnitSet, first: int, stop: int) -> torch.Tensor:
    """Per projection group: every unit for layers outside ``[first, stop)``, else one FFN channel and one KV group."""
    minimum = units.default_minimum()
    for i, shape in enumerate(units.layers):
        if not first <= i < stop:
            minimum[2 * i + int(UnitKind.FFN)] = shape.ffn_channels
            minimum[2 * i + int(UnitKind.KV)] = shape.kv_groups
    return minimum
