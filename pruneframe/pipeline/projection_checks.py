"""A projection's inputs, checked: scores, costs and groups, the per-group minimum and width rounding, the budget.

Every check raises ``ValueError`` naming what is malformed (:class:`BudgetError` for a budget no mask
can meet), so :func:`pruneframe.pipeline.projection.project` and its helpers work on validated int64
and float64 tensors only.
"""

from __future__ import annotations

import operator

import torch

__all__ = [
    "BudgetError",
    "as_budget",
    "as_per_group",
    "check_minimum",
    "check_round_to",
    "check_units",
    "rounded_minimum",
    "single_cost_groups",
    "validate_inputs",
]


class BudgetError(ValueError):
    """The budget is infeasible: it is below the cost of the mandatory per-group minimum."""


def check_units(scores: torch.Tensor, costs: torch.Tensor, groups: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate scores, costs and groups; return float64 scores and the groups (zeros for None)."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or not torch.is_floating_point(scores):
        raise ValueError("scores must be a 1-D floating-point tensor")
    n = scores.numel()
    if bool(torch.isnan(scores).any()):
        raise ValueError(f"scores contain NaN (first at index {int(torch.isnan(scores).nonzero()[0, 0])})")
    if not isinstance(costs, torch.Tensor) or costs.dim() != 1 or costs.dtype != torch.int64:
        raise ValueError("costs must be a 1-D int64 tensor")
    if costs.numel() != n:
        raise ValueError(f"costs has {costs.numel()} entries but scores has {n}")
    if bool((costs <= 0).any()):
        i = int((costs <= 0).nonzero()[0, 0])
        raise ValueError(f"costs must be > 0 (index {i} has cost {int(costs[i])})")
    if groups is None:
        return scores.to(torch.float64), torch.zeros(n, dtype=torch.int64, device=scores.device)
    if not isinstance(groups, torch.Tensor) or groups.dim() != 1 or groups.dtype != torch.int64:
        raise ValueError("groups must be a 1-D int64 tensor")
    if groups.numel() != n:
        raise ValueError(f"groups has {groups.numel()} entries but scores has {n}")
    if n and int(groups.min()) < 0:
        raise ValueError("group ids must be >= 0")
    return scores.to(torch.float64), groups


def as_per_group(name: str, value: torch.Tensor | int, top: int, device: torch.device) -> torch.Tensor:
    """``value`` (an int for every group, or a 1-D int tensor) as an int64 tensor of >= ``top`` entries."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        if value.dim() > 1 or value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
            raise ValueError(f"{name} must be an int or a 1-D int tensor with one entry per group")
        if top > value.numel():
            raise ValueError(f"group id {top - 1} out of range for a {name} of length {value.numel()}")
        return value.to(device=device, dtype=torch.int64)
    try:
        number = operator.index(value.item() if isinstance(value, torch.Tensor) else value)
    except TypeError:
        raise ValueError(f"{name} must be an int or a 1-D int tensor, got {value!r}") from None
    return torch.full((top,), number, dtype=torch.int64, device=device)


def check_minimum(minimum: torch.Tensor | int | None, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``minimum`` against the groups; return it per group (int64) and the group sizes."""
    top = int(groups.max()) + 1 if groups.numel() else 0
    if minimum is None:  # one unit in every non-empty group
        counts = torch.bincount(groups, minlength=top)
        return counts.clamp(max=1), counts
    minimum = as_per_group("minimum", minimum, top, groups.device)
    counts = torch.bincount(groups, minlength=minimum.numel())
    if bool((minimum < 0).any()):
        raise ValueError(f"minimum must be >= 0 (group {int((minimum < 0).nonzero()[0, 0])})")
    if bool((minimum > counts).any()):
        g = int((minimum > counts).nonzero()[0, 0])
        raise ValueError(f"minimum {int(minimum[g])} of group {g} exceeds its size {int(counts[g])}")
    return minimum, counts


def check_round_to(round_to: torch.Tensor | int | None, costs: torch.Tensor, groups: torch.Tensor, counts: torch.Tensor) -> torch.Tensor | None:
    """Validate ``round_to``; return it per group (int64), or None when no group is rounded."""
    if round_to is None:
        return None
    r = as_per_group("round_to", round_to, counts.numel(), groups.device)
    if bool((r < 1).any()):
        g = int((r < 1).nonzero()[0, 0])
        raise ValueError(f"round_to must be >= 1 (group {g} has {int(r[g])}); 1 means no rounding")
    r = r[: counts.numel()]
    rounded = (r > 1) & (counts > 1)
    if not bool(rounded.any()):
        return None
    mixed = rounded & ~single_cost_groups(costs, groups, counts.numel())
    if bool(mixed.any()):
        g = int(mixed.nonzero()[0, 0])
        raise ValueError(f"round_to needs one unit cost per rounded group: group {g} has units of different costs (set its round_to to 1)")
    return r


def rounded_minimum(minimum: torch.Tensor, counts: torch.Tensor, round_to: torch.Tensor | None) -> torch.Tensor:
    """``minimum`` rounded up to an admissible width: the next multiple of ``round_to``, or the group size."""
    if round_to is None:
        return minimum
    r = round_to[: minimum.numel()]
    return torch.minimum(torch.div(minimum + r - 1, r, rounding_mode="floor") * r, counts[: minimum.numel()])


def as_budget(budget: int) -> int:
    """``budget`` as a Python int (a one-element integer tensor is accepted); a negative one is a :class:`BudgetError`."""
    if isinstance(budget, torch.Tensor) and budget.numel() == 1 and not torch.is_floating_point(budget):
        budget = budget.item()
    try:
        value = operator.index(budget)
    except TypeError:
        raise ValueError(f"budget must be an int, got {type(budget).__name__}") from None
    if value < 0:
        raise BudgetError(f"budget {value} is infeasible: allowed budgets are >= 0 (and >= the minimum's cost)")
    return value


def validate_inputs(
    scores: torch.Tensor, costs: torch.Tensor, groups: torch.Tensor | None, minimum: torch.Tensor | int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check the inputs; return float64 scores, groups, per-group minimum and group sizes."""
    scores, groups = check_units(scores, costs, groups)
    return (scores, groups, *check_minimum(minimum, groups))


# The last few (costs, groups, per-group single cost): a training loop projects the same units, and
# their blocks, on every step.
_single_cost_cache: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

_SINGLE_COST_CACHE_SIZE = 4


def single_cost_groups(costs: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Per group: all its units cost the same (True for empty groups)."""
    for c, g, single in _single_cost_cache:
        if single.numel() == num_groups and c.shape == costs.shape and c.device == costs.device and torch.equal(c, costs) and torch.equal(g, groups):
            return single
    lo = torch.zeros(num_groups, dtype=torch.int64, device=costs.device)
    lo = lo.scatter_reduce(0, groups, costs, "amin", include_self=False)
    single = lo == lo.scatter_reduce(0, groups, costs, "amax", include_self=False)
    _single_cost_cache.append((costs.clone(), groups.clone(), single))
    del _single_cost_cache[:-_SINGLE_COST_CACHE_SIZE]
    return single
