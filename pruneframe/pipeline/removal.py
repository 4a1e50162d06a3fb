"""Budget projection with removable blocks: depth (whole attention / MLP blocks, whole layers) and width.

Pure functions on torch tensors, on top of :func:`~pruneframe.pipeline.projection.project`. Units are
grouped as the projector groups them (one group per layer and kind: a layer's FFN channels are its MLP
block, its KV groups its attention block). A group that keeps none of its units is a *removed block*:
it also sheds its ``overhead`` (the block's norms), so a mask spends of the budget

    ``budget_cost(mask) = sum(cost of kept units) - sum(overhead of emptied removable groups)``

(budgets count the prunable parameters with every block present; a removed block's norms are credited
back). Three removal modes besides ``"none"`` (the plain projector):

* ``"mixed"``: width and depth together. The removable groups have no minimum; the other groups keep
  theirs. Projecting the units empties some groups; their overhead is credited and the rest projected
  again, until no further group empties; then the walk adds, best key first, every dropped unit whose
  *effective cost* still fits: its cost, plus its group's overhead when that group is empty (reviving
  the block). A group empties exactly when the scores rank all its units out.
* ``"blocks"``: whole blocks only. Each group is one item costing its units plus its overhead and
  scoring the mean of its units' scores; the items are projected (each non-removable group is forced).
* ``"layers"``: whole layers only (ShortGPT): a layer's two groups are one item, likewise.

**Meets the budget exactly** then reads: ``budget_cost(mask) <= budget`` and no admissible addition
fits in what is left: in ``"mixed"`` every dropped unit's effective cost exceeds it; in ``"blocks"`` /
``"layers"`` every dropped item's full cost does (kept items are whole). :func:`check_removal` checks
that and the dependency of a block on its units.
"""

from __future__ import annotations

from typing import Literal

import torch

from pruneframe.pipeline.projection import BudgetError, Policy, Scope, project

__all__ = ["Removal", "REMOVAL_MODES", "REMOVAL_SEPARATOR", "project_removal", "check_removal", "budget_cost", "empty_groups", "item_of_group"]

Removal = Literal["none", "mixed", "blocks", "layers"]
REMOVAL_MODES: tuple[str, ...] = ("none", "mixed", "blocks", "layers")
#: ``NAME@REMOVAL`` names a method with its ``removal`` setting (``llm-pruner@mixed``).
REMOVAL_SEPARATOR = "@"


