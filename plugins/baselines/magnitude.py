"""Magnitude pruning: a unit's importance is the norm of its weights (the L1/L2 baseline of
LLM-Pruner, Ma et al. 2023, and of Li et al. 2017, "Pruning Filters for Efficient ConvNets").

A unit's weights are all weight entries it owns: an FFN channel's gate_proj and up_proj rows and its
down_proj column; a KV group's q/k/v rows and o_proj columns (the weight slices the architecture
adapter names, fused projections included; biases are not counted). The norm is normalised per parameter so that FFN channels (3d entries) and
KV groups ((2G+2)·hd·d entries) compare under one global budget: L1 is ``sum|w| / n``, L2 is
``sqrt(sum w^2 / n)``, i.e. the mean absolute value and the root mean square.

With ``hidden_keep`` set (:class:`~pruneframe.pipeline.methods.HiddenOptions`) it also cuts the hidden
dimension: a hidden channel scores the same per-parameter norm over every weight it spans (its embedding
and lm_head columns, the input columns of q/k/v/gate/up and the output rows of o/down; norms and biases
are scales and offsets, not counted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from pruneframe.architectures import WeightSlice
from pruneframe.architectures.hidden import hidden_sites
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.methods import HiddenOptions, PruningMethod, ScoringContext
from pruneframe.pipeline.units import UnitKind
from pruneframe_baselines import AllocationConfig

__all__ = ["MagnitudeConfig", "Magnitude"]


class MagnitudeConfig(AllocationConfig, HiddenOptions):
    """Magnitude settings.

    Attributes:
        norm: ``l1`` (mean |w|) or ``l2`` (root mean square of w), per parameter of the unit.
        allocation: ``global`` (one ranking over all layers and kinds) or ``uniform`` (same keep
            fraction per layer and kind); this is the projector's ``scope``.
        hidden_keep: share of hidden channels to keep (``None``, the default: all of them).
    """

    norm: Literal["l1", "l2"] = "l2"
    allocation: Literal["global", "uniform"] = "global"


class Magnitude(PruningMethod):
    """Per-parameter L1/L2 norm of every unit's weights; needs no calibration data."""

    name = "magnitude"
    Config = MagnitudeConfig
    summary = "per-parameter L1/L2 norm of each unit's weights (no calibration)"
    config: MagnitudeConfig

    def score(self, context: ScoringContext) -> torch.Tensor:
        """One per-parameter norm per unit (float32, flat unit order)."""
        units = context.units
        scores = torch.empty(len(units), dtype=torch.float32)
        with torch.no_grad():
            for i, layer in enumerate(context.layers()):
                for kind in (UnitKind.FFN, UnitKind.KV):
                    parts = layer.of(kind)
                    total = sum(self._part_total(p) for p in parts)
                    n = sum(p.params_per_unit for p in parts)
                    mean = total / n
                    scores[units.slice(i, kind)] = (mean if self.config.norm == "l1" else mean.sqrt()).float()
        return scores

    def score_hidden(self, context: ScoringContext) -> torch.Tensor:
        """One per-parameter norm per hidden channel over the weights it spans (float32)."""
        total = torch.zeros(context.units.hidden_size, dtype=torch.float64)
        count = 0
        with torch.no_grad():
            for site in hidden_sites(context.units.require_adapter(), context.model):
                if site.role in ("norm", "output_bias"):
                    continue
                w = site.tensor.detach()
                other = 1 - site.dim
                values = w.abs() if self.config.norm == "l1" else w.square()
                total += values.to(torch.float64).sum(dim=other).cpu()
                count += w.shape[other]
        mean = total / max(count, 1)
        return (mean if self.config.norm == "l1" else mean.sqrt()).float()

    def _part_total(self, part: WeightSlice) -> torch.Tensor:
        l1 = self.config.norm == "l1"
        return part.per_unit_sum_of(lambda block, _: block.abs() if l1 else block.square()).cpu()


@hookimpl
def pruneframe_register_methods(register: Callable[[type[PruningMethod]], None]) -> None:
    """Register the magnitude baseline."""
    register(Magnitude)
