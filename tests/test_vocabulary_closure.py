"""The vocabulary projector on random merge graphs: within budget, closed, forced kept, tight; a brute force on small ones."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pruneframe.pipeline.projection_checks import BudgetError
from pruneframe.vocabulary import VocabularyBudgetError, addable, closure, is_closed, merge_parents, project_vocabulary

SCORES = st.one_of(st.sampled_from([0.0, -0.0, 1.0, 2.0, -1.0, math.inf, -math.inf]), st.floats(-1e6, 1e6, allow_nan=False))


@st.composite
def vocabularies(draw: st.DrawFn, max_tokens: int = 14, several_merges: bool = True) -> dict:
    """A random merge graph: token ``i`` is a base symbol or the result of merges of lower ids, plus costs, scores, forced tokens, a budget."""
    size = draw(st.integers(1, max_tokens))
    rows = []
    for token in range(1, size):
        if draw(st.booleans()):
            continue  # a base symbol (or a token no merge builds)
        count = draw(st.integers(1, 3)) if several_merges else 1
        for _ in range(count):
            rows.append((draw(st.integers(0, token - 1)), draw(st.integers(0, token - 1)), token))
    costs = draw(st.lists(st.integers(1, 4), min_size=size, max_size=size))
    return {
        "scores": torch.tensor(draw(st.lists(SCORES, min_size=size, max_size=size)), dtype=torch.float64),
        "costs": torch.tensor(costs, dtype=torch.int64),
        "merges": torch.tensor(rows, dtype=torch.int64).reshape(-1, 3),
        "forced": torch.tensor(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=torch.bool),
        "budget": draw(st.integers(0, sum(costs) + 2)),
    }


def _cost(mask: torch.Tensor, costs: torch.Tensor) -> int:
    return int(costs[mask].sum())


def _check(v: dict) -> torch.Tensor | None:
    """Run the projector; check every property; return the mask (None when the budget is infeasible)."""
    must = closure(v["forced"], v["merges"])
    if _cost(must, v["costs"]) > v["budget"]:
        with pytest.raises(VocabularyBudgetError) as info:
            project_vocabulary(v["scores"], v["costs"], v["merges"], v["budget"], v["forced"])
        assert info.value.shortfall == _cost(must, v["costs"]) - v["budget"] > 0
        assert f"{info.value.shortfall} over the budget" in str(info.value)
        return None
    keep = project_vocabulary(v["scores"], v["costs"], v["merges"], v["budget"], v["forced"])
    left = v["budget"] - _cost(keep, v["costs"])
    assert left >= 0, "over budget"
    assert is_closed(keep, v["merges"]), "not closed under the merges"
    assert bool(keep[v["forced"]].all()), "a forced token was dropped"
    assert bool((v["costs"][addable(keep, v["merges"])] > left).all()), "not tight: an addable token still fits"
    assert torch.equal(keep, project_vocabulary(v["scores"], v["costs"], v["merges"], v["budget"], v["forced"])), "not deterministic"
    return keep


@given(vocabularies())
def test_projection_is_within_budget_closed_forced_and_tight(v: dict) -> None:
    _check(v)


@given(vocabularies(several_merges=False))
def test_projection_on_merge_forests(v: dict) -> None:
    _check(v)


@given(vocabularies(max_tokens=10))
def test_projection_matches_a_brute_force_over_closed_subsets(v: dict) -> None:
    size = v["scores"].numel()
    parents = merge_parents(v["merges"], size)
    forced = set(v["forced"].nonzero().flatten().tolist())
    feasible = []
    for bits in itertools.product((False, True), repeat=size):
        mask = torch.tensor(bits, dtype=torch.bool)
        chosen = {i for i, b in enumerate(bits) if b}
        if forced <= chosen and all(set(parents[t]) <= chosen for t in chosen) and _cost(mask, v["costs"]) <= v["budget"]:
            feasible.append(chosen)
    keep = _check(v)
    assert (keep is None) == (not feasible), "infeasible exactly when no closed set holding the forced tokens fits"
    if keep is None:
        return
    kept = set(keep.nonzero().flatten().tolist())
    assert kept in feasible
    # Maximal: no closed superset fits, whether it adds one addable token or several.
    assert not any(s > kept for s in feasible), "a closed superset of the result fits the budget"


def test_a_frequent_token_pulls_in_the_parts_it_is_built_from() -> None:
    # 0 'h', 1 'e', 2 'l', 3 'o', 4 'll', 7 'ell', 5 'ello', 6 'hello'; 8..10 stand alone. Parts rarely end a word: score 0.
    merges = torch.tensor([[2, 2, 4], [1, 4, 7], [7, 3, 5], [0, 5, 6]], dtype=torch.int64)
    scores = torch.tensor([5.0, 5.0, 5.0, 5.0, 0.0, 0.0, 100.0, 0.0, 3.0, 3.0, 3.0])
    costs = torch.ones(11, dtype=torch.int64)
    forced = torch.zeros(11, dtype=torch.bool)
    forced[:4] = True  # the base symbols
    keep = project_vocabulary(scores, costs, merges, 8, forced)
    # 'hello' needs 'll', 'ell', 'ello': 4 + 4 = 8 tokens, before any of the three tokens scored 3.
    assert keep.nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    # One short of that: 'hello' does not fit with its parts; the walk passes over it and spends nothing on them.
    keep = project_vocabulary(scores, costs, merges, 7, forced)
    assert keep.nonzero().flatten().tolist() == [0, 1, 2, 3, 8, 9, 10]
    assert is_closed(keep, merges)


def test_edge_budgets_and_errors() -> None:
    merges = torch.tensor([[0, 1, 2], [2, 1, 3]], dtype=torch.int64)
    scores, costs = torch.tensor([0.0, 0.0, 1.0, 2.0]), torch.tensor([1, 2, 3, 4])
    forced = torch.tensor([False, False, False, True])
    assert project_vocabulary(scores, costs, merges, 10, forced).all()
    with pytest.raises(VocabularyBudgetError, match=r"the 1 forced tokens .* cost 10, 1 over the budget") as info:
        project_vocabulary(scores, costs, merges, 9, forced)
    assert isinstance(info.value, BudgetError) and isinstance(info.value, ValueError)
    assert (info.value.cost, info.value.budget, info.value.shortfall) == (10, 9, 1)
    assert not project_vocabulary(scores, costs, merges, 0).any()
    with pytest.raises(BudgetError, match="budget -1"):
        project_vocabulary(scores, costs, merges, -1)
    with pytest.raises(ValueError, match="NaN"):
        project_vocabulary(torch.tensor([0.0, math.nan, 0.0, 0.0]), costs, merges, 5)
    with pytest.raises(ValueError, match="costs must be > 0"):
        project_vocabulary(scores, torch.tensor([1, 0, 1, 1]), merges, 5)
    with pytest.raises(ValueError, match="outside 0..3"):
        project_vocabulary(scores, costs, torch.tensor([[0, 4, 2]]), 5)
    with pytest.raises(ValueError, match=r"\[M, 3\]"):
        project_vocabulary(scores, costs, torch.tensor([[0, 1]]), 5)
    with pytest.raises(ValueError, match="forced has 3 entries"):
        project_vocabulary(scores, costs, merges, 5, torch.zeros(3, dtype=torch.bool))


def test_closure_helpers() -> None:
    merges = torch.tensor([[0, 1, 2], [2, 1, 3], [0, 0, 3]], dtype=torch.int64)
    assert merge_parents(merges, 5) == [(), (), (0, 1), (0, 1, 2), ()]
    assert closure(torch.tensor([False, False, False, True, False]), merges).tolist() == [True, True, True, True, False]
    assert not is_closed(torch.tensor([True, True, False, True, False]), merges)
    assert addable(torch.tensor([True, True, False, False, False]), merges).tolist() == [False, False, True, False, True]
