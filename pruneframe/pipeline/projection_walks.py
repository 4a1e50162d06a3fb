"""The walks that turn ordered items into a keep mask: the greedy skip-and-continue walk and the exact optimum.

Items are units, or blocks of units of rounded groups (:func:`block_items`); :class:`Items` holds what a
walk needs. See :mod:`pruneframe.pipeline.projection` for what each policy guarantees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pruneframe.pipeline.projection_checks import single_cost_groups
from pruneframe.pipeline.projection_order import order_by_fraction, walk_order_lex

__all__ = ["Items", "block_items", "greedy_loop", "greedy_walk", "in_block_order", "not_closed", "objective", "optimal_walk", "split_inf", "two_cost"]


# After this many vectorised rounds of the greedy walk, finish it with a plain loop (bounds the
# worst case, which needs many distinct costs, to O(N * _MAX_ROUNDS)).
_MAX_ROUNDS = 64


def greedy_walk(
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
            fits &= not_closed(cand[p:], fits, closes, groups)
        cand, c = cand[p:][fits], c[p:][fits]
    return greedy_loop(mask, cand, c, remaining, closes, groups)


def not_closed(items: torch.Tensor, fits: torch.Tensor, closes: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """False for every item after a closing item of its group that does not fit."""
    g = groups.index_select(0, items)
    position = torch.arange(items.numel(), device=items.device)
    closing = ~fits & closes.index_select(0, items)
    first = torch.full((int(groups.max()) + 1,), items.numel(), dtype=torch.int64, device=items.device)
    first = first.scatter_reduce(0, g[closing], position[closing], "amin")
    return position <= first.index_select(0, g)


def greedy_loop(
    mask: torch.Tensor, cand: torch.Tensor, c: torch.Tensor, remaining: int, closes: torch.Tensor | None, groups: torch.Tensor | None
) -> torch.Tensor:
    """The plain sequential walk that finishes :func:`greedy_walk` after its vectorised rounds."""
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


def split_inf(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def objective(weight: torch.Tensor, finite: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """The kept items' objective, compared lexicographically: summed infinity weights, then summed finite keys."""
    return float(weight[mask].sum()), float(finite[mask].sum())


def two_cost(
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
class Items:
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
        order = walk_order_lex(weight, finite, self.tie_order)
        return order if self.size is None else in_block_order(order, self.groups)

    def greedy(self, order: torch.Tensor, remaining: int) -> torch.Tensor:
        """The skip-and-continue walk along ``order``."""
        return greedy_walk(order, self.forced, self.costs, remaining, self.closes, self.groups)


def in_block_order(order: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``order`` with every group's blocks moved into block order over the group's own positions.

    Block means are non-increasing within a group in exact arithmetic; float rounding can invert two
    nearly equal ones, and a group's kept units must stay a prefix.
    """
    n = order.numel()
    position = torch.empty_like(order).index_copy_(0, order, torch.arange(n, device=order.device))
    slots = torch.sort(groups * n + position).values - groups * n
    return torch.empty_like(order).index_copy_(0, slots, torch.arange(n, device=order.device))


def optimal_walk(items: Items, remaining: int, walk: torch.Tensor | None = None) -> torch.Tensor:
    """Maximum kept-key sum: exact for single-cost groups with <= 2 free costs, else best greedy.

    ``walk``: the items by descending key, when already known.
    """
    none_free = torch.iinfo(torch.int64).max
    a = int(items.costs.masked_fill(items.forced, none_free).min()) if items.costs.numel() else none_free
    if a == none_free:  # no items, or every item forced
        return items.forced.clone()
    b = int(items.costs.masked_fill(items.forced, 0).max())
    if bool(single_cost_groups(items.costs, items.groups, items.num_groups).all()) and bool(((items.costs == a) | (items.costs == b) | items.forced).all()):
        by_sum = walk if items.size is None and walk is not None else items.walk(total=True)
        return two_cost(items.weight, items.finite, by_sum, items.forced, items.costs, remaining, a, b)
    by_rank = items.greedy(items.walk() if walk is None else walk, remaining)
    by_density = items.greedy(items.walk(density=True), remaining)
    better = objective(items.weight, items.finite, by_density) > objective(items.weight, items.finite, by_rank)
    return by_density if better else by_rank


def block_items(
    key: torch.Tensor,
    by_rank: torch.Tensor,
    uniform: bool,
    costs: torch.Tensor,
    counts: torch.Tensor,
    minimum: torch.Tensor,
    round_to: torch.Tensor,
    frac: torch.Tensor,
) -> Items:
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
            w, f = split_inf(in_order)
            weight, finite = torch.segment_reduce(w, "sum", lengths=size), torch.segment_reduce(f, "sum", lengths=size)
    tie = torch.where(r == 1, frac.index_select(0, first_unit), (block.to(torch.float64) + 0.5) / per_group.index_select(0, item_groups).to(torch.float64))
    return Items(
        weight=weight,
        finite=finite,
        costs=size * costs.index_select(0, first_unit),
        groups=item_groups,
        forced=first_rank < minimum.index_select(0, item_groups),
        tie_order=order_by_fraction(tie),
        num_groups=counts.numel(),
        size=size,
        closes=r > 1,
    )
