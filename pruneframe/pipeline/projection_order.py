"""The orders a projection walks in: the deterministic tie-break, descending keys, ranks inside groups.

Sorts only (radix sorts of integer bit patterns where they are exact and faster); see
:mod:`pruneframe.pipeline.projection` for the tie-break they implement.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "Ties",
    "cached_ties",
    "descending_bits",
    "first_in_group",
    "group_fractions",
    "group_major",
    "group_ranks",
    "order_by_fraction",
    "policy_key",
    "rank_key",
    "tie_break_order",
    "walk_order",
    "walk_order_lex",
]


def group_fractions(groups: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(position_in_group + 0.5) / group_size`` of every unit in group-major order, and that order
    (``None`` when the groups are already contiguous and ascending)."""
    contiguous = groups.numel() < 2 or bool((groups[1:] >= groups[:-1]).all())
    by_group = None if contiguous else torch.sort(groups, stable=True).indices
    g = groups if by_group is None else groups.index_select(0, by_group)
    pos = torch.arange(groups.numel(), device=groups.device) - (torch.cumsum(counts, 0) - counts).index_select(0, g)
    return (pos.to(torch.float64) + 0.5) / counts.index_select(0, g).to(torch.float64), by_group


def order_by_fraction(frac: torch.Tensor) -> torch.Tensor:
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
    frac, by_group = group_fractions(groups, counts)
    order = order_by_fraction(frac)
    return order if by_group is None else by_group.index_select(0, order)


@dataclass
class Ties:
    """The tie-break of one ``groups`` tensor: the order, and every unit's fraction (input order)."""

    order: torch.Tensor
    frac: torch.Tensor


_tie_cache: tuple[torch.Tensor, Ties] | None = None


def cached_ties(groups: torch.Tensor, counts: torch.Tensor) -> Ties:
    """The tie-break, remembered for the last ``groups`` (the same every training step)."""
    global _tie_cache
    cached = _tie_cache
    if cached is not None and cached[0].shape == groups.shape and cached[0].device == groups.device:
        if torch.equal(cached[0], groups):
            return cached[1]
    frac, by_group = group_fractions(groups, counts)
    order = order_by_fraction(frac)
    if by_group is not None:
        order = by_group.index_select(0, order)
        frac = torch.empty_like(frac).index_copy_(0, by_group, frac)
    ties = Ties(order, frac)
    _tie_cache = (groups.clone(), ties)
    return ties


def descending_bits(key: torch.Tensor) -> torch.Tensor:
    """Integers whose ascending order is the descending order of ``key`` (-0.0 ties with 0.0).

    float32 keys give int32 (half the radix-sort passes of float64); ``0.0 - x`` is never -0.0.
    """
    kind, flip = (torch.int32, 0x7FFFFFFF) if key.dtype == torch.float32 else (torch.int64, 0x7FFFFFFFFFFFFFFF)
    bits = (0.0 - key).view(kind)
    return torch.where(bits < 0, bits ^ flip, bits)


def walk_order(key: torch.Tensor, tie_order: torch.Tensor) -> torch.Tensor:
    """Units by descending key, ties in ``tie_order``."""
    bits = descending_bits(key.index_select(0, tie_order))
    return tie_order.index_select(0, torch.sort(bits, stable=True).indices)


def walk_order_lex(weight: torch.Tensor, finite: torch.Tensor, tie_order: torch.Tensor) -> torch.Tensor:
    """Items by descending ``(weight, finite)`` (lexicographic), ties in ``tie_order``."""
    order = walk_order(finite, tie_order)
    if bool(weight.any()):
        order = order.index_select(0, torch.sort(0.0 - weight.index_select(0, order), stable=True).indices)
    return order


def group_major(key: torch.Tensor, tie_order: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Units group by group (ascending id), each group's units by descending key, ties in ``tie_order``.

    A float32 key and the group id share one int64 radix-sort key; float64 keys take two sorts.
    """
    if key.dtype == torch.float32:
        low = descending_bits(key.index_select(0, tie_order)).to(torch.int64) + 2**31
        packed = (groups.index_select(0, tie_order) << 32) | low
        return tie_order.index_select(0, torch.sort(packed, stable=True).indices)
    order = walk_order(key, tie_order)
    return order.index_select(0, torch.sort(groups.index_select(0, order), stable=True).indices)


def group_ranks(by_rank: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """0-based rank of every unit inside its group, from the group-major order."""
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(by_rank.numel(), device=by_rank.device) - torch.repeat_interleave(starts, counts)
    return torch.empty_like(by_rank).index_copy_(0, by_rank, rank)


def first_in_group(order: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mask of every group's first unit along ``order`` (one scatter instead of a sort)."""
    position = torch.empty_like(order).index_copy_(0, order, torch.arange(order.numel(), device=order.device))
    first = torch.full((num_groups,), order.numel(), dtype=torch.int64, device=order.device)
    first = first.scatter_reduce(0, groups, position, "amin")
    return position == first.index_select(0, groups)


def policy_key(scores: torch.Tensor, costs: torch.Tensor, density: bool) -> torch.Tensor:
    """The key a policy walks by: ``score / cost`` for ``density``, else the score."""
    return scores / costs.to(torch.float64) if density else scores


def rank_key(scores: torch.Tensor, key: torch.Tensor, density: bool, single_cost: bool) -> torch.Tensor:
    """A key that orders the units of each group like ``key``: the float32 score when that is exact.

    A score given in a 16- or 32-bit float is exact in float32; inside a group of one unit cost,
    ``score / cost`` orders (and ties) like the score.
    """
    small = scores.dtype in (torch.float32, torch.float16, torch.bfloat16)
    return scores.to(torch.float32) if small and (not density or single_cost) else key
