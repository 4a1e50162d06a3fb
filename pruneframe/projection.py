"""Budget projection: per-unit scores in, a keep mask that meets a parameter budget exactly out.

Pure functions on torch tensors. :func:`project` runs on every training step of gate-learning
methods (N ~ 350k units), so the hot path is vectorised: sorts, cumulative sums, no per-unit loops.

* **Meets the budget exactly**: kept cost ``<= budget`` and every dropped unit costs more than
  ``budget - kept_cost`` (no dropped unit would still fit).
* **Forced minimum**: group ``g`` always keeps its ``minimum[g]`` best units by the policy's key
  (score for ``"rank"`` and ``"optimal"``, ``score / cost`` for ``"density"``).
* **Policies**: ``"rank"`` walks the other units by descending score, keeping each unit that still
  fits and walking past those that do not; ``"density"`` walks by descending ``score / cost``;
  ``"optimal"`` maximises the kept-score sum over all masks that meet the budget exactly and hold
  the minimums: exact when every group has one cost and the free units at most two (the Llama case:
  FFN channels cost ``a``, KV groups ``b``), otherwise the better of the rank and density walks.
* **Scopes**: ``"global"`` uses the keys as they are; ``"uniform"`` replaces a unit's key by
  ``u = 1 - r / n_g`` (``r``: its 0-based rank inside its group by the policy's key, ``n_g``: the
  group size), so every group keeps about the same fraction (as LLM-Pruner does) while the total
  still meets the budget exactly.

**Tie-break** (deterministic: same inputs, same mask): units with equal key are ordered by their
fractional position inside their group, ``(position_in_group + 0.5) / group_size`` ascending
(``position_in_group``: order of appearance among the group's units in the input), then by group
id, then by global index. When all scores tie (e.g. a gate-learning method at step 0, every gate
initialised equal) a walk then keeps about the same fraction of every layer and kind instead of
cutting the first layers to their minimum. Keys are float64; ``-0.0`` ties with ``0.0``.

**Infinite scores** are allowed. ``"optimal"`` compares kept sets lexicographically: first by
#kept ``+inf`` minus #kept ``-inf``, then by the float64 sum of the finite scores (rescaled by an
exact power of two if a sum could overflow); with scores spanning many orders of magnitude the
optimum is exact up to float64 rounding of those sums.
"""

from __future__ import annotations

import math
import operator
from typing import Literal

import torch

__all__ = ["BudgetError", "Policy", "Scope", "forced_units", "project", "tie_break_order"]

Policy = Literal["rank", "density", "optimal"]
Scope = Literal["global", "uniform"]
OrderKey = Literal["score", "density"]

# After this many vectorised rounds of the greedy walk, finish it with a plain loop (bounds the
# worst case, which needs many distinct costs, to O(N * _MAX_ROUNDS)).
_MAX_ROUNDS = 64


class BudgetError(ValueError):
    """The budget is infeasible: it is below the cost of the mandatory per-group minimum."""


