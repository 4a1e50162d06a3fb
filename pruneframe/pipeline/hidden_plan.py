"""A prune that cuts the hidden dimension too: the width, the units' costs at that width, the target.

A method opts in through :class:`~pruneframe.pipeline.methods.HiddenOptions` (``hidden_keep``). The
session then works on a :class:`~pruneframe.pipeline.units.UnitSet` whose costs are those at the kept
hidden width (:meth:`HiddenPlan.units_at`), so the ordinary projector, the core's budget check and the
fold's parameter check all apply unchanged; the budget is a count of total parameters, the same number
a width-only method meets at that budget. After projection, :meth:`HiddenPlan.widen` adds hidden
channels while a block of them still fits (see :mod:`pruneframe.pipeline.hidden_budget`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from pruneframe.architectures.hidden import head_is_tied, hidden_cost_model, hidden_refusal
from pruneframe.pipeline.hidden_budget import HiddenCostModel, balanced_width
from pruneframe.pipeline.methods import HiddenOptions, PruningMethod
from pruneframe.pipeline.projection import BudgetError
from pruneframe.pipeline.units import UnitKind, UnitSet

__all__ = ["HiddenPlan", "hidden_plan"]


@dataclass(frozen=True)
class HiddenPlan:
    """How one prune cuts the hidden dimension.

    Attributes:
        options: the method's hidden settings.
        costs: the model's parameter count in the hidden width (affine, quadratic with residual shortcuts).
        target_total: the most parameters the pruned model may have.
        width: the hidden width asked for (``hidden_keep`` of ``d``, rounded up to ``round_to``).
        round_to: kept hidden widths are multiples of this (or ``d``).
    """

    options: HiddenOptions
    costs: HiddenCostModel
    target_total: int
    width: int
    round_to: int

    def units_at(self, units: UnitSet, width: int) -> UnitSet:
        """``units`` with every cost at hidden width ``width``; its ``total_params`` is the model's at that width."""
        a, b = self.costs.unit_per_channel, self.costs.unit_fixed
        shapes = []
        for i, shape in enumerate(units.layers):
            ffn, kv = units.slice(i, UnitKind.FFN), units.slice(i, UnitKind.KV)
            ffn_cost = int(a[ffn][0]) * width + int(b[ffn][0]) if shape.ffn_channels else shape.ffn_cost
            kv_cost = int(a[kv][0]) * width + int(b[kv][0]) if shape.kv_groups else shape.kv_cost
            overhead = (shape.ffn_overhead * width // units.hidden_size, shape.kv_overhead * width // units.hidden_size)
            shapes.append(dataclasses.replace(shape, ffn_cost=ffn_cost, kv_cost=kv_cost, ffn_overhead=overhead[0], kv_overhead=overhead[1]))
        total = self.costs.total(width, torch.ones(len(units), dtype=torch.bool))
        return UnitSet(units.architecture, shapes, total, units.head_dim, width, adapter=units.adapter)

    def unit_target(self, scaled: UnitSet) -> int:
        """What the target leaves the units of ``scaled`` (a :meth:`units_at` set)."""
        return self.target_total - scaled.nonprunable_params

    def widen(self, mask: torch.Tensor) -> int:
        """The widest admissible hidden width, from :attr:`width` up, whose model with ``mask``'s units fits the target."""
        width, d = self.width, self.costs.hidden_size
        while width < d:
            wider = min(d, (width // self.round_to + 1) * self.round_to)
            if self.costs.total(wider, mask) > self.target_total:
                break
            width = wider
        return width


def hidden_plan(method: PruningMethod, model: nn.Module, units: UnitSet, target_total: int) -> HiddenPlan | None:
    """The plan for ``method`` on ``model`` when its config sets ``hidden_keep``, else ``None``.

    Raises:
        ValueError: the method also removes blocks, or the family cannot cut its hidden dimension
            (the message says why).
        BudgetError: the hidden channels asked for alone cost more than ``target_total``.
    """
    options = method.config
    if not isinstance(options, HiddenOptions) or options.hidden_keep is None:
        return None
    if method.config.removal != "none":
        raise ValueError(f"method {method.name!r}: hidden_keep cannot be combined with removal {method.config.removal!r}")
    adapter = units.require_adapter()
    if (why := hidden_refusal(adapter, model)) is not None:
        raise ValueError(f"method {method.name!r}: {type(adapter).__name__} cannot cut this model's hidden dimension: {why}")
    d = units.hidden_size
    round_to = options.hidden_round_to or int(model.config.num_attention_heads)
    costs = hidden_cost_model(adapter, model)
    if method.rotates_hidden:
        from pruneframe.architectures.rotation import unfusable_norms  # lazy: rotation sits beside the adapters

        if approximated := unfusable_norms(adapter, model):
            raise ValueError(
                f"method {method.name!r} rotates the residual stream, which cannot carry the per-channel scale of a norm after a "
                f"block ({', '.join(approximated[:3])}{', ...' if len(approximated) > 3 else ''}); this family normalises block outputs"
            )
        if head_is_tied(model):  # the rotation unties the head to fuse the final norm into it
            costs = costs.with_untied_head(int(model.get_output_embeddings().weight.shape[0]))
        if method.residual_shortcuts:  # a basis per stream point: two shortcut matrices per layer
            costs = costs.with_shortcuts(2 * units.num_layers)
    if options.hidden_keep == "budget":
        width = min(d, round_to)
    elif options.hidden_keep == "balanced":
        width = balanced_width(costs, target_total, round_to)
    else:
        width = min(d, math.ceil(max(1, math.ceil(options.hidden_keep * d - 1e-9)) / round_to) * round_to)
    hidden_only = costs.hidden_only(width)
    if hidden_only > target_total:
        raise BudgetError(
            f"method {method.name!r}: {width} of {d} hidden channels (hidden_keep {options.hidden_keep}) already take "
            f"{hidden_only:,} parameters, over the budget's {target_total:,}; lower hidden_keep"
        )
    return HiddenPlan(options, costs, target_total, width, round_to)
