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
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["BudgetError", "Policy", "Scope", "forced_units", "project", "rounded_minimum", "tie_break_order"]

Policy = Literal["rank", "density", "optimal"]
Scope = Literal["global", "uniform"]
OrderKey = Literal["score", "density"]

# After this many vectorised rounds of the greedy walk, finish it with a plain loop (bounds the
# worst case, which needs many distinct costs, to O(N * _MAX_ROUNDS)).
_MAX_ROUNDS = 64


class BudgetError(ValueError):
    """The budget is infeasible: it is below the cost of the mandatory per-group minimum."""


def _check_units(scores: torch.Tensor, costs: torch.Tensor, groups: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
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


def _per_group(name: str, value: torch.Tensor | int, top: int, device: torch.device) -> torch.Tensor:
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


def _check_minimum(minimum: torch.Tensor | int | None, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``minimum`` against the groups; return it per group (int64) and the group sizes."""
    top = int(groups.max()) + 1 if groups.numel() else 0
    if minimum is None:  # one unit in every non-empty group
        counts = torch.bincount(groups, minlength=top)
        return counts.clamp(max=1), counts
    minimum = _per_group("minimum", minimum, top, groups.device)
    counts = torch.bincount(groups, minlength=minimum.numel())
    if bool((minimum < 0).any()):
        raise ValueError(f"minimum must be >= 0 (group {int((minimum < 0).nonzero()[0, 0])})")
    if bool((minimum > counts).any()):
        g = int((minimum > counts).nonzero()[0, 0])
        raise ValueError(f"minimum {int(minimum[g])} of group {g} exceeds its size {int(counts[g])}")
    return minimum, counts


def _check_round_to(round_to: torch.Tensor | int | None, costs: torch.Tensor, groups: torch.Tensor, counts: torch.Tensor) -> torch.Tensor | None:
    """Validate ``round_to``; return it per group (int64), or None when no group is rounded."""
    if round_to is None:
        return None
    r = _per_group("round_to", round_to, counts.numel(), groups.device)
    if bool((r < 1).any()):
        g = int((r < 1).nonzero()[0, 0])
        raise ValueError(f"round_to must be >= 1 (group {g} has {int(r[g])}); 1 means no rounding")
    r = r[: counts.numel()]
    rounded = (r > 1) & (counts > 1)
    if not bool(rounded.any()):
        return None
    mixed = rounded & ~_single_cost(costs, groups, counts.numel())
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


def _group_fractions(groups: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(position_in_group + 0.5) / group_size`` of every unit in group-major order, and that order
    (``None`` when the groups are already contiguous and ascending)."""
    contiguous = groups.numel() < 2 or bool((groups[1:] >= groups[:-1]).all())
    by_group = None if contiguous else torch.sort(groups, stable=True).indices
    g = groups if by_group is None else groups.index_select(0, by_group)
    pos = torch.arange(groups.numel(), device=groups.device) - (torch.cumsum(counts, 0) - counts).index_select(0, g)
    return (pos.to(torch.float64) + 0.5) / counts.index_select(0, g).to(torch.float64), by_group


def _order_by_fraction(frac: torch.Tensor) -> torch.Tensor:
    """Stable ascending order of positive fractions (their int64 bits sort like them, and faster)."""
    return torch.sort(frac.view(torch.int64), stable=True).indices


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
    frac, by_group = _group_fractions(groups, counts)
    order = _order_by_fraction(frac)
    return order if by_group is None else by_group.index_select(0, order)


@dataclass
class _Ties:
    """The tie-break of one ``groups`` tensor: the order, and every unit's fraction (input order)."""

    order: torch.Tensor
    frac: torch.Tensor


_tie_cache: tuple[torch.Tensor, _Ties] | None = None


def _cached_ties(groups: torch.Tensor, counts: torch.Tensor) -> _Ties:
    """The tie-break, remembered for the last ``groups`` (the same every training step)."""
    global _tie_cache
    cached = _tie_cache
    if cached is not None and cached[0].shape == groups.shape and cached[0].device == groups.device:
        if torch.equal(cached[0], groups):
            return cached[1]
    frac, by_group = _group_fractions(groups, counts)
    order = _order_by_fraction(frac)
    if by_group is not None:
        order = by_group.index_select(0, order)
        frac = torch.empty_like(frac).index_copy_(0, by_group, frac)
    ties = _Ties(order, frac)
    _tie_cache = (groups.clone(), ties)
    return ties


def _descending_bits(key: torch.Tensor) -> torch.Tensor:
    """Integers whose ascending order is the descending order of ``key`` (-0.0 ties with 0.0).

    float32 keys give int32 (half the radix-sort passes of float64); ``0.0 - x`` is never -0.0.
    """
    kind, flip = (torch.int32, 0x7FFFFFFF) if key.dtype == torch.float32 else (torch.int64, 0x7FFFFFFFFFFFFFFF)
    bits = (0.0 - key).view(kind)
    return torch.where(bits < 0, bits ^ flip, bits)


def _walk_order(key: torch.Tensor, tie_order: torch.Tensor) -> torch.Tensor:
    """Units by descending key, ties in ``tie_order``."""
    bits = _descending_bits(key.index_select(0, tie_order))
    return tie_order.index_select(0, torch.sort(bits, stable=True).indices)


def _walk_order_lex(weight: torch.Tensor, finite: torch.Tensor, tie_order: torch.Tensor) -> torch.Tensor:
    """Items by descending ``(weight, finite)`` (lexicographic), ties in ``tie_order``."""
    order = _walk_order(finite, tie_order)
    if bool(weight.any()):
        order = order.index_select(0, torch.sort(0.0 - weight.index_select(0, order), stable=True).indices)
    return order


def _group_major(key: torch.Tensor, tie_order: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Units group by group (ascending id), each group's units by descending key, ties in ``tie_order``.

    A float32 key and the group id share one int64 radix-sort key; float64 keys take two sorts.
    """
    if key.dtype == torch.float32:
        low = _descending_bits(key.index_select(0, tie_order)).to(torch.int64) + 2**31
        packed = (groups.index_select(0, tie_order) << 32) | low
        return tie_order.index_select(0, torch.sort(packed, stable=True).indices)
    order = _walk_order(key, tie_order)
    return order.index_select(0, torch.sort(groups.index_select(0, order), stable=True).indices)


def _ranks(by_rank: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """0-based rank of every unit inside its group, from the group-major order."""
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(by_rank.numel(), device=by_rank.device) - torch.repeat_interleave(starts, counts)
    return torch.empty_like(by_rank).index_copy_(0, by_rank, rank)


def _first_in_group(order: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mask of every group's first unit along ``order`` (one scatter instead of a sort)."""
    position = torch.empty_like(order).index_copy_(0, order, torch.arange(order.numel(), device=order.device))
    first = torch.full((num_groups,), order.numel(), dtype=torch.int64, device=order.device)
    first = first.scatter_reduce(0, groups, position, "amin")
    return position == first.index_select(0, groups)


def _policy_key(scores: torch.Tensor, costs: torch.Tensor, density: bool) -> torch.Tensor:
    return scores / costs.to(torch.float64) if density else scores


# The last few (costs, groups, per-group single cost): a training loop projects the same units, and
# their blocks, on every step.
_single_cost_cache: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
_SINGLE_COST_CACHE_SIZE = 4


def _single_cost(costs: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
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


def _rank_key(scores: torch.Tensor, key: torch.Tensor, density: bool, single_cost: bool) -> torch.Tensor:
    """A key that orders the units of each group like ``key``: the float32 score when that is exact.

    A score given in a 16- or 32-bit float is exact in float32; inside a group of one unit cost,
    ``score / cost`` orders (and ties) like the score.
    """
    small = scores.dtype in (torch.float32, torch.float16, torch.bfloat16)
    return scores.to(torch.float32) if small and (not density or single_cost) else key


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
    s, groups, minimum, counts = _validate(scores, costs, groups, minimum)
    minimum = rounded_minimum(minimum, counts, _check_round_to(round_to, costs, groups, counts))
    key = _policy_key(s, costs, order_key == "density")
    rank = _ranks(_group_major(key, tie_break_order(groups, counts), groups), counts)
    return rank < minimum.index_select(0, groups)


def _validate(
    scores: torch.Tensor, costs: torch.Tensor, groups: torch.Tensor | None, minimum: torch.Tensor | int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check the inputs; return float64 scores, groups, per-group minimum and group sizes."""
    scores, groups = _check_units(scores, costs, groups)
    return (scores, groups, *_check_minimum(minimum, groups))


def _greedy(
    order: torch.Tensor, forced: torch.Tensor, costs: torch.Tensor, remaining: int, closes: torch.Tensor | None = None, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """Sequential skip-and-continue walk over ``order``, vectorised; ``forced`` items are kept and
    already paid for (``remaining`` is what is left after them).

    Each round keeps the longest prefix that fits; the item after it (cost ``c``) does not fit, and
    since the remaining budget only shrinks, neither will any later item costing more than what is
    left, so those are filtered out before the next round. Rounds <= distinct costs + 1. An item
    with ``closes`` set that does not fit also drops every later item of its group (``groups``).
    """
    mask = forced.clone()
    cand = order
    c = costs.masked_fill(forced, 0).index_select(0, order)  # forced items: free, kept anyway
    for _ in range(_MAX_ROUNDS):
        if cand.numel() == 0:
            return mask
        cs = torch.cumsum(c, 0)
        p = int(torch.searchsorted(cs, cs.new_tensor([remaining]), right=True))
        mask.index_fill_(0, cand[:p], True)
        if p == cand.numel():
            return mask
        if p:
            remaining -= int(cs[p - 1])
        fits = c[p:] <= remaining  # False for the item at p
        if closes is not None:
            fits &= _not_closed(cand[p:], fits, closes, groups)
        cand, c = cand[p:][fits], c[p:][fits]
    return _greedy_loop(mask, cand, c, remaining, closes, groups)


def _not_closed(items: torch.Tensor, fits: torch.Tensor, closes: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """False for every item after a closing item of its group that does not fit."""
    g = groups.index_select(0, items)
    position = torch.arange(items.numel(), device=items.device)
    closing = ~fits & closes.index_select(0, items)
    first = torch.full((int(groups.max()) + 1,), items.numel(), dtype=torch.int64, device=items.device)
    first = first.scatter_reduce(0, g[closing], position[closing], "amin")
    return position <= first.index_select(0, g)


def _greedy_loop(
    mask: torch.Tensor, cand: torch.Tensor, c: torch.Tensor, remaining: int, closes: torch.Tensor | None, groups: torch.Tensor | None
) -> torch.Tensor:
    """The plain sequential walk that finishes :func:`_greedy` after its vectorised rounds."""
    closing = [False] * cand.numel() if closes is None else closes.index_select(0, cand).tolist()
    group = [0] * cand.numel() if groups is None else groups.index_select(0, cand).tolist()
    kept, closed = [], set()
    for i, ci, close, g in zip(cand.tolist(), c.tolist(), closing, group):
        if g in closed:
            continue
        if ci <= remaining:
            kept.append(i)
            remaining -= ci
        elif close:
            closed.add(g)
    return mask.index_fill_(0, torch.tensor(kept, dtype=torch.int64, device=mask.device), True)


def _split_inf(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lexicographic objective parts: +1/-1 for +inf/-inf keys, and the finite keys (0 for inf)."""
    n = key.numel()
    if n == 0:
        return key.clone(), key.clone()
    low, high = (float(v) for v in torch.aminmax(key))  # one pass; NaN was rejected, so inf shows here
    if math.isinf(low) or math.isinf(high):
        weight = torch.isposinf(key).to(torch.float64) - torch.isneginf(key).to(torch.float64)
        finite = torch.where(torch.isinf(key), torch.zeros_like(key), key)
        largest = float(finite.abs().max())
    else:
        weight, finite, largest = torch.zeros_like(key), key, max(-low, high)
    if largest > torch.finfo(torch.float64).max / (n + 1):
        finite = finite * 2.0 ** -math.ceil(math.log2(n + 1))  # exact rescale, sums cannot overflow
    return weight, finite


def _objective(weight: torch.Tensor, finite: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    return float(weight[mask].sum()), float(finite[mask].sum())


def _two_cost(
    weight: torch.Tensor, finite: torch.Tensor, order: torch.Tensor, forced: torch.Tensor, costs: torch.Tensor, remaining: int, a: int, b: int
) -> torch.Tensor:
    """Exact optimum when the non-forced items have at most two distinct costs ``a <= b``.

    ``order`` lists the items by descending ``(weight, finite)``. For ``k_a`` extra cost-``a``
    items, tightness forces ``k_b = min(n_b, (R - k_a a) // b)`` (and the other way round), and the
    best items of each class are its top scorers; every count of the smaller class is scored at once
    from prefix sums. Ties: larger kept cost, then smaller ``k_a``.
    """
    c = costs.masked_fill(forced, 0).index_select(0, order)  # 0: forced, already paid for
    units_a, units_b = order[c == a], (order[c == b] if b != a else order[:0])
    n_a, n_b = units_a.numel(), units_b.numel()

    def prefix(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.new_zeros(1), torch.cumsum(x, 0)])

    if n_b < n_a:  # enumerate the smaller class; the other one's count is then the largest that fits
        k_b = torch.arange(n_b + 1, device=costs.device)
        rest = remaining - k_b * b
        k_a = torch.div(rest, a, rounding_mode="floor").clamp(0, n_a)
        left = rest - k_a * a
        valid = (rest >= 0) & ((k_b == n_b) | (left < b))
    else:
        k_a = torch.arange(n_a + 1, device=costs.device)
        rest = remaining - k_a * a
        k_b = torch.div(rest, b, rounding_mode="floor").clamp(0, n_b)
        left = rest - k_b * b
        valid = (rest >= 0) & ((k_a == n_a) | (left < a))
    if bool(weight.any()):
        p = prefix(weight.index_select(0, units_a)).index_select(0, k_a) + prefix(weight.index_select(0, units_b)).index_select(0, k_b)
        valid &= p == p.masked_fill(~valid, -math.inf).max()
    s = prefix(finite.index_select(0, units_a)).index_select(0, k_a) + prefix(finite.index_select(0, units_b)).index_select(0, k_b)
    valid &= s == s.masked_fill(~valid, -math.inf).max()
    valid &= left == left.masked_fill(~valid, torch.iinfo(torch.int64).max).min()
    best = int(k_a.masked_fill(~valid, torch.iinfo(torch.int64).max).argmin())
    mask = forced.clone().index_fill_(0, units_a[: int(k_a[best])], True)
    return mask.index_fill_(0, units_b[: int(k_b[best])], True)


@dataclass
class _Items:
    """What a walk keeps or drops: units, or blocks of units of rounded groups.

    ``weight``/``finite`` are summed over an item's units (the optimal objective); ``size`` counts
    them (None: one each); ``closes`` marks items whose failure ends their group's walk. Block
    items are numbered group by group, blocks ascending.
    """

    weight: torch.Tensor
    finite: torch.Tensor
    costs: torch.Tensor
    groups: torch.Tensor
    forced: torch.Tensor
    tie_order: torch.Tensor
    num_groups: int
    size: torch.Tensor | None = None
    closes: torch.Tensor | None = None

    def walk(self, density: bool = False, total: bool = False) -> torch.Tensor:
        """Order by descending mean key (``density``: key per unit cost; ``total``: summed key)."""
        weight, finite = self.weight, self.finite
        if self.size is not None and not total:
            size = self.size.to(torch.float64)
            weight, finite = weight / size, finite / size
        if density:
            finite = self.finite / self.costs.to(torch.float64)
        order = _walk_order_lex(weight, finite, self.tie_order)
        return order if self.size is None else _in_block_order(order, self.groups)

    def greedy(self, order: torch.Tensor, remaining: int) -> torch.Tensor:
        """The skip-and-continue walk along ``order``."""
        return _greedy(order, self.forced, self.costs, remaining, self.closes, self.groups)


def _in_block_order(order: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``order`` with every group's blocks moved into block order over the group's own positions.

    Block means are non-increasing within a group in exact arithmetic; float rounding can invert two
    nearly equal ones, and a group's kept units must stay a prefix.
    """
    n = order.numel()
    position = torch.empty_like(order).index_copy_(0, order, torch.arange(n, device=order.device))
    slots = torch.sort(groups * n + position).values - groups * n
    return torch.empty_like(order).index_copy_(0, slots, torch.arange(n, device=order.device))


def _optimal(items: _Items, remaining: int, walk: torch.Tensor | None = None) -> torch.Tensor:
    """Maximum kept-key sum: exact for single-cost groups with <= 2 free costs, else best greedy.

    ``walk``: the items by descending key, when already known.
    """
    none_free = torch.iinfo(torch.int64).max
    a = int(items.costs.masked_fill(items.forced, none_free).min()) if items.costs.numel() else none_free
    if a == none_free:  # no items, or every item forced
        return items.forced.clone()
    b = int(items.costs.masked_fill(items.forced, 0).max())
    if bool(_single_cost(items.costs, items.groups, items.num_groups).all()) and bool(((items.costs == a) | (items.costs == b) | items.forced).all()):
        by_sum = walk if items.size is None and walk is not None else items.walk(total=True)
        return _two_cost(items.weight, items.finite, by_sum, items.forced, items.costs, remaining, a, b)
    by_rank = items.greedy(items.walk() if walk is None else walk, remaining)
    by_density = items.greedy(items.walk(density=True), remaining)
    better = _objective(items.weight, items.finite, by_density) > _objective(items.weight, items.finite, by_rank)
    return by_density if better else by_rank


def _blocks(
    key: torch.Tensor,
    by_rank: torch.Tensor,
    uniform: bool,
    costs: torch.Tensor,
    counts: torch.Tensor,
    minimum: torch.Tensor,
    round_to: torch.Tensor,
    frac: torch.Tensor,
) -> _Items:
    """Every group's blocks as items: ``round_to[g]`` consecutive units of ``by_rank`` (the last block
    of a group holds the rest), minimum already rounded to whole blocks."""
    device = key.device
    per_group = torch.div(counts + round_to - 1, round_to, rounding_mode="floor")
    item_groups = torch.repeat_interleave(torch.arange(counts.numel(), device=device), per_group)
    block = torch.arange(item_groups.numel(), device=device) - torch.repeat_interleave(torch.cumsum(per_group, 0) - per_group, per_group)
    r, n = round_to.index_select(0, item_groups), counts.index_select(0, item_groups)
    first_rank = block * r
    size = torch.minimum(r, n - first_rank)
    first_unit = by_rank.index_select(0, torch.cumsum(size, 0) - size)
    if uniform:  # the mean of the units' keys 1 - rank / n_g, in closed form
        finite = 1.0 - (first_rank.to(torch.float64) + (size - 1).to(torch.float64) / 2) / n.to(torch.float64)
        weight = torch.zeros_like(finite)
        finite = finite * size.to(torch.float64)
    else:
        in_order = key.index_select(0, by_rank)
        finite = torch.segment_reduce(in_order, "sum", lengths=size)
        weight = torch.zeros_like(finite)
        if not bool(torch.isfinite(finite).all()):  # infinite keys, or sums that overflow
            w, f = _split_inf(in_order)
            weight, finite = torch.segment_reduce(w, "sum", lengths=size), torch.segment_reduce(f, "sum", lengths=size)
    tie = torch.where(r == 1, frac.index_select(0, first_unit), (block.to(torch.float64) + 0.5) / per_group.index_select(0, item_groups).to(torch.float64))
    return _Items(
        weight=weight,
        finite=finite,
        costs=size * costs.index_select(0, first_unit),
        groups=item_groups,
        forced=first_rank < minimum.index_select(0, item_groups),
        tie_order=_order_by_fraction(tie),
        num_groups=counts.numel(),
        size=size,
        closes=r > 1,
    )


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
    s, groups, minimum, counts = _validate(scores, costs, groups, minimum)
    budget = _as_budget(budget)
    round_to = _check_round_to(round_to, costs, groups, counts)
    minimum = rounded_minimum(minimum, counts, round_to)
    ties = _cached_ties(groups, counts)
    density = policy == "density"
    key = _policy_key(s, costs, density)
    if scope == "global" and round_to is None:
        order = _walk_order(_rank_key(scores, key, density, False), ties.order)
        if bool((minimum <= 1).all()):  # the usual minimum: a group's first unit, without a second sort
            forced = _first_in_group(order, groups, counts.numel()) & (minimum.index_select(0, groups) == 1)
        else:
            forced = _ranks(order.index_select(0, torch.sort(groups.index_select(0, order), stable=True).indices), counts) < minimum.index_select(0, groups)
        return _finish_units(key, order, forced, costs, groups, counts, ties, budget, minimum, policy)
    single = density and bool(_single_cost(costs, groups, counts.numel()).all())
    by_rank = _group_major(_rank_key(scores, key, density, single), ties.order, groups)
    if round_to is None:
        rank = _ranks(by_rank, counts)
        forced = rank < minimum.index_select(0, groups)
        key = 1.0 - rank.to(torch.float64) / counts.index_select(0, groups).to(torch.float64)
        return _finish_units(key, _walk_order(key, ties.order), forced, costs, groups, counts, ties, budget, minimum, policy)
    items = _blocks(key, by_rank, scope == "uniform", costs, counts, minimum, round_to, ties.frac)
    remaining = _remaining(items.costs, items.forced, costs, budget, minimum, rounded=True)
    kept = _optimal(items, remaining) if policy == "optimal" else items.greedy(items.walk(), remaining)
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
    ties: _Ties,
    budget: int,
    minimum: torch.Tensor,
    policy: str,
) -> torch.Tensor:
    """The policy's walk over single units along ``order`` (descending ``key``)."""
    remaining = _remaining(costs, forced, costs, budget, minimum)
    if policy == "optimal":
        weight, finite = _split_inf(key)
        units = _Items(weight, finite, costs, groups, forced, ties.order, counts.numel())
        return _optimal(units, remaining, walk=order)
    return _greedy(order, forced, costs, remaining)
