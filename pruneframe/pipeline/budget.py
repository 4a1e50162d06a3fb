"""Budgets: how much of a model to keep, as a typed value resolved against a model's units.

Three conventions, one per paper family:

* ``prunable``: keep-ratio of the prunable (FFN + attention) parameters, GRASPrune's convention;
* ``total``: keep-ratio of all parameters, LLM-Pruner's ("remove 20% of parameters" is ``keep=0.8``);
* ``params``: an absolute number of parameters to keep.

Every budget resolves to one integer, the largest summed cost of kept units, which is what the
projector (:func:`project`, re-exported here) meets exactly. With a method's ``round_to`` (kept FFN
channels of every layer a multiple of it; KV groups are whole anyway), :func:`group_round_to` gives
the projector its per-group rounding and "exactly" reads as in :mod:`pruneframe.pipeline.projection`.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from pruneframe.pipeline.projection import BudgetError, project, rounded_minimum
from pruneframe.pipeline.removal import check_removal
from pruneframe.pipeline.units import UnitKind, UnitSet

__all__ = [
    "Budget",
    "BudgetKind",
    "KeepPrunable",
    "KeepTotal",
    "KeepParams",
    "BudgetError",
    "project",
    "make_budget",
    "resolve",
    "check_meets_budget",
    "check_mask",
    "mandatory_cost",
    "group_round_to",
]

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
        ValueError: with what was wrong and what is allowed (``BudgetError``, or pydantic's ``ValidationError``).
    """
    if isinstance(value, _BudgetBase):
        return value
    if isinstance(value, dict):
        return _adapter.validate_python(value)
    if kind == "params":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
            raise BudgetError(f"a 'params' budget is a whole number of parameters, got {value!r}")
        return KeepParams(params=int(value))
    if kind not in ("prunable", "total"):
        raise BudgetError(f"budget kind must be one of prunable, total, params; got {kind!r}")
    return _adapter.validate_python({"kind": kind, "keep": value})


def group_round_to(units: UnitSet, round_to: int | None) -> torch.Tensor | None:
    """Per projection group, the multiple its kept width must be: ``round_to`` for every layer's FFN
    channels, 1 for its KV groups; ``None`` when ``round_to`` is ``None`` or 1."""
    if round_to is None or round_to == 1:
        return None
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a whole number >= 1 (e.g. 64), got {round_to!r}")
    per_kind = {UnitKind.FFN: round_to, UnitKind.KV: 1}
    return torch.tensor([per_kind[kind] for _ in range(units.num_layers) for kind in (UnitKind.FFN, UnitKind.KV)], dtype=torch.long)


def resolve(
    budget: _BudgetBase, units: UnitSet, minimum: torch.Tensor | None = None, round_to: torch.Tensor | None = None, removable: torch.Tensor | None = None
) -> int:
    """Resolve ``budget`` against ``units`` and check it is at least the mandatory minimum.

    ``round_to``: per-group rounding (:func:`group_round_to`); the minimum is rounded up with it.
    ``removable``: per group, whether its block may be removed (a method's removal mode); those groups'
    minimums bind only while they are kept, so only the other groups' count towards the floor.

    Raises:
        BudgetError: when the budget cannot hold the per-group minimum (or is negative).
    """
    target = budget.resolve(units)
    minimum = units.default_minimum() if minimum is None else minimum
    if removable is not None:
        minimum = torch.where(removable, 0, minimum)
    floor = mandatory_cost(units, minimum, round_to)
    if target < floor:
        rounded = "" if round_to is None else ", rounded up to multiples of round_to"
        raise BudgetError(
            f"budget '{budget.label()}' allows {target:,} prunable parameters, below the mandatory "
            f"minimum of {floor:,} (the cheapest units of each layer that must be kept{rounded}); allowed: "
            f"budgets from {floor + units.nonprunable_params:,} to {units.total_params:,} total parameters "
            f"(keep-ratio of prunable >= {floor / max(units.prunable_params, 1):.4g})"
        )
    return min(target, units.prunable_params)


