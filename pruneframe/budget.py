"""Budgets: how much of a model to keep, as a typed value resolved against a model's units.

Three conventions, one per paper family:

* ``prunable``: keep-ratio of the prunable (FFN + attention) parameters, GRASPrune's convention;
* ``total``: keep-ratio of all parameters, LLM-Pruner's ("remove 20% of parameters" is ``keep=0.8``);
* ``params``: an absolute number of parameters to keep.

Every budget resolves to one integer, the largest summed cost of kept units, which is what the
projector (:func:`project`, re-exported here) meets exactly.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from pruneframe.projection import BudgetError, project
from pruneframe.units import UnitSet

__all__ = ["Budget", "BudgetKind", "KeepPrunable", "KeepTotal", "KeepParams", "BudgetError", "project", "make_budget", "resolve", "check_meets_budget", "mandatory_cost"]

BudgetKind = Literal["prunable", "total", "params"]


def _check_ratio(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"keep ratio must be a number in (0, 1] (e.g. 0.5 keeps half), got {value!r}")
    return float(value)


class _BudgetBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def resolve(self, units: UnitSet) -> int:  # pragma: no cover - overridden
        """Largest allowed summed cost of kept units for ``units``."""
        raise NotImplementedError

    def label(self) -> str:  # pragma: no cover - overridden
        """Short human-readable form, e.g. ``keep 50% of prunable``."""
        raise NotImplementedError


class KeepPrunable(_BudgetBase):
    """Keep this fraction of the prunable (FFN + attention) parameters."""

    kind: Literal["prunable"] = "prunable"
    keep: float

    _v = field_validator("keep", mode="before")(classmethod(lambda cls, v: _check_ratio(v)))

    def resolve(self, units: UnitSet) -> int:
        """``floor(keep * prunable_params)``."""
        return math.floor(self.keep * units.prunable_params)

    def label(self) -> str:
        """Human-readable form."""
        return f"keep {self.keep:g} of prunable params"


class KeepTotal(_BudgetBase):
    """Keep this fraction of all parameters (embeddings and norms included, as LLM-Pruner counts)."""

    kind: Literal["total"] = "total"
    keep: float

    _v = field_validator("keep", mode="before")(classmethod(lambda cls, v: _check_ratio(v)))

    def resolve(self, units: UnitSet) -> int:
        """``floor(keep * total_params) - nonprunable_params``."""
        return math.floor(self.keep * units.total_params) - units.nonprunable_params

    def label(self) -> str:
        """Human-readable form."""
        return f"keep {self.keep:g} of total params"


class KeepParams(_BudgetBase):
    """Keep at most this many parameters in total."""

    kind: Literal["params"] = "params"
    params: Annotated[int, Field(gt=0, description="total parameters to keep")]

    def resolve(self, units: UnitSet) -> int:
        """``params - nonprunable_params``."""
        return self.params - units.nonprunable_params

    def label(self) -> str:
        """Human-readable form."""
        return f"keep {self.params:,} params"


Budget = Annotated[Union[KeepPrunable, KeepTotal, KeepParams], Field(discriminator="kind")]
_adapter: TypeAdapter = TypeAdapter(Budget)


def make_budget(value: float | int | dict | _BudgetBase, kind: BudgetKind = "prunable") -> _BudgetBase:
    """Build a budget from a number and a kind, a dict (``{"kind": ..., ...}``) or a budget object.

    Raises:
        ValueError: with what was wrong and what is allowed.
    """
    if isinstance(value, _BudgetBase):
        return value
    if isinstance(value, dict):
        return _adapter.validate_python(value)
    if kind == "params":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"a 'params' budget is a whole number of parameters, got {value!r}")
        return KeepParams(params=int(value))
    if kind not in ("prunable", "total"):
        raise ValueError(f"budget kind must be one of prunable, total, params; got {kind!r}")
    return _adapter.validate_python({"kind": kind, "keep": value})


def resolve(budget: _BudgetBase, units: UnitSet, minimum: torch.Tensor | None = None) -> int:
    """Resolve ``budget`` against ``units`` and check it is at least the mandatory minimum.

    Raises:
        BudgetError: when the budget cannot hold the per-group minimum (or is negative).
    """
    target = budget.resolve(units)
    minimum = units.default_minimum() if minimum is None else minimum
    floor = mandatory_cost(units, minimum)
    if target < floor:
        raise BudgetError(
            f"budget '{budget.label()}' allows {target:,} prunable parameters, below the mandatory "
            f"minimum of {floor:,} (the cheapest units of each layer that must be kept); allowed: "
            f"budgets from {floor + units.nonprunable_params:,} to {units.total_params:,} total parameters "
            f"(keep-ratio of prunable >= {floor / max(units.prunable_params, 1):.4g})"
        )
    return min(target, units.prunable_params)


def mandatory_cost(units: UnitSet, minimum: torch.Tensor) -> int:
    """Cost of the cheapest units that satisfy ``minimum`` in every group."""
    total = 0
    groups = units.groups
    for g in range(units.num_groups):
        need = int(minimum[g])
        if need:
            costs = torch.sort(units.cost[groups == g]).values
            total += int(costs[:need].sum())
    return total


def check_meets_budget(
    mask: torch.Tensor,
    costs: torch.Tensor,
    budget: int,
    groups: torch.Tensor | None = None,
    minimum: torch.Tensor | None = None,
) -> None:
    """Raise ``BudgetError`` unless ``mask`` meets ``budget`` exactly and holds the minimums.

    Exactly: kept cost <= budget, and every dropped unit costs more than what is left over.
    """
    mask = mask.bool()
    kept = int(costs[mask].sum())
    if kept > budget:
        raise BudgetError(f"mask keeps cost {kept:,} > budget {budget:,}")
    dropped = costs[~mask]
    if dropped.numel() and int(dropped.min()) <= budget - kept:
        raise BudgetError(
            f"mask is not tight: a dropped unit of cost {int(dropped.min()):,} still fits in the "
            f"{budget - kept:,} left of budget {budget:,}"
        )
    if groups is not None and minimum is not None:
        counts = torch.bincount(groups[mask], minlength=len(minimum))
        short = torch.nonzero(counts < minimum).flatten()
        if short.numel():
            g = int(short[0])
            raise BudgetError(f"group {g} keeps {int(counts[g])} units, below its minimum {int(minimum[g])}")