def _check_units(
    scores: torch.Tensor, costs: torch.Tensor, groups: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
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


def _check_minimum(minimum: torch.Tensor | int | None, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``minimum`` against the groups; return it per group (int64) and the group sizes."""
    top = int(groups.max()) + 1 if groups.numel() else 0
    if isinstance(minimum, torch.Tensor) and minimum.dim() > 0:
        if minimum.dim() > 1 or minimum.dtype == torch.bool or minimum.is_floating_point() or minimum.is_complex():
            raise ValueError("minimum must be an int or a 1-D int tensor with one entry per group")
        if top > minimum.numel():
            raise ValueError(f"group id {top - 1} out of range for a minimum of length {minimum.numel()}")
        counts = torch.bincount(groups, minlength=minimum.numel())
        minimum = minimum.to(device=groups.device, dtype=torch.int64)
    else:
        counts = torch.bincount(groups, minlength=top)
        if minimum is None:  # one unit in every non-empty group
            return counts.clamp(max=1), counts
        try:
            value = operator.index(minimum.item() if isinstance(minimum, torch.Tensor) else minimum)
        except TypeError:
            raise ValueError(f"minimum must be an int or a 1-D int tensor, got {minimum!r}") from None
        minimum = torch.full((top,), value, dtype=torch.int64, device=groups.device)
    if bool((minimum < 0).any()):
        raise ValueError(f"minimum must be >= 0 (group {int((minimum < 0).nonzero()[0, 0])})")
    if bool((minimum > counts).any()):
        g = int((minimum > counts).nonzero()[0, 0])
        raise ValueError(f"minimum {int(minimum[g])} of group {g} exceeds its size {int(counts[g])}")
    return minimum, counts


def _validate(
    scores: torch.Tensor, costs: torch.Tensor, groups: torch.Tensor | None, minimum: torch.Tensor | int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check the inputs; return float64 scores, groups, per-group minimum and group sizes."""
    scores, groups = _check_units(scores, costs, groups)
    return (scores, groups, *_check_minimum(minimum, groups))


def _as_budget(budget: int) -> int:
    if isinstance(budget, torch.Tensor) and budget.numel() == 1 and not torch.is_floating_point(budget):
        budget = budget.item()
    try:
        value = operator.index(budget)
    except TypeError:
        raise ValueError(f"budget must be an int, got {type(budget).__name__}") from None
    if value < 0:
        raise BudgetError(f"budget {value} is infeasible: allowed budgets are >= 0 (and >= the minimum's cost)")
    return value


def tie_break_order(groups: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
    """Permutation of the units in tie-break order.

    Units are listed by fractional position inside their group, ``(position_in_group + 0.5) /
    group_size`` ascending, then by group id, then by global index. A stable sort by key applied to
    units in this order breaks every tie of the key the documented way.

    Args:
        groups: 1-D int64 group id per unit.
        counts: group sizes (``torch.bincount(groups)``); computed when omitted.
    """
    if counts is None:
        counts = torch.bincount(groups)
    contiguous = groups.numel() < 2 or bool((groups[1:] >= groups[:-1]).all())
    by_group = None if contiguous else torch.sort(groups, stable=True).indices
    g = groups if by_group is None else groups.index_select(0, by_group)
    pos = torch.arange(groups.numel(), device=groups.device) - (torch.cumsum(counts, 0) - counts).index_select(0, g)
    frac = (pos.to(torch.float64) + 0.5) / counts.index_select(0, g).to(torch.float64)
    order = torch.sort(frac.view(torch.int64), stable=True).indices  # frac > 0: its bits sort like it
    return order if by_group is None else by_group.index_select(0, order)


_tie_cache: tuple[torch.Tensor, torch.Tensor] | None = None


def _cached_tie_break_order(groups: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """:func:`tie_break_order`, remembered for the last ``groups`` (the same every training step)."""
    global _tie_cache
    cached = _tie_cache
    if cached is not None and cached[0].shape == groups.shape and cached[0].device == groups.device:
        if torch.equal(cached[0], groups):
            return cached[1]
    order = tie_break_order(groups, counts)
    _tie_cache = (groups.clone(), order)
    return order


def _walk_order(key: torch.Tensor, tie_order: torch.Tensor) -> torch.Tensor:
    """Units by descending key, ties in ``tie_order``."""
    bits = (0.0 - key.index_select(0, tie_order)).view(torch.int64)  # 0.0 - x: never -0.0
    # int64 with the order of the floats (int sorts are faster); ascending -key = descending key
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFFFFFFFFFF, bits)
    return tie_order.index_select(0, torch.sort(bits, stable=True).indices)


def _rank_in_group(order: torch.Tensor, groups: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """0-based rank of every unit among its group's units in ``order``."""
    g, s = torch.sort(groups.index_select(0, order), stable=True)
    rank = torch.arange(order.numel(), device=order.device) - starts.index_select(0, g)
    return torch.empty_like(order).index_copy_(0, order.index_select(0, s), rank)


def _policy_key(scores: torch.Tensor, costs: torch.Tensor, density: bool) -> torch.Tensor:
    return scores / costs.to(torch.float64) if density else scores


def _walk_and_force(
    key: torch.Tensor, tie_order: torch.Tensor, groups: torch.Tensor, counts: torch.Tensor, minimum: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Walk order by ``key``, every unit's rank inside its group, and the forced-minimum mask."""
    order = _walk_order(key, tie_order)
    rank = _rank_in_group(order, groups, torch.cumsum(counts, 0) - counts)
    return order, rank, rank < minimum.index_select(0, groups)


def forced_units(scores: torch.Tensor, costs: torch.Tensor, groups: torch.Tensor | None,
                 minimum: torch.Tensor | int | None, order_key: OrderKey = "score") -> torch.Tensor:
    """Boolean mask of the forced minimum: the ``minimum[g]`` best units of every group ``g``.

    "Best" is by descending ``order_key`` (``"score"``, or ``"density"`` = ``score / cost``) with the
    module's deterministic tie-break. Inputs are validated as in :func:`project`.
    """
    if order_key not in ("score", "density"):
        raise ValueError(f"unknown order_key {order_key!r}")
    s, groups, minimum, counts = _validate(scores, costs, groups, minimum)
    key = _policy_key(s, costs, order_key == "density")
    return _walk_and_force(key, tie_break_order(groups, counts), groups, counts, minimum)[2]


def _greedy(order: torch.Tensor, forced: torch.Tensor, costs: torch.Tensor, remaining: int) -> torch.Tensor:
    """Sequential skip-and-continue walk over the non-forced units of ``order``, vectorised.

    Each round keeps the longest prefix that fits; the unit after it (cost ``c``) does not fit, and
    since the remaining budget only shrinks, neither will any later unit costing more than what is
    left, so those are filtered out before the next round. Rounds <= distinct costs + 1.
    """
    mask = forced.clone()
    cand = order[~forced.index_select(0, order)]
    c = costs.index_select(0, cand)
    for _ in range(_MAX_ROUNDS):
        if cand.numel() == 0:
            return mask
        cs = torch.cumsum(c, 0)
        p = int((cs <= remaining).sum())
        mask.index_fill_(0, cand[:p], True)
        if p == cand.numel():
            return mask
        if p:
            remaining -= int(cs[p - 1])
        fits = c[p + 1 :] <= remaining
        cand, c = cand[p + 1 :][fits], c[p + 1 :][fits]
    kept = []
    for i, ci in zip(cand.tolist(), c.tolist()):
        if ci <= remaining:
            kept.append(i)
            remaining -= ci
    return mask.index_fill_(0, torch.tensor(kept, dtype=torch.int64, device=mask.device), True)


def _split_inf(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lexicographic objective parts: +1/-1 for +inf/-inf keys, and the finite keys (0 for inf)."""
    weight = torch.isposinf(key).to(torch.int64) - torch.isneginf(key).to(torch.int64)
    finite = torch.where(torch.isinf(key), torch.zeros_like(key), key)
    n = key.numel()
    if n and float(finite.abs().max()) > torch.finfo(torch.float64).max / (n + 1):
        finite = finite * 2.0 ** -math.ceil(math.log2(n + 1))  # exact rescale, sums cannot overflow
    return weight, finite


def _objective(key: torch.Tensor, mask: torch.Tensor) -> tuple[int, float]:
    weight, finite = _split_inf(key)
    return int(weight[mask].sum()), float(finite[mask].sum())


def _two_cost(
    key: torch.Tensor, order: torch.Tensor, forced: torch.Tensor, costs: torch.Tensor, remaining: int
) -> torch.Tensor:
    """Exact optimum when the non-forced units have at most two distinct costs ``a < b``.

    For ``k_a`` extra cost-``a`` units, tightness forces ``k_b = min(n_b, (R - k_a a) // b)``, and
    the best units of each class are its top scorers; every ``k_a`` is scored at once from prefix
    sums. Ties: larger kept cost, then smaller ``k_a``.
    """
    cand = order[~forced.index_select(0, order)]
    c = costs.index_select(0, cand)
    a = int(c.min())
    is_a = c == a
    units_a, units_b = cand[is_a], cand[~is_a]
    n_a, n_b = units_a.numel(), units_b.numel()
    b = int(c.max()) if n_b else 1
    weight, finite = _split_inf(key)

    def prefix(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.new_zeros(1), torch.cumsum(x, 0)])

    k_a = torch.arange(n_a + 1, device=key.device)
    rest = remaining - k_a * a
    k_b = torch.div(rest, b, rounding_mode="floor").clamp(0, n_b)
    left = rest - k_b * b
    valid = (rest >= 0) & ((k_a == n_a) | (left < a))
    p = prefix(weight.index_select(0, units_a)) + prefix(weight.index_select(0, units_b)).index_select(0, k_b)
    s = prefix(finite.index_select(0, units_a)) + prefix(finite.index_select(0, units_b)).index_select(0, k_b)
    valid &= p == p.masked_fill(~valid, torch.iinfo(torch.int64).min).max()
    valid &= s == s.masked_fill(~valid, -math.inf).max()
    valid &= left == left.masked_fill(~valid, torch.iinfo(torch.int64).max).min()
    best = int(valid.nonzero()[0, 0])
    mask = forced.clone().index_fill_(0, units_a[:best], True)
    return mask.index_fill_(0, units_b[: int(k_b[best])], True)


def _optimal(key: torch.Tensor, order: torch.Tensor, tie_order: torch.Tensor, forced: torch.Tensor,
             costs: torch.Tensor, groups: torch.Tensor, num_groups: int, remaining: int) -> torch.Tensor:
    """Maximum kept-key sum: exact for single-cost groups with <= 2 free costs, else best greedy."""
    free = costs[~forced]
    lo = torch.zeros(num_groups, dtype=torch.int64, device=costs.device)
    lo = lo.scatter_reduce(0, groups, costs, "amin", include_self=False)
    hi = lo.scatter_reduce(0, groups, costs, "amax", include_self=False)
    if free.numel() == 0 or (bool((lo == hi).all()) and bool(((free == free.min()) | (free == free.max())).all())):
        return _two_cost(key, order, forced, costs, remaining) if free.numel() else forced.clone()
    by_rank = _greedy(order, forced, costs, remaining)
    by_density = _greedy(_walk_order(key / costs.to(torch.float64), tie_order), forced, costs, remaining)
    return by_density if _objective(key, by_density) > _objective(key, by_rank) else by_rank


def project(scores: torch.Tensor, costs: torch.Tensor, budget: int, *, groups: torch.Tensor | None = None,
            minimum: torch.Tensor | int | None = None, policy: Policy = "rank", scope: Scope = "global") -> torch.Tensor:
    """Keep mask whose total cost meets ``budget`` exactly (see the module docstring).

    Args:
        scores: 1-D float scores, higher = more worth keeping; NaN is rejected, +-inf is allowed.
        costs: 1-D int64 cost of every unit, all > 0.
        budget: maximum total cost of the kept units, >= 0.
        groups: 1-D int64 group id in ``[0, G)`` per unit; ``None`` puts all units in one group.
        minimum: units every group must keep: a length-``G`` int tensor, or an int for every group;
            ``None`` keeps one unit in every non-empty group.
        policy: ``"rank"``, ``"density"`` or ``"optimal"``.
        scope: ``"global"`` or ``"uniform"`` (same keep fraction in every group).

    Returns:
        Boolean mask of shape ``[N]``: True = keep.

    Raises:
        BudgetError: the forced minimum alone costs more than ``budget``.
        ValueError: malformed inputs (NaN score, cost <= 0, shape mismatch, bad minimum...).
    """
    if policy not in ("rank", "density", "optimal"):
        raise ValueError(f"unknown policy {policy!r}")
    if scope not in ("global", "uniform"):
        raise ValueError(f"unknown scope {scope!r}")
    s, groups, minimum, counts = _validate(scores, costs, groups, minimum)
    budget = _as_budget(budget)
    tie_order = _cached_tie_break_order(groups, counts)
    key = _policy_key(s, costs, policy == "density")
    order, rank, forced = _walk_and_force(key, tie_order, groups, counts, minimum)
    forced_cost = int((costs * forced).sum())
    if forced_cost > budget:
        raise BudgetError(
            f"budget {budget} is infeasible: the per-group minimum ({int(minimum.sum())} units) costs "
            f"{forced_cost}; allowed budgets are >= {forced_cost} (or lower the minimum)"
        )
    if scope == "uniform":
        key = 1.0 - rank.to(torch.float64) / counts.index_select(0, groups).to(torch.float64)
        order = _walk_order(key, tie_order)
    remaining = min(budget, int(costs.sum())) - forced_cost
    if policy == "optimal":
        return _optimal(key, order, tie_order, forced, costs, groups, counts.numel(), remaining)
    return _greedy(order, forced, costs, remaining)