def mandatory_cost(units: UnitSet, minimum: torch.Tensor, round_to: torch.Tensor | None = None) -> int:
    """Cost of the cheapest units that satisfy ``minimum`` (rounded up with ``round_to``) in every group."""
    groups = units.groups
    counts = torch.bincount(groups, minlength=units.num_groups)
    minimum = rounded_minimum(minimum.to(torch.long), counts, round_to)
    total = 0
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
    round_to: torch.Tensor | None = None,
) -> None:
    """Raise ``BudgetError`` unless ``mask`` meets ``budget`` exactly and holds the minimums.

    Exactly: kept cost <= budget, and every dropped unit costs more than what is left over. With
    ``round_to`` (per group, needs ``groups``): every group ``g`` with ``round_to[g] > 1`` keeps a
    multiple of it or all its units, and instead of its single units its next admissible addition
    (``min(round_to[g], n_g - kept_g)`` units) must not fit; the minimum is rounded up likewise.
    """
    mask = mask.bool()
    kept = int(costs[mask].sum())
    if kept > budget:
        raise BudgetError(f"mask keeps cost {kept:,} > budget {budget:,}")
    left = budget - kept
    rounded = None
    if round_to is not None:
        if groups is None:
            raise ValueError("check_meets_budget: round_to needs groups")
        rounded = _check_rounded(mask, costs, groups, round_to, left)
    dropped = costs[~mask] if rounded is None else costs[~mask & ~rounded.index_select(0, groups)]
    if dropped.numel() and int(dropped.min()) <= left:
        raise BudgetError(f"mask is not tight: a dropped unit of cost {int(dropped.min()):,} still fits in the {left:,} left of budget {budget:,}")
    if groups is not None and minimum is not None:
        counts = torch.bincount(groups[mask], minlength=len(minimum))
        if round_to is not None:
            minimum = rounded_minimum(minimum.to(torch.long), torch.bincount(groups, minlength=len(minimum)), round_to)
        short = torch.nonzero(counts < minimum).flatten()
        if short.numel():
            g = int(short[0])
            raise BudgetError(f"group {g} keeps {int(counts[g])} units, below its minimum {int(minimum[g])}")


def check_mask(
    mask: torch.Tensor,
    units: UnitSet,
    budget: int,
    minimum: torch.Tensor,
    round_to: torch.Tensor | None = None,
    removal: str = "none",
    removable: torch.Tensor | None = None,
) -> None:
    """The core check of a method's mask against ``units``: :func:`check_meets_budget`, or with a
    removal mode other than ``none``, :func:`pruneframe.pipeline.removal.check_removal`.

    Raises:
        BudgetError: the mask fails the check (the message says how).
    """
    if removal == "none":
        check_meets_budget(mask, units.cost, budget, groups=units.groups, minimum=minimum, round_to=round_to)
        return
    if round_to is not None:
        raise BudgetError(f"round_to cannot be combined with removal {removal!r}")
    check_removal(mask, units.cost, budget, groups=units.groups, overhead=units.overhead, removal=removal, removable=removable, minimum=minimum)


def _check_rounded(mask: torch.Tensor, costs: torch.Tensor, groups: torch.Tensor, round_to: torch.Tensor, left: int) -> torch.Tensor:
    """Check the rounded groups' widths and tightness; return which groups are rounded."""
    n = torch.bincount(groups, minlength=round_to.numel())
    kept = torch.bincount(groups[mask], minlength=round_to.numel())
    r = round_to.to(torch.long)[: n.numel()]
    rounded = (r > 1) & (n > 1)
    odd = rounded & (kept % r != 0) & (kept != n)
    if bool(odd.any()):
        g = int(odd.nonzero()[0, 0])
        raise BudgetError(f"group {g} keeps {int(kept[g])} of {int(n[g])} units, not a multiple of its round_to {int(r[g])}")
    unit_cost = torch.zeros_like(n).scatter_reduce(0, groups, costs, "amax", include_self=False)
    step = torch.minimum(r, n - kept) * unit_cost
    fits = rounded & (kept < n) & (step <= left)
    if bool(fits.any()):
        g = int(fits.nonzero()[0, 0])
        raise BudgetError(f"mask is not tight: {int(min(r[g], n[g] - kept[g]))} more units of group {g} (cost {int(step[g]):,}) still fit in the {left:,} left")
    return rounded