def empty_groups(mask: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Per group, whether ``mask`` keeps none of its units."""
    return torch.bincount(groups[mask.bool()], minlength=num_groups) == 0


def _unit_overhead(overhead: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``overhead`` with groups that have no units at all zeroed (a block without units is gone already)."""
    counts = torch.bincount(groups, minlength=overhead.numel())[: overhead.numel()]
    return torch.where(counts > 0, overhead, torch.zeros_like(overhead))


def budget_cost(mask: torch.Tensor, costs: torch.Tensor, groups: torch.Tensor, overhead: torch.Tensor, removable: torch.Tensor) -> int:
    """Kept unit cost minus the overhead of the removable groups ``mask`` empties (groups without units shed nothing)."""
    overhead = _unit_overhead(overhead, groups)
    empty = empty_groups(mask, groups, overhead.numel()) & removable
    return int(costs[mask.bool()].sum()) - int(overhead[empty].sum())


def item_of_group(num_groups: int, removal: Removal) -> torch.Tensor:
    """Per group, the whole item it is removed with: itself (``blocks``) or its layer (``layers``: groups ``2l, 2l+1``)."""
    ids = torch.arange(num_groups, dtype=torch.long)
    return ids // 2 if removal == "layers" else ids


def _check_inputs(costs: torch.Tensor, groups: torch.Tensor, overhead: torch.Tensor, removable: torch.Tensor, removal: str) -> None:
    if removal not in REMOVAL_MODES:
        raise ValueError(f"unknown removal mode {removal!r}; choose from {', '.join(REMOVAL_MODES)}")
    if overhead.dim() != 1 or overhead.dtype != torch.int64 or bool((overhead < 0).any()):
        raise ValueError("overhead must be a 1-D int64 tensor of values >= 0, one per group")
    if removable.shape != overhead.shape or removable.dtype != torch.bool:
        raise ValueError(f"removable must be a bool tensor of shape {tuple(overhead.shape)} (one entry per group)")
    if groups.numel() and int(groups.max()) >= overhead.numel():
        raise ValueError(f"group id {int(groups.max())} out of range for {overhead.numel()} groups")
    if removal == "layers" and overhead.numel() % 2:
        raise ValueError("removal 'layers' needs two groups per layer (FFN, KV)")


def _normalised(
    costs: torch.Tensor, groups: torch.Tensor, overhead: torch.Tensor, removal: str, removable: torch.Tensor | None, minimum: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated inputs with their defaults: ``(removable, minimum, overhead of groups that have units)``."""
    num_groups = overhead.numel()
    removable = torch.ones(num_groups, dtype=torch.bool) if removable is None else removable.bool()
    _check_inputs(costs, groups, overhead, removable, removal)
    minimum = torch.ones(num_groups, dtype=torch.long) if minimum is None else minimum.to(torch.long)
    return removable, minimum, _unit_overhead(overhead, groups)


def _items(costs: torch.Tensor, groups: torch.Tensor, overhead: torch.Tensor, removal: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whole items (blocks or layers): ``(item of each group, item of each unit, item cost = units + overhead)``."""
    item = item_of_group(overhead.numel(), removal)  # type: ignore[arg-type]
    num_items = int(item.max()) + 1 if overhead.numel() else 0
    unit_item = item.index_select(0, groups)
    item_cost = torch.zeros(num_items, dtype=torch.long).index_add_(0, unit_item, costs).index_add_(0, item, overhead)
    return item, unit_item, item_cost


def _policy_key(scores: torch.Tensor, costs: torch.Tensor, policy: Policy) -> torch.Tensor:
    key = scores.to(torch.float64)
    return key / costs.to(torch.float64) if policy == "density" else key


def _project_mixed(
    scores: torch.Tensor,
    costs: torch.Tensor,
    groups: torch.Tensor,
    overhead: torch.Tensor,
    removable: torch.Tensor,
    budget: int,
    minimum: torch.Tensor,
    policy: Policy,
    scope: Scope,
) -> torch.Tensor:
    num_groups = overhead.numel()
    if bool((minimum[removable] > 1).any()):
        raise ValueError("removal 'mixed' empties a removable group or keeps one unit or more of it: their minimum must be 0 or 1")
    free = torch.where(removable, torch.zeros_like(minimum), minimum)
    dead = removable & (torch.bincount(groups, minlength=num_groups) == 0)
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    for _ in range(num_groups + 2):
        credit = int(overhead[dead].sum())
        alive = ~dead.index_select(0, groups)
        mask = torch.zeros(scores.shape, dtype=torch.bool)
        sub = alive.nonzero().flatten()
        if sub.numel():
            try:
                mask[sub] = project(scores[sub], costs[sub], budget + credit, groups=groups[sub], minimum=free, policy=policy, scope=scope)
            except BudgetError:
                if bool((dead == removable).all()):
                    raise
                # what must stay fits only with more blocks removed: remove them all, the walk revives what fits
                dead = removable.clone()
                continue
        emptied = empty_groups(mask, groups, num_groups) & removable & ~dead
        if not bool(emptied.any()):
            break
        dead |= emptied
    # the walk: best key first, add every dropped unit whose effective cost (plus its group's overhead
    # when the group is empty) still fits, until none does
    key = _policy_key(scores, costs, policy)
    order = torch.sort(-key, stable=True).indices
    left = budget - budget_cost(mask, costs, groups, overhead, removable)
    while True:
        empty = empty_groups(mask, groups, num_groups) & removable
        effective = costs + torch.where(empty, overhead, torch.zeros_like(overhead)).index_select(0, groups)
        fits = (~mask & (effective <= left)).index_select(0, order)
        if not bool(fits.any()):
            return mask
        unit = int(order[int(fits.nonzero()[0, 0])])
        mask[unit] = True
        left -= int(effective[unit])


def _project_whole(
    scores: torch.Tensor,
    costs: torch.Tensor,
    groups: torch.Tensor,
    overhead: torch.Tensor,
    removable: torch.Tensor,
    budget: int,
    removal: Removal,
    policy: Policy,
) -> torch.Tensor:
    item, unit_item, item_cost = _items(costs, groups, overhead, removal)
    num_items = item_cost.numel()
    count = torch.bincount(unit_item, minlength=num_items)
    total = torch.zeros(num_items, dtype=torch.float64).index_add_(0, unit_item, scores.to(torch.float64))
    item_score = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    has_units = torch.bincount(groups, minlength=removable.numel()) > 0
    forced = torch.zeros(num_items, dtype=torch.long).index_add_(0, item, (~removable & has_units).long()) > 0
    present = (count > 0).nonzero().flatten()
    kept_items = torch.zeros(num_items, dtype=torch.bool)
    if present.numel():
        kept_items[present] = project(
            item_score[present],
            item_cost[present],
            budget + int(overhead.sum()),
            groups=torch.arange(present.numel(), dtype=torch.long),
            minimum=forced[present].long(),
            policy="density" if policy == "density" else "rank",
        )
    return kept_items.index_select(0, unit_item)


def project_removal(
    scores: torch.Tensor,
    costs: torch.Tensor,
    budget: int,
    *,
    groups: torch.Tensor,
    overhead: torch.Tensor,
    removal: Removal,
    removable: torch.Tensor | None = None,
    minimum: torch.Tensor | None = None,
    policy: Policy = "rank",
    scope: Scope = "global",
) -> torch.Tensor:
    """Keep mask meeting ``budget`` exactly with removable blocks (see the module docstring).

    Args:
        scores: one float per unit, higher = keep (for ``blocks`` / ``layers``, a block's or layer's
            units all carrying its score is the natural input; the item scores their mean).
        costs: 1-D int64 unit costs (> 0).
        budget: the largest allowed :func:`budget_cost`.
        groups: 1-D int64 group per unit (layer ``l``'s FFN channels ``2l``, its KV groups ``2l+1``).
        overhead: per group, the parameters its block sheds when removed.
        removal: ``"mixed"``, ``"blocks"`` or ``"layers"`` (``"none"``: the plain projector).
        removable: per group, whether its block may be removed (default: all).
        minimum: per group, units a kept group keeps; a non-removable group always keeps them (default 1).
        policy: ``"rank"`` or ``"density"`` (``"optimal"`` walks as ``"rank"`` here).
        scope: ``"global"`` or ``"uniform"`` (``mixed`` only).

    Raises:
        BudgetError: the non-removable groups' minimums alone exceed the budget.
        ValueError: malformed inputs or an unknown mode.
    """
    removable, minimum, overhead = _normalised(costs, groups, overhead, removal, removable, minimum)
    if removal == "none":
        return project(scores, costs, budget, groups=groups, minimum=minimum, policy=policy, scope=scope)
    if budget < -int(overhead.sum()):
        raise BudgetError(f"budget {budget:,} is below minus the removable overhead ({-int(overhead.sum()):,})")
    walk: Policy = "density" if policy == "density" else "rank"
    if removal == "mixed":
        return _project_mixed(scores, costs, groups, overhead, removable, budget, minimum, walk, scope)
    return _project_whole(scores, costs, groups, overhead, removable, budget, removal, walk)


def check_removal(
    mask: torch.Tensor,
    costs: torch.Tensor,
    budget: int,
    *,
    groups: torch.Tensor,
    overhead: torch.Tensor,
    removal: Removal,
    removable: torch.Tensor | None = None,
    minimum: torch.Tensor | None = None,
) -> None:
    """Raise ``BudgetError`` unless ``mask`` meets ``budget`` exactly in ``removal``'s sense.

    Checks: within budget (:func:`budget_cost`); tight (no admissible addition fits in what is left);
    non-removable groups hold their minimum and only removable groups are empty; for ``blocks`` /
    ``layers``, every item is kept whole or removed whole.
    """
    removable, minimum, overhead = _normalised(costs, groups, overhead, removal, removable, minimum)
    num_groups = overhead.numel()
    mask = mask.bool()
    spent = budget_cost(mask, costs, groups, overhead, removable)
    if spent > budget:
        raise BudgetError(f"mask spends {spent:,} > budget {budget:,} (kept units minus removed blocks' overhead)")
    left = budget - spent
    counts = torch.bincount(groups, minlength=num_groups)
    kept = torch.bincount(groups[mask], minlength=num_groups)
    short = (~removable & (kept < torch.minimum(minimum, counts))).nonzero().flatten()
    if short.numel():
        g = int(short[0])
        raise BudgetError(f"group {g} is not removable but keeps {int(kept[g])} units, below its minimum {int(minimum[g])}")
    empty = kept == 0
    if removal == "mixed":
        effective = costs + torch.where(empty & removable, overhead, torch.zeros_like(overhead)).index_select(0, groups)
        dropped = effective[~mask]
        if dropped.numel() and int(dropped.min()) <= left:
            raise BudgetError(
                f"mask is not tight: a dropped unit of effective cost {int(dropped.min()):,} still fits in the {left:,} left of budget {budget:,}"
            )
        return
    _, unit_item, item_cost = _items(costs, groups, overhead, removal)
    num_items = item_cost.numel()
    item_units = torch.bincount(unit_item, minlength=num_items)
    item_kept = torch.bincount(unit_item[mask], minlength=num_items)
    partial = ((item_kept > 0) & (item_kept < item_units)).nonzero().flatten()
    if partial.numel():
        i = int(partial[0])
        raise BudgetError(f"removal {removal!r} keeps items whole, but item {i} keeps {int(item_kept[i])} of its {int(item_units[i])} units")
    dropped = item_cost[(item_kept == 0) & (item_units > 0)]
    if dropped.numel() and int(dropped.min()) <= left:
        raise BudgetError(f"mask is not tight: a removed item of cost {int(dropped.min()):,} still fits in the {left:,} left of budget {budget:,}")
