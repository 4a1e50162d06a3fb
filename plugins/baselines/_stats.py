"""Shared helpers of the baseline methods: where a unit's weights are, input statistics, layer ranges.

* :func:`unit_parts` lists, per layer, the weight matrices that make up its units and along which
  axis a unit's channels lie (FFN channel: gate/up rows + down column; KV group: q/k/v rows + o
  columns), so every method gathers "the weights of a unit" the same way.
* :func:`collect_input_moments` runs forward-only passes over calibration windows and accumulates,
  per layer, the first two moments of the inputs of chosen linear layers (Wanda-sp's norms, FLAP's
  means and fluctuations) through forward pre-hooks.
* :func:`resolve_layer_range` and :func:`range_minimum` keep layers outside a range whole, as
  LLM-Pruner does with the first and last layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from pruneframe.architectures.llama import LayerModules, layer_modules
from pruneframe.units import UnitKind, UnitSet

__all__ = [
    "Part",
    "unit_parts",
    "channels_to_units",
    "Moments",
    "collect_input_moments",
    "batches",
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


# ----------------------------------------------------------------------------- input statistics


@dataclass
class Moments:
    """Running first and second moments of one linear layer's input features (float64 sums).

    Attributes:
        count: tokens seen.
        total: per input feature, the sum over tokens.
        total_sq: per input feature, the sum of squares over tokens.
    """

    count: int
    total: torch.Tensor
    total_sq: torch.Tensor

    @classmethod
    def empty(cls, features: int) -> "Moments":
        """Zero sums for ``features`` input features."""
        z = torch.zeros(features, dtype=torch.float64)
        return cls(0, z, z.clone())

    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch of inputs ``[..., features]`` (on their device where it has float64)."""
        device = x.device if x.device.type in ("cpu", "cuda") else torch.device("cpu")
        if self.total.device != device:
            self.total, self.total_sq = self.total.to(device), self.total_sq.to(device)
        flat = x.detach().reshape(-1, x.shape[-1]).to(device=device, dtype=torch.float64)
        self.count += flat.shape[0]
        self.total += flat.sum(0)
        self.total_sq += flat.square().sum(0)

    def mean(self) -> torch.Tensor:
        """Per-feature mean over tokens."""
        return self.total / max(self.count, 1)

    def mean_square(self) -> torch.Tensor:
        """Per-feature mean of squares, ``||x_j||^2 / tokens``."""
        return self.total_sq / max(self.count, 1)

    def variance(self) -> torch.Tensor:
        """Per-feature unbiased variance over tokens (0 with fewer than two tokens)."""
        if self.count < 2:
            return torch.zeros_like(self.total)
        centred = self.total_sq - self.total.square() / self.count
        return (centred / (self.count - 1)).clamp_min(0.0)


def batches(windows: torch.Tensor, batch_size: int | None) -> Iterator[torch.Tensor]:
    """Consecutive row blocks of ``windows`` (all rows at once when ``batch_size`` is None)."""
    step = len(windows) if batch_size is None else batch_size
    for start in range(0, len(windows), step):
        yield windows[start : start + step]


def _decoder(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (saves the vocabulary-sized logits)."""
    return model.model


def collect_input_moments(
    model: nn.Module,
    windows: torch.Tensor,
    targets: Mapping[str, Callable[[LayerModules], nn.Module]],
    *,
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "calibration",
) -> dict[str, list[Moments]]:
    """Input moments of chosen linear layers in every decoder layer, from forward-only passes.

    Args:
        model: a llama-family causal LM (weights untouched; hooks are removed on exit).
        windows: ``[num, seq_len]`` token ids.
        targets: name -> which module of a layer to watch (e.g. ``lambda m: m.down_proj``).
        batch_size: windows per forward pass (all at once when None).
        progress: show a progress bar.
        desc: progress bar label.

    Returns:
        name -> per layer :class:`Moments` of that module's input.
    """
    layers = layer_modules(model)
    stats = {name: [Moments.empty(pick(m).in_features) for m in layers] for name, pick in targets.items()}
    handles = []

    def hook(moments: Moments):
        def pre(module: nn.Module, args: tuple) -> None:
            moments.add(args[0])

        return pre

    device = next(model.parameters()).device
    try:
        for name, pick in targets.items():
            for i, mods in enumerate(layers):
                handles.append(pick(mods).register_forward_pre_hook(hook(stats[name][i])))
        total = -(-len(windows) // (batch_size or len(windows)))
        with torch.inference_mode():
            for batch in tqdm(batches(windows, batch_size), total=total, desc=desc, disable=not progress):
                _decoder(model)(input_ids=batch.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return stats


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
