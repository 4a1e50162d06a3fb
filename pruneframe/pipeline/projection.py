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

**Rounded widths** (``round_to``, e.g. 64 FFN channels for tensor cores): group ``g`` with
``r = round_to[g] > 1`` keeps a number of units that is a multiple of ``r`` or the whole group
(an *admissible width*), and always its best units by the policy's key (the forced minimum is
rounded up to the next admissible width). Its units, in that order, are cut into *blocks* of ``r``
(the last one holds the ``n_g mod r`` rest), and the walk keeps or drops whole blocks: a block walks
by the mean of its units' keys (for ``"density"``, with one cost per group, that is the block's
``sum(score) / sum(cost)``; for ``"uniform"``, ``1 - mean rank / n_g``), a group's blocks are walked
in block order (even where float rounding makes two nearly equal means swap), and a group takes no
block after one of its blocks did not fit, so its kept units stay a prefix. ``"optimal"``
maximises the kept-key sum over blocks, exactly when each rounded group's width is a multiple of
``r`` and the blocks have at most two costs. A rounded group must have one unit cost (every FFN
channel of a layer costs the same). Groups with ``r = 1`` behave as without rounding, and without
any ``r > 1`` the result is the unrounded mask. **Meets the budget exactly** then reads: kept cost
``<= budget`` and no admissible addition fits in what is left: for a rounded group short of full
width, its next block (``min(r, n_g - kept_g)`` units) costs more than ``budget - kept_cost``; for
a group with ``r = 1``, every dropped unit does. What is left is thus less than the cheapest such
addition (at most one block), never negative.

**Tie-break** (deterministic: same inputs, same mask): units with equal key are ordered by their
fractional position inside their group, ``(position_in_group + 0.5) / group_size`` ascending
(``position_in_group``: order of appearance among the group's units in the input), then by group
id, then by global index. When all scores tie (e.g. a gate-learning method at step 0, every gate
initialised equal) a walk then keeps about the same fraction of every layer and kind instead of
cutting the first layers to their minimum. Keys are float64; ``-0.0`` ties with ``0.0``. Blocks of
a rounded group tie by ``(block + 0.5) / blocks_in_group`` in place of the unit fraction.

**Infinite scores** are allowed. ``"optimal"`` compares kept sets lexicographically: first by
#kept ``+inf`` minus #kept ``-inf``, then by the float64 sum of the finite scores (rescaled by an
exact power of two if a sum could overflow); with scores spanning many orders of magnitude the
optimum is exact up to float64 rounding of those sums. A block's walk key is lexicographic the same
way: its mean of ``+1``/``-1`` per ``+inf``/``-inf`` unit first, then its mean finite key.

This module composes the pieces: the input checks (:mod:`~pruneframe.pipeline.projection_checks`), the
orders (:mod:`~pruneframe.pipeline.projection_order`) and the walks (:mod:`~pruneframe.pipeline.projection_walks`).
"""

from __future__ import annotations

from typing import Literal

import torch

from pruneframe.pipeline.projection_checks import (
    BudgetError,
    as_budget,
    check_round_to,
    rounded_minimum,
    single_cost_groups,
    validate_inputs,
)
from pruneframe.pipeline.projection_order import (
    Ties,
    cached_ties,
    first_in_group,
    group_major,
    group_ranks,
    policy_key,
    rank_key,
    tie_break_order,
    walk_order,
)
from pruneframe.pipeline.projection_walks import Items, block_items, greedy_walk, optimal_walk, split_inf

__all__ = ["BudgetError", "Policy", "Scope", "forced_units", "project", "rounded_minimum", "tie_break_order"]


Policy = Literal["rank", "density", "optimal"]

Scope = Literal["global", "uniform"]

OrderKey = Literal["score", "density"]


def forced_units(
    scores: torch.Tensor,
    costs: torch.Tensor,
    groups: torch.Tensor | None,
    minimum: torch.Tensor | int | None,
    order_key: OrderKey = "score",
    round_to: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Boolean mask of the forced minimum: the ``minimum[g]`` best units of every group ``g``.

    "Best" is by descending ``order_key`` (``"score"``, or ``"density"`` = ``score / cost``) with the
    module's deterministic tie-break; with ``round_to`` the minimum is first rounded up to an
    admissible width (:func:`rounded_minimum`). Inputs are validated as in :func:`project`.
    """
    if order_key not in ("score", "density"):
        raise ValueError(f"unknown order_key {order_key!r}")
    s, groups, minimum, counts = validate_inputs(scores, costs, groups, minimum)
    minimum = rounded_minimum(minimum, counts, check_round_to(round_to, costs, groups, counts))
    key = policy_key(s, costs, order_key == "density")
    rank = group_ranks(group_major(key, tie_break_order(groups, counts), groups), counts)
    return rank < minimum.index_select(0, groups)


