"""Budget projection of a vocabulary: per-token scores in, a kept mask closed under the merges out.

A token is a unit whose cost is its rows of the embedding and the output layer. A BPE tokenizer
produces a token ``ab`` only by a merge ``(a, b) -> ab``, so a kept set is useful only when it is
**closed**: for every merge whose result is kept, both of its parts are kept too (recursively, every
token a kept token is built from). A tokenizer may list several merges with one result (a
SentencePiece vocabulary converted to BPE lists every split of a token into two tokens); closure then
asks for the parts of *every* such merge, which is what keeps the tokenization of any text whose
tokens are all kept exactly as it was (see :mod:`pruneframe.vocabulary.rebuild`).

:func:`project_vocabulary` returns a mask that

* holds every forced token and everything it is built from,
* is closed under the merges,
* costs at most the budget, and
* is **tight**, the vocabulary form of the projector's "meets the budget exactly"
  (:mod:`pruneframe.pipeline.projection`): every dropped token whose parts are all kept (an
  *addable* token, the only ones that could join a closed set on their own) costs more than what is
  left of the budget. In a merge graph without cycles (every BPE's) no closed superset of a tight
  mask fits the budget at all: such a superset adds some addable token, which alone does not fit.

**Algorithm** (deterministic; ties go to the lower id):

1. Keep the forced tokens and their ancestors; a :class:`VocabularyBudgetError` names the
   shortfall when they alone cost more than the budget.
2. *Walk by score*: tokens in descending score, each one kept together with its ancestors not yet
   kept (its *group*) when that whole group still fits in what is left, else passed over. Scoring
   by the token alone would stall: a part such as ``ello`` is rarely a final token of any text (it
   is merged on at once), so its own frequency says nothing of the frequent ``hello`` that needs
   it; the walk lets each token pull in the parts it needs, and never spends budget on the parts of
   a token that then does not fit. Kept groups are closed, so the mask stays closed throughout.

**Why the walk is tight.** Take a token ``t`` dropped at the end whose parts are all kept. At its
turn its group ``{t} + M`` (``M``: its ancestors not kept then) cost more than what was left, ``L``.
Every token of ``M`` is kept at the end (closure), and was kept after ``t``'s turn, so what is left
at the end is at most ``L - cost(M) < cost(t)``: ``t`` does not fit. (The walk stops early only
once what is left is below every token's cost.)

Maximising the kept score under closure and a budget is a precedence-constrained knapsack (NP-hard in
general); the walk is the closure analogue of the projector's ``"rank"`` policy, not an optimum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pruneframe.pipeline.projection_checks import BudgetError, as_budget

__all__ = [
    "VocabularyBudgetError",
    "merge_parents",
    "closure",
    "is_closed",
    "addable",
    "project_vocabulary",
]


class VocabularyBudgetError(BudgetError):
    """The forced tokens and the tokens they are built from cost more than the budget.

    Attributes:
        cost: the cost of that forced closure.
        budget: the budget asked for.
        shortfall: ``cost - budget``, how much more budget the forced closure needs.
    """

    def __init__(self, cost: int, budget: int, count: int) -> None:
        self.cost, self.budget, self.shortfall = cost, budget, cost - budget
        super().__init__(
            f"vocabulary budget {budget} is infeasible: the {count} forced tokens and the tokens they are built from cost {cost}, "
            f"{cost - budget} over the budget"
        )


def _check_merges(merges: torch.Tensor, size: int) -> torch.Tensor:
    if not isinstance(merges, torch.Tensor) or merges.dtype != torch.int64 or merges.dim() != 2 or merges.shape[1] != 3:
        raise ValueError("merges must be an int64 tensor [M, 3] of (left, right, result) token ids")
    if merges.numel() and (int(merges.min()) < 0 or int(merges.max()) >= size):
        bad = ((merges < 0) | (merges >= size)).any(dim=1).nonzero()[0, 0]
        raise ValueError(f"merge {int(bad)} {merges[bad].tolist()} names a token outside 0..{size - 1}")
    return merges


def merge_parents(merges: torch.Tensor, size: int) -> list[tuple[int, ...]]:
    """For each of ``size`` tokens, the distinct tokens some merge builds it from (``()`` for none).

    ``merges`` is an int64 tensor ``[M, 3]`` of ``(left, right, result)`` token ids, one row a merge.
    """
    parents: list[set[int]] = [set() for _ in range(size)]
    for left, right, result in _check_merges(merges, size).tolist():
        parents[result].update((left, right))
    return [tuple(sorted(p)) for p in parents]


def _as_parents(merges: torch.Tensor | Sequence[tuple[int, ...]], size: int) -> Sequence[tuple[int, ...]]:
    if isinstance(merges, torch.Tensor):
        return merge_parents(merges, size)
    if len(merges) != size:
        raise ValueError(f"parents has {len(merges)} entries for {size} tokens")
    return merges


def _check_mask(name: str, mask: torch.Tensor, size: int | None = None) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 1:
        raise ValueError(f"{name} must be a 1-D bool tensor")
    if size is not None and mask.numel() != size:
        raise ValueError(f"{name} has {mask.numel()} entries for {size} tokens")
    return mask


def closure(mask: torch.Tensor, merges: torch.Tensor | Sequence[tuple[int, ...]]) -> torch.Tensor:
    """The smallest closed mask holding ``mask``: its tokens and every token they are built from.

    ``merges`` is an int64 ``[M, 3]`` tensor of ``(left, right, result)`` rows, or the parents
    :func:`merge_parents` returns.
    """
    mask = _check_mask("mask", mask)
    parents = _as_parents(merges, mask.numel())
    kept = mask.tolist()
    stack = [t for t, k in enumerate(kept) if k]
    while stack:
        for p in parents[stack.pop()]:
            if not kept[p]:
                kept[p] = True
                stack.append(p)
    return torch.tensor(kept, dtype=torch.bool)


def is_closed(mask: torch.Tensor, merges: torch.Tensor | Sequence[tuple[int, ...]]) -> bool:
    """Whether every merge whose result ``mask`` keeps has both parts kept."""
    mask = _check_mask("mask", mask)
    kept = mask.tolist()
    parents = _as_parents(merges, mask.numel())
    return all(kept[p] for t, k in enumerate(kept) if k for p in parents[t])


def addable(mask: torch.Tensor, merges: torch.Tensor | Sequence[tuple[int, ...]]) -> torch.Tensor:
    """The dropped tokens whose parts are all kept: those a closed ``mask`` can take one at a time."""
    mask = _check_mask("mask", mask)
    kept = mask.tolist()
    parents = _as_parents(merges, mask.numel())
    return torch.tensor([not k and all(kept[p] for p in parents[t]) for t, k in enumerate(kept)], dtype=torch.bool)


def _check_units(scores: torch.Tensor, costs: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or not torch.is_floating_point(scores):
        raise ValueError("scores must be a 1-D floating-point tensor")
    if bool(torch.isnan(scores).any()):
        raise ValueError(f"scores contain NaN (first at token {int(torch.isnan(scores).nonzero()[0, 0])})")
    if not isinstance(costs, torch.Tensor) or costs.dim() != 1 or costs.dtype != torch.int64:
        raise ValueError("costs must be a 1-D int64 tensor")
    if costs.numel() != scores.numel():
        raise ValueError(f"costs has {costs.numel()} entries but scores has {scores.numel()}")
    if costs.numel() and int(costs.min()) <= 0:
        raise ValueError(f"costs must be > 0 (token {int((costs <= 0).nonzero()[0, 0])} has cost {int(costs[(costs <= 0)][0])})")


def _missing_group(token: int, kept: list[bool], parents: Sequence[tuple[int, ...]], cost: list[int], limit: int) -> list[int] | None:
    """``token`` and its ancestors not yet kept, or None as soon as they cost more than ``limit``."""
    group, seen, stack, total = [], {token}, [token], 0
    while stack:
        t = stack.pop()
        total += cost[t]
        if total > limit:
            return None
        group.append(t)
        for p in parents[t]:
            if not kept[p] and p not in seen:
                seen.add(p)
                stack.append(p)
    return group


def project_vocabulary(
    scores: torch.Tensor,
    costs: torch.Tensor,
    merges: torch.Tensor,
    budget: int,
    forced: torch.Tensor | None = None,
) -> torch.Tensor:
    """A kept mask over the tokens: closed under ``merges``, holding ``forced``, within ``budget`` and tight.

    Args:
        scores: float ``[V]``, higher is more worth keeping (infinities allowed, NaN refused).
        costs: int64 ``[V]``, each > 0: what keeping the token costs (its parameters).
        merges: int64 ``[M, 3]``, the merges as ``(left, right, result)`` token ids; a token may be
            the result of several merges (or of none: a base symbol, or a token no merge builds).
        budget: the most the kept tokens may cost in total.
        forced: bool ``[V]``, tokens that are always kept (with everything they are built from).

    Returns:
        A bool ``[V]`` mask (see the module docstring for the algorithm and what tight means).

    Raises:
        VocabularyBudgetError: the forced tokens and their ancestors alone cost more than ``budget``.
        ValueError: malformed inputs.
    """
    _check_units(scores, costs)
    size = scores.numel()
    budget = as_budget(budget)
    parents = merge_parents(merges, size)
    forced = torch.zeros(size, dtype=torch.bool) if forced is None else _check_mask("forced", forced, size)
    keep = closure(forced.cpu(), parents)
    cost = costs.tolist()
    kept = keep.tolist()
    spent = sum(c for c, k in zip(cost, kept) if k)
    if spent > budget:
        raise VocabularyBudgetError(spent, budget, int(forced.sum()))
    left = budget - spent
    cheapest = min(cost, default=0)
    score = scores.detach().to("cpu", torch.float64)
    # Stable sort of the negated scores: descending score, the lower id first among equals.
    for t in torch.sort(-score, stable=True).indices.tolist():
        if left < cheapest:
            break
        if kept[t]:
            continue
        group = _missing_group(t, kept, parents, cost, left)
        if group is not None:
            for u in group:
                kept[u] = True
                left -= cost[u]
    return torch.tensor(kept, dtype=torch.bool)