def project(
    scores: torch.Tensor,
    costs: torch.Tensor,
    budget: int,
    *,
    groups: torch.Tensor | None = None,
    minimum: torch.Tensor | int | None = None,
    policy: Policy = "rank",
    scope: Scope = "global",
    round_to: torch.Tensor | int | None = None,
) -> torch.Tensor:
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
        round_to: per group, keep a multiple of this many units (or the whole group): a length-``G``
            int tensor, or an int for every group; ``None`` or 1 = any count.

    Returns:
        Boolean mask of shape ``[N]``: True = keep.

    Raises:
        BudgetError: the forced minimum alone costs more than ``budget``.
        ValueError: malformed inputs (NaN score, cost <= 0, shape mismatch, bad minimum, a rounded
            group with more than one unit cost...).
    """
    if policy not in ("rank", "density", "optimal"):
        raise ValueError(f"unknown policy {policy!r}")
    if scope not in ("global", "uniform"):
        raise ValueError(f"unknown scope {scope!r}")
    s, groups, minimum, counts = validate_inputs(scores, costs, groups, minimum)
    budget = as_budget(budget)
    round_to = check_round_to(round_to, costs, groups, counts)
    minimum = rounded_minimum(minimum, counts, round_to)
    ties = cached_ties(groups, counts)
    density = policy == "density"
    key = policy_key(s, costs, density)
    if scope == "global" and round_to is None:
        order = walk_order(rank_key(scores, key, density, False), ties.order)
        if bool((minimum <= 1).all()):  # the usual minimum: a group's first unit, without a second sort
            forced = first_in_group(order, groups, counts.numel()) & (minimum.index_select(0, groups) == 1)
        else:
            by_group = order.index_select(0, torch.sort(groups.index_select(0, order), stable=True).indices)
            forced = group_ranks(by_group, counts) < minimum.index_select(0, groups)
        return _finish_units(key, order, forced, costs, groups, counts, ties, budget, minimum, policy)
    single = density and bool(single_cost_groups(costs, groups, counts.numel()).all())
    by_rank = group_major(rank_key(scores, key, density, single), ties.order, groups)
    if round_to is None:
        rank = group_ranks(by_rank, counts)
        forced = rank < minimum.index_select(0, groups)
        key = 1.0 - rank.to(torch.float64) / counts.index_select(0, groups).to(torch.float64)
        return _finish_units(key, walk_order(key, ties.order), forced, costs, groups, counts, ties, budget, minimum, policy)
    items = block_items(key, by_rank, scope == "uniform", costs, counts, minimum, round_to, ties.frac)
    remaining = _remaining(items.costs, items.forced, costs, budget, minimum, rounded=True)
    kept = optimal_walk(items, remaining) if policy == "optimal" else items.greedy(items.walk(), remaining)
    mask = torch.empty(by_rank.shape, dtype=torch.bool, device=kept.device)
    return mask.index_copy_(0, by_rank, torch.repeat_interleave(kept, items.size))


def _remaining(item_costs: torch.Tensor, forced: torch.Tensor, costs: torch.Tensor, budget: int, minimum: torch.Tensor, rounded: bool = False) -> int:
    """Budget left after the forced items; raises :class:`BudgetError` when they do not fit."""
    forced_cost = int((item_costs * forced).sum())
    if forced_cost > budget:
        how = ", rounded up to multiples of round_to" if rounded else ""
        raise BudgetError(
            f"budget {budget} is infeasible: the per-group minimum ({int(minimum.sum())} units{how}) costs "
            f"{forced_cost}; allowed budgets are >= {forced_cost} (or lower the minimum)"
        )
    return min(budget, int(costs.sum())) - forced_cost


def _finish_units(
    key: torch.Tensor,
    order: torch.Tensor,
    forced: torch.Tensor,
    costs: torch.Tensor,
    groups: torch.Tensor,
    counts: torch.Tensor,
    ties: Ties,
    budget: int,
    minimum: torch.Tensor,
    policy: str,
) -> torch.Tensor:
    """The policy's walk over single units along ``order`` (descending ``key``)."""
    remaining = _remaining(costs, forced, costs, budget, minimum)
    if policy == "optimal":
        weight, finite = split_inf(key)
        units = Items(weight, finite, costs, groups, forced, ties.order, counts.numel())
        return optimal_walk(units, remaining, walk=order)
    return greedy_walk(order, forced, costs, remaining)
