"""Property tests of the budget projector (:mod:`pruneframe.pipeline.projection`).

Random unit sets look like real models (1-6 layers, an FFN and a KV group per layer, Llama-style
cost classes) or are arbitrary (any positive cost per unit), with tied, negative, huge and infinite
scores. Every policy x scope must meet the budget exactly, hold the minimums and be deterministic;
the greedy policies must equal a plain sequential reference, and ``optimal`` must reach the
brute-force optimum on small two-cost instances.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass
from unittest import mock

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from pruneframe.pipeline import projection_walks
from pruneframe.pipeline.budget import check_meets_budget
from pruneframe.pipeline.projection import BudgetError, forced_units, project, tie_break_order

POLICIES = ("rank", "density", "optimal")
SCOPES = ("global", "uniform")
TIED = (0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 3.0)


# --- generated cases ------------------------------------------------------------------------------


@dataclass
class Case:
    """One random unit set, as tensors for the projector and lists for the references."""

    scores: torch.Tensor
    costs: torch.Tensor
    groups: torch.Tensor
    minimum: torch.Tensor | int | None
    num_groups: int

    @property
    def s(self) -> list[float]:
        return self.scores.double().tolist()  # the values the projector sees, after any rounding

    @property
    def c(self) -> list[int]:
        return self.costs.tolist()

    @property
    def g(self) -> list[int]:
        return self.groups.tolist()

    @property
    def mins(self) -> list[int]:
        if self.minimum is None:
            return [1] * self.num_groups
        if isinstance(self.minimum, int):
            return [self.minimum] * self.num_groups
        return self.minimum.tolist()

    def project(self, budget: int, policy: str, scope: str) -> torch.Tensor:
        return project(self.scores, self.costs, budget, groups=self.groups, minimum=self.minimum, policy=policy, scope=scope)


# built once: building strategies inside every draw costs more than running the example
_TIED_POOL = st.lists(st.sampled_from(TIED), min_size=1, max_size=8)
_WIDE_POOL = st.lists(st.one_of(st.sampled_from(TIED), st.floats(-1e30, 1e30, allow_nan=False)), min_size=1, max_size=8)
_INFS = st.sampled_from(([math.inf], [-math.inf], [math.inf, -math.inf]))


@st.composite
def score_pools(draw) -> tuple[list[float], float]:
    """Values to tie on (small set, +-1e30-range floats, +-inf) and how often a score comes from them."""
    kind = draw(st.sampled_from(("tied", "wide", "inf")))
    if kind == "tied":
        return draw(_TIED_POOL), 1.0
    pool = draw(_WIDE_POOL) + (draw(_INFS) if kind == "inf" else [])
    return pool, draw(st.sampled_from((0.2, 0.8)))


@st.composite
def cases(draw, max_layers: int = 6, max_group: int = 12, max_units: int | None = None, cost_modes=None) -> Case:
    """A random unit set: groups ``2 * layer + kind``, costs, scores and a minimum.

    Hypothesis draws the structure and the value pools; per-unit values come from a seeded RNG
    (drawing hundreds of values one by one would make every example ~10x slower).
    """
    n_groups = 2 * draw(st.integers(1, max_layers))
    cap = max_group if max_units is None else max(1, min(max_group, max_units // n_groups))
    sizes = draw(st.lists(st.integers(1, cap), min_size=n_groups, max_size=n_groups))
    groups = [g for g, size in enumerate(sizes) for _ in range(size)]
    n = len(groups)
    rng = random.Random(draw(st.integers(0, 2**32 - 1), label="seed"))
    mode = draw(st.sampled_from(cost_modes or ("model", "two", "one", "per_group", "per_unit")))
    if mode == "model":  # FFN channel 3d, KV group (2q+2) * head_dim * d, as in Llama
        d, hd, q = draw(st.integers(1, 64)), draw(st.integers(1, 16)), draw(st.integers(1, 4))
        per_group = [3 * d if g % 2 == 0 else (2 * q + 2) * hd * d for g in range(n_groups)]
    elif mode == "two":
        pair = draw(st.lists(st.integers(1, 50), min_size=2, max_size=2))
        per_group = [rng.choice(pair) for _ in range(n_groups)]
    elif mode == "one":
        per_group = [draw(st.integers(1, 10**6))] * n_groups
    else:
        per_group = draw(st.lists(st.integers(1, 10**6), min_size=n_groups, max_size=n_groups))
    if mode == "per_unit":  # arbitrary costs, with some repeats so a group holds cost classes
        pool = draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=4))
        costs = [rng.choice(pool) if rng.random() < 0.5 else rng.randint(1, 10**6) for _ in range(n)]
    else:
        costs = [per_group[g] for g in groups]
    values, from_pool = draw(score_pools())
    scores = [rng.choice(values) if rng.random() < from_pool else rng.uniform(-1, 1) * 10.0 ** rng.randint(-30, 30) for _ in range(n)]
    min_kind = draw(st.sampled_from(("default", "zero", "one", "random")))
    minimum: torch.Tensor | int | None = {"default": None, "zero": 0, "one": 1}.get(min_kind)
    if min_kind == "random":
        minimum = torch.tensor([rng.randint(0, size) for size in sizes], dtype=torch.int64)
    if draw(st.booleans()):  # interleave the groups instead of laying them out contiguously
        perm = list(range(n))
        rng.shuffle(perm)
        groups, costs, scores = [groups[i] for i in perm], [costs[i] for i in perm], [scores[i] for i in perm]
    dtype = draw(st.sampled_from((torch.float64, torch.float32, torch.bfloat16)))
    return Case(torch.tensor(scores, dtype=dtype), torch.tensor(costs, dtype=torch.int64), torch.tensor(groups, dtype=torch.int64), minimum, n_groups)


# --- plain-Python references -----------------------------------------------------------------------


def ref_walk(keys: list[float], groups: list[int]) -> list[int]:
    """Descending key; ties by fractional position in the group, then group id, then index."""
    size: Counter[int] = Counter(groups)
    seen: Counter[int] = Counter()
    frac = []
    for g in groups:
        frac.append((seen[g] + 0.5) / size[g])
        seen[g] += 1
    return sorted(range(len(keys)), key=lambda i: (-keys[i], frac[i], groups[i], i))


def ref_ranks(order: list[int], groups: list[int]) -> list[int]:
    """0-based rank of every unit inside its group along ``order``."""
    rank, seen = [0] * len(order), Counter()
    for i in order:
        rank[i] = seen[groups[i]]
        seen[groups[i]] += 1
    return rank


def ref_keys(case: Case, policy: str, scope: str) -> list[float]:
    """The key the policy walks by: score, score / cost, or the uniform key 1 - r / n_g."""
    s, c, g = case.s, case.c, case.g
    keys = [s[i] / c[i] for i in range(len(s))] if policy == "density" else s
    if scope == "uniform":
        rank, size = ref_ranks(ref_walk(keys, g), g), Counter(g)
        keys = [1.0 - rank[i] / size[g[i]] for i in range(len(s))]
    return keys


def ref_forced(case: Case, policy: str) -> list[bool]:
    """The ``minimum[g]`` best units of every group by the policy's own ordering."""
    g, mins = case.g, case.mins
    rank = ref_ranks(ref_walk(ref_keys(case, policy, "global"), g), g)
    return [rank[i] < mins[g[i]] for i in range(len(g))]


def ref_greedy(keys: list[float], case: Case, forced: list[bool], budget: int) -> list[bool]:
    """Sequential walk by ``keys``: keep every unit that still fits, skip the others."""
    c = case.c
    keep = list(forced)
    left = budget - sum(ci for ci, f in zip(c, forced) if f)
    for i in ref_walk(keys, case.g):
        if not keep[i] and c[i] <= left:
            keep[i] = True
            left -= c[i]
    return keep


def objective(keys: list[float], masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per mask row: (#+inf kept - #-inf kept, sum of the finite keys kept)."""
    k = torch.tensor(keys, dtype=torch.float64)
    weight = torch.isposinf(k).long() - torch.isneginf(k).long()
    finite = torch.where(torch.isinf(k), torch.zeros_like(k), k)
    return (masks.long() * weight).sum(-1), (masks.double() * finite).sum(-1)


def forced_cost(case: Case, policy: str) -> int:
    return sum(ci for ci, f in zip(case.c, ref_forced(case, policy)) if f)


def draw_budget(data: st.DataObject, case: Case, policy: str) -> int:
    return data.draw(st.integers(forced_cost(case, policy), sum(case.c) + 1), label="budget")


def assert_contract(mask: torch.Tensor, case: Case, budget: int, policy: str, scope: str) -> None:
    """Exact budget, minimums, forced units kept, and the key order inside a group and cost class."""
    assert mask.dtype == torch.bool and mask.shape == case.costs.shape
    keep, c, g = mask.tolist(), case.c, case.g
    kept = sum(ci for ci, k in zip(c, keep) if k)
    assert kept <= budget
    assert all(ci > budget - kept for ci, k in zip(c, keep) if not k), "a dropped unit still fits"
    counts = Counter(gi for gi, k in zip(g, keep) if k)
    assert all(counts[j] >= m for j, m in enumerate(case.mins))
    forced = ref_forced(case, policy)
    assert all(k for k, f in zip(keep, forced) if f), "a forced unit was dropped"
    keys = ref_keys(case, policy, scope)
    # optimal may fall back to a density walk, whose key/cost can round two close keys to a tie
    walk_keys = [keys, [k / ci for k, ci in zip(keys, c)]] if policy == "optimal" else [keys]
    classes: dict[tuple[int, int], list[int]] = {}
    for i in range(len(c)):
        if not forced[i]:
            classes.setdefault((g[i], c[i]), []).append(i)
    for members in classes.values():
        ordered = []
        for key in walk_keys:
            kept_keys = [key[i] for i in members if keep[i]]
            dropped_keys = [key[i] for i in members if not keep[i]]
            ordered.append(not kept_keys or not dropped_keys or min(kept_keys) >= max(dropped_keys))
        assert any(ordered), "a kept unit ranks below a dropped one of its group and cost"


# --- properties -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("policy", POLICIES)
@given(data=st.data())
def test_meets_budget_exactly_and_holds_minimums(policy: str, scope: str, data: st.DataObject) -> None:
    case = data.draw(cases(), label="case")
    budget = draw_budget(data, case, policy)
    before = (case.scores.clone(), case.costs.clone(), case.groups.clone())
    mask = case.project(budget, policy, scope)
    assert_contract(mask, case, budget, policy, scope)
    assert torch.equal(mask, case.project(budget, policy, scope)), "not deterministic"
    assert all(torch.equal(a, b) for a, b in zip(before, (case.scores, case.costs, case.groups)))


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("policy", ("rank", "density"))
@given(data=st.data())
def test_greedy_equals_sequential_reference(policy: str, scope: str, data: st.DataObject) -> None:
    case = data.draw(cases(), label="case")
    budget = draw_budget(data, case, policy)
    expected = ref_greedy(ref_keys(case, policy, scope), case, ref_forced(case, policy), budget)
    assert case.project(budget, policy, scope).tolist() == expected


@given(data=st.data(), rounds=st.integers(0, 2), policy=st.sampled_from(("rank", "density")))
def test_greedy_loop_fallback_equals_reference(data: st.DataObject, rounds: int, policy: str) -> None:
    """The plain loop that finishes walks needing many vectorised rounds gives the same mask."""
    case = data.draw(cases(cost_modes=("per_unit", "per_group")), label="case")
    budget = draw_budget(data, case, policy)
    expected = ref_greedy(ref_keys(case, policy, "global"), case, ref_forced(case, policy), budget)
    with mock.patch.object(projection_walks, "_MAX_ROUNDS", rounds):
        assert case.project(budget, policy, "global").tolist() == expected


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("policy", ("rank", "density"))
@given(data=st.data())
def test_kept_cost_is_monotone_in_budget(policy: str, scope: str, data: st.DataObject) -> None:
    case = data.draw(cases(), label="case")
    low = draw_budget(data, case, policy)
    high = data.draw(st.integers(low, sum(case.c) + 1), label="higher budget")
    kept_low = int(case.costs[case.project(low, policy, scope)].sum())
    kept_high = int(case.costs[case.project(high, policy, scope)].sum())
    assert kept_high >= kept_low


@pytest.mark.parametrize("scope", SCOPES)
@given(data=st.data())
def test_optimal_reaches_brute_force_optimum(scope: str, data: st.DataObject) -> None:
    """Two cost classes, single-cost groups, N <= 12: the best of all 2^N masks that meet the
    budget exactly and hold the minimums."""
    case = data.draw(cases(max_layers=3, max_units=12, cost_modes=("model", "two", "one")), label="case")
    budget = draw_budget(data, case, "optimal")
    mask = case.project(budget, "optimal", scope)
    assert_contract(mask, case, budget, "optimal", scope)
    n = len(case.c)
    masks = (torch.arange(2**n)[:, None] >> torch.arange(n)) & 1 == 1
    kept = (masks.long() * case.costs).sum(1)
    cheapest_dropped = torch.where(masks, torch.iinfo(torch.int64).max, case.costs).amin(1)
    counts = torch.zeros(2**n, case.num_groups, dtype=torch.int64).index_add_(1, case.groups, masks.long())
    valid = (kept <= budget) & (cheapest_dropped > budget - kept) & (counts >= torch.tensor(case.mins)).all(1)
    keys = ref_keys(case, "optimal", scope)
    weight, total = objective(keys, masks[valid])
    best_weight = weight.max()
    best_sum = total[weight == best_weight].max()
    got_weight, got_sum = objective(keys, mask)
    tol = 1e-9 * sum(abs(k) for k in keys if math.isfinite(k))  # float64 sums of 1e30-scale scores
    assert int(got_weight) == int(best_weight)
    assert float(got_sum) >= float(best_sum) - tol


@pytest.mark.parametrize("scope", SCOPES)
@given(data=st.data())
def test_optimal_with_many_costs_is_best_greedy(scope: str, data: st.DataObject) -> None:
    """Beyond two cost classes: the better of the rank and density walks (ties -> rank)."""
    case = data.draw(cases(cost_modes=("per_unit", "per_group")), label="case")
    forced = ref_forced(case, "optimal")
    free = {ci for ci, f in zip(case.c, forced) if not f}
    single_cost = all(len({ci for ci, gi in zip(case.c, case.g) if gi == j}) == 1 for j in set(case.g))
    assume(not (single_cost and len(free) <= 2))  # that case is solved exactly (brute-force test)
    budget = draw_budget(data, case, "optimal")
    mask = case.project(budget, "optimal", scope)
    assert_contract(mask, case, budget, "optimal", scope)
    keys = ref_keys(case, "optimal", scope)
    by_rank = ref_greedy(keys, case, forced, budget)
    by_density = ref_greedy([k / ci for k, ci in zip(keys, case.c)], case, forced, budget)
    assert mask.tolist() in (by_rank, by_density)
    got = objective(keys, mask)
    tol = 1e-9 * sum(abs(k) for k in keys if math.isfinite(k))
    for other in (by_rank, by_density):
        weight, total = objective(keys, torch.tensor(other))
        assert (int(got[0]), float(got[1]) + tol) >= (int(weight), float(total))


@pytest.mark.parametrize("policy", POLICIES)
@given(data=st.data())
def test_budget_below_forced_minimum_raises(policy: str, data: st.DataObject) -> None:
    case = data.draw(cases(), label="case")
    floor = forced_cost(case, policy)
    assume(floor > 0)
    budget = data.draw(st.integers(0, floor - 1), label="budget")
    with pytest.raises(BudgetError, match=rf"budget {budget} .*costs {floor}.*>= {floor}"):
        case.project(budget, policy, "global")
    assert case.project(floor, policy, "global").any()


@given(data=st.data(), order_key=st.sampled_from(("score", "density")))
def test_forced_units_equal_reference(data: st.DataObject, order_key: str) -> None:
    case = data.draw(cases(), label="case")
    got = forced_units(case.scores, case.costs, case.groups, case.minimum, order_key=order_key)
    assert got.tolist() == ref_forced(case, "density" if order_key == "density" else "rank")


@given(data=st.data())
def test_nan_score_is_rejected_with_its_index(data: st.DataObject) -> None:
    case = data.draw(cases(), label="case")
    n = case.scores.numel()
    bad = sorted(set(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3), label="nan at")))
    case.scores[bad] = math.nan
    with pytest.raises(ValueError, match=rf"NaN.*index {bad[0]}\b"):
        case.project(sum(case.c), data.draw(st.sampled_from(POLICIES)), "global")


# --- examples -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("policy", POLICIES)
def test_all_tied_scores_spread_over_groups(policy: str, scope: str) -> None:
    groups = torch.arange(4).repeat_interleave(10)
    costs = torch.full((40,), 7, dtype=torch.int64)
    mask = project(torch.full((40,), 0.25), costs, 20 * 7, groups=groups, policy=policy, scope=scope)
    assert torch.bincount(groups[mask], minlength=4).tolist() == [5, 5, 5, 5]


@pytest.mark.parametrize("policy", ("rank", "density"))
def test_all_tied_two_kinds_keep_half_of_every_group(policy: str) -> None:
    # 3 layers: 12 FFN channels of cost 3 and 4 KV groups of cost 9 each, budget half the total;
    # the walk keys all tie (density: scores proportional to cost)
    groups = torch.cat([torch.full((n,), g) for g, n in enumerate([12, 4] * 3)])
    costs = torch.where(groups % 2 == 0, 3, 9)
    scores = costs.float() if policy == "density" else torch.ones(48, dtype=torch.float32)
    mask = project(scores, costs, 108, groups=groups, policy=policy)
    assert torch.bincount(groups[mask], minlength=6).tolist() == [6, 2] * 3


@pytest.mark.parametrize("policy", POLICIES)
def test_uniform_scope_keeps_the_same_fraction(policy: str) -> None:
    groups = torch.tensor([0] * 10 + [1] * 20)
    scores = torch.cat([torch.linspace(10, 9, 10), torch.linspace(1, 0, 20)])
    costs = torch.ones(30, dtype=torch.int64)
    glob = project(scores, costs, 15, groups=groups, policy=policy)
    uni = project(scores, costs, 15, groups=groups, policy=policy, scope="uniform")
    assert torch.bincount(groups[glob]).tolist() == [10, 5]
    assert torch.bincount(groups[uni]).tolist() == [5, 10]


def test_policies_on_a_small_example() -> None:
    # group 0: one unit of cost 4 (score 10); group 1: two units of cost 3 (score 7)
    scores, costs, groups = torch.tensor([10.0, 7.0, 7.0]), torch.tensor([4, 3, 3]), torch.tensor([0, 1, 1])
    kept = {p: project(scores, costs, 6, groups=groups, minimum=0, policy=p).tolist() for p in POLICIES}
    assert kept == {"rank": [True, False, False], "density": [True, False, False], "optimal": [False, True, True]}
    # rank skips a unit that does not fit and keeps walking
    mask = project(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([5, 10, 3]), 9, minimum=0)
    assert mask.tolist() == [True, False, True]


def test_signed_zero_and_infinite_scores() -> None:
    scores = torch.tensor([-0.0, 0.0, -math.inf, math.inf, -0.0])
    mask = project(scores, torch.ones(5, dtype=torch.int64), 3, minimum=0)
    assert mask.tolist() == [True, True, False, True, False]  # -0.0 == 0.0, ties by position
    assert project(scores, torch.ones(5, dtype=torch.int64), 3, minimum=0, policy="optimal").tolist() == mask.tolist()


def test_tie_break_order_by_fraction_of_group() -> None:
    # group 0 fractions 1/8, 3/8, 5/8, 7/8; group 1 (interleaved) 1/4, 3/4
    assert tie_break_order(torch.tensor([0, 0, 0, 0, 1, 1])).tolist() == [0, 4, 1, 2, 5, 3]
    assert tie_break_order(torch.tensor([1, 0, 0, 1, 0, 0])).tolist() == [1, 0, 2, 4, 3, 5]
    assert tie_break_order(torch.tensor([0, 1])).tolist() == [0, 1]  # equal fractions: by group


def test_tie_order_cache_follows_groups() -> None:
    """project() remembers the tie order of the last groups; other or mutated groups must not reuse it."""
    scores, costs = torch.zeros(6), torch.ones(6, dtype=torch.int64)
    first, second = torch.tensor([0, 0, 0, 0, 1, 1]), torch.tensor([1, 1, 0, 0, 0, 0])
    keep_first = [True, False, False, False, True, False]
    keep_second = [True, False, True, False, False, False]
    assert project(scores, costs, 2, groups=first, minimum=0).tolist() == keep_first
    assert project(scores, costs, 2, groups=second, minimum=0).tolist() == keep_second
    assert project(scores, costs, 2, groups=first, minimum=0).tolist() == keep_first
    first[:] = second  # mutated in place after a call
    assert project(scores, costs, 2, groups=first, minimum=0).tolist() == keep_second


def test_edge_budgets_and_empty_input() -> None:
    costs = torch.tensor([2, 3, 4])
    assert project(torch.zeros(3), costs, 10**30, minimum=0).all()
    assert not project(torch.zeros(3), costs, 0, minimum=0).any()
    assert project(torch.zeros(3), costs, 1, minimum=0).tolist() == [False] * 3
    for policy, scope, round_to, budget in itertools.product(POLICIES, SCOPES, (None, 4), (0, 5)):
        empty = project(torch.zeros(0), torch.zeros(0, dtype=torch.int64), budget, policy=policy, scope=scope, round_to=round_to)
        assert empty.dtype == torch.bool and empty.shape == (0,)


def test_costs_changed_in_place_are_seen() -> None:
    """Per-group facts remembered between calls (one cost per group) follow the costs, not their identity."""
    scores, groups = torch.tensor([4.0, 3.0, 2.0, 1.0]), torch.tensor([0, 0, 0, 0])
    costs = torch.tensor([1, 1, 1, 1])
    assert project(scores, costs, 2, groups=groups, round_to=2, policy="optimal").tolist() == [True, True, False, False]
    costs[1] = 2  # now two unit costs in the rounded group
    with pytest.raises(ValueError, match="one unit cost per rounded group"):
        project(scores, costs, 2, groups=groups, round_to=2, policy="optimal")


def test_budget_error_message() -> None:
    costs, groups = torch.tensor([5, 6, 7, 8]), torch.tensor([0, 0, 1, 1])
    with pytest.raises(BudgetError) as err:
        project(torch.tensor([1.0, 2.0, 3.0, 4.0]), costs, 13, groups=groups)
    assert "budget 13" in str(err.value) and "costs 14" in str(err.value) and ">= 14" in str(err.value)
    with pytest.raises(BudgetError):
        project(torch.zeros(4), costs, -1, minimum=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": torch.tensor([0.0, math.nan])}, "NaN.*index 1"),
        ({"scores": torch.tensor([1, 2, 3])}, "floating-point"),
        ({"scores": torch.zeros(2, 2)}, "1-D"),
        ({"costs": torch.tensor([1, 0, 1])}, "index 1"),
        ({"costs": torch.tensor([1.0, 1.0, 1.0])}, "int64"),
        ({"costs": torch.tensor([1, 1])}, "entries"),
        ({"groups": torch.tensor([0, 1])}, "entries"),
        ({"groups": torch.tensor([0, -1, 1])}, ">= 0"),
        ({"minimum": torch.tensor([1, 1])}, "out of range"),
        ({"minimum": 2}, "exceeds its size"),
        ({"minimum": torch.tensor([1, 2, 0])}, "exceeds its size"),
        ({"minimum": torch.tensor([1, -1, 0])}, ">= 0"),
        ({"minimum": 0.5}, "minimum"),
        ({"policy": "best"}, "policy"),
        ({"scope": "local"}, "scope"),
        ({"budget": 2.5}, "budget"),
    ],
)
def test_invalid_inputs(kwargs: dict, message: str) -> None:
    args = {"scores": torch.zeros(3), "costs": torch.ones(3, dtype=torch.int64), "budget": 3, "groups": torch.tensor([0, 1, 2]), "minimum": None} | kwargs
    with pytest.raises(ValueError, match=message):
        project(args.pop("scores"), args.pop("costs"), args.pop("budget"), **args)


# --- rounded widths (round_to) ----------------------------------------------------------------------


@st.composite
def rounded_cases(
    draw, max_layers: int = 5, max_group: int = 14, max_units: int | None = None, cost_modes=("model", "two", "one", "per_group", "per_unit")
) -> tuple[Case, list[int]]:
    """A case and a per-group ``round_to``; rounded groups (``r > 1``) have one unit cost each."""
    case = draw(cases(max_layers=max_layers, max_group=max_group, max_units=max_units, cost_modes=cost_modes))
    g, c = case.g, case.c
    single = {j: len({ci for ci, gi in zip(c, g) if gi == j}) == 1 for j in range(case.num_groups)}
    kind = draw(st.sampled_from(("ffn", "all", "random")))
    r_values = st.integers(2, 6)
    if kind == "ffn":  # the model case: FFN groups (even ids) rounded, KV groups whole units
        r = draw(r_values)
        round_to = [r if j % 2 == 0 else 1 for j in range(case.num_groups)]
    elif kind == "all":
        round_to = [draw(r_values)] * case.num_groups
    else:
        round_to = draw(st.lists(st.integers(1, 6), min_size=case.num_groups, max_size=case.num_groups))
    round_to = [r if single[j] else 1 for j, r in enumerate(round_to)]
    assume(any(r > 1 and g.count(j) > 1 for j, r in enumerate(round_to)))
    return case, round_to


def ref_rounded_minimum(case: Case, round_to: list[int]) -> list[int]:
    size = Counter(case.g)
    return [min(-(-m // r) * r, size[j]) for j, (m, r) in enumerate(zip(case.mins, round_to))]


def sequential_sum(values: list[float]) -> float:
    """Left-to-right float sum, as the projector sums a block's keys in rank order.

    Exact arithmetic ties a block's mean with a unit of the same key (score 2 over three units of cost
    39 against one unit with 2/3 of it); the two walks only agree on such ties when they round alike.
    """
    total = 0.0
    for value in values:
        total += value
    return total


def ref_rounded(case: Case, round_to: list[int], policy: str, scope: str, budget: int) -> list[bool]:
    """Plain sequential reference: blocks of each group by rank, walked by mean key, skip-and-continue,
    a rounded group closed at its first block that does not fit."""
    s, c, g = case.s, case.c, case.g
    unit_keys = [s[i] / c[i] for i in range(len(s))] if policy == "density" else s
    order = ref_walk(unit_keys, g)
    rank, size = ref_ranks(order, g), Counter(g)
    keys = ref_keys(case, policy, scope)
    mins = ref_rounded_minimum(case, round_to)
    by_group: dict[int, list[int]] = {}
    for i in order:
        by_group.setdefault(g[i], []).append(i)
    seen: Counter[int] = Counter()
    frac = {}
    for i in range(len(g)):
        frac[i] = (seen[g[i]] + 0.5) / size[g[i]]
        seen[g[i]] += 1
    blocks = []  # (mean weight, mean finite, tie fraction, group, members)
    for j in sorted(by_group):
        members, r = by_group[j], round_to[j]
        chunks = [members[k : k + r] for k in range(0, len(members), r)]
        for b, chunk in enumerate(chunks):
            w = [1.0 if keys[i] == math.inf else -1.0 if keys[i] == -math.inf else 0.0 for i in chunk]
            f = [0.0 if math.isinf(keys[i]) else keys[i] for i in chunk]
            if scope == "uniform":
                first = rank[chunk[0]]
                f = [(1.0 - (first + (len(chunk) - 1) / 2) / size[j]) * len(chunk)]
            tie = frac[chunk[0]] if r == 1 else (b + 0.5) / len(chunks)
            blocks.append((sum(w) / len(chunk), sequential_sum(f) / len(chunk), tie, j, b, chunk))
    keep = [False] * len(s)
    left = budget
    for blk in blocks:  # forced: the blocks inside the rounded minimum
        if blk[4] * round_to[blk[3]] < mins[blk[3]]:
            for i in blk[5]:
                keep[i] = True
            left -= sum(c[i] for i in blk[5])
    walk = sorted(blocks, key=lambda b: (-b[0], -b[1], b[2], b[3], b[4]))
    # Block means fall within a group in exact arithmetic; float rounding can invert two nearly equal
    # ones (a short last block's mean against a full block's), and a group's kept units are a prefix:
    # the walk's slots of each group take its blocks in block order.
    for j in by_group:
        slots = [k for k, blk in enumerate(walk) if blk[3] == j]
        for k, blk in zip(slots, sorted((walk[k] for k in slots), key=lambda blk: blk[4])):
            walk[k] = blk
    closed = set()
    for _, _, _, j, b, chunk in walk:
        if keep[chunk[0]] or j in closed:
            continue
        cost = sum(c[i] for i in chunk)
        if cost <= left:
            for i in chunk:
                keep[i] = True
            left -= cost
        elif round_to[j] > 1:
            closed.add(j)
    return keep


def draw_rounded_budget(data: st.DataObject, case: Case, round_to: list[int], policy: str) -> int:
    """A budget from the cost of the rounded forced minimum up to the total (+1)."""
    unit_keys = [si / ci for si, ci in zip(case.s, case.c)] if policy == "density" else case.s
    rank, mins = ref_ranks(ref_walk(unit_keys, case.g), case.g), ref_rounded_minimum(case, round_to)
    floor = sum(ci for ci, gi, ri in zip(case.c, case.g, rank) if ri < mins[gi])
    return data.draw(st.integers(floor, sum(case.c) + 1), label="budget")


def assert_rounded_contract(mask: torch.Tensor, case: Case, round_to: list[int], budget: int, policy: str) -> None:
    """Admissible widths, rounded minimums, prefix of the group's own order, and exact budget:
    no dropped unit of an unrounded group and no next block of a rounded group fits."""
    keep, c, g = mask.tolist(), case.c, case.g
    size = Counter(g)
    kept_count = Counter(gi for gi, k in zip(g, keep) if k)
    kept = sum(ci for ci, k in zip(c, keep) if k)
    assert kept <= budget
    left = budget - kept
    for j, r in enumerate(round_to):
        n, k = size[j], kept_count[j]
        assert k >= ref_rounded_minimum(case, round_to)[j]
        if r == 1 or n <= 1:
            assert all(ci > left for ci, kk, gi in zip(c, keep, g) if gi == j and not kk), "a dropped unit still fits"
            continue
        assert k % r == 0 or k == n, f"group {j} keeps {k} of {n}, not a multiple of {r}"
        if k < n:
            unit = next(ci for ci, gi in zip(c, g) if gi == j)
            assert min(r, n - k) * unit > left, "the group's next block still fits"
        unit_keys = [case.s[i] / c[i] if policy == "density" else case.s[i] for i in range(len(c))]
        rank = ref_ranks(ref_walk(unit_keys, g), g)
        assert all(rank[i] < k for i in range(len(c)) if g[i] == j and keep[i]), "kept units are not the group's best"


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("policy", POLICIES)
@given(data=st.data())
def test_rounded_widths_meet_budget_exactly(policy: str, scope: str, data: st.DataObject) -> None:
    case, round_to = data.draw(rounded_cases(), label="case")
    budget = draw_rounded_budget(data, case, round_to, policy)
    rt = torch.tensor(round_to)
    mask = project(case.scores, case.costs, budget, groups=case.groups, minimum=case.minimum, policy=policy, scope=scope, round_to=rt)
    assert_rounded_contract(mask, case, round_to, budget, policy)
    assert torch.equal(mask, project(case.scores, case.costs, budget, groups=case.groups, minimum=case.minimum, policy=policy, scope=scope, round_to=rt)), (
        "not deterministic"
    )
    check_meets_budget(mask, case.costs, budget, case.groups, torch.tensor(case.mins), rt)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("policy", ("rank", "density"))
@given(data=st.data(), rounds=st.sampled_from((0, 1, 64)))
def test_rounded_greedy_equals_sequential_reference(policy: str, scope: str, data: st.DataObject, rounds: int) -> None:
    """Also with the vectorised rounds cut short (0, 1) so the plain loop finishes the walk."""
    case, round_to = data.draw(rounded_cases(), label="case")
    budget = draw_rounded_budget(data, case, round_to, policy)
    with mock.patch.object(projection_walks, "_MAX_ROUNDS", rounds):
        mask = project(case.scores, case.costs, budget, groups=case.groups, minimum=case.minimum, policy=policy, scope=scope, round_to=torch.tensor(round_to))
    assert mask.tolist() == ref_rounded(case, round_to, policy, scope, budget)


@pytest.mark.parametrize("scope", SCOPES)
@given(data=st.data())
def test_rounded_optimal_reaches_brute_force_optimum(scope: str, data: st.DataObject) -> None:
    """Rounded groups whose size is a multiple of round_to, blocks of two costs, N <= 12: the best of
    all masks with admissible widths that meet the budget exactly (rounded sense) and hold the minimums."""
    case = data.draw(cases(max_layers=3, max_units=12, cost_modes=("model", "two", "one")), label="case")
    size = Counter(case.g)
    round_to = [data.draw(st.sampled_from([d for d in range(1, size[j] + 1) if size[j] % d == 0]), label=f"round_to[{j}]") for j in range(case.num_groups)]
    assume(any(r > 1 for r in round_to))
    assume(len({case.c[case.g.index(j)] * r for j, r in enumerate(round_to)}) <= 2)  # blocks of two costs
    mins = ref_rounded_minimum(case, round_to)
    floor = sum(case.c[case.g.index(j)] * m for j, m in enumerate(mins) if m)
    budget = data.draw(st.integers(floor, sum(case.c) + 1), label="budget")
    mask = project(case.scores, case.costs, budget, groups=case.groups, minimum=case.minimum, policy="optimal", scope=scope, round_to=torch.tensor(round_to))
    assert_rounded_contract(mask, case, round_to, budget, "optimal")
    n = len(case.c)
    masks = (torch.arange(2**n)[:, None] >> torch.arange(n)) & 1 == 1
    kept = (masks.long() * case.costs).sum(1)
    counts = torch.zeros(2**n, case.num_groups, dtype=torch.int64).index_add_(1, case.groups, masks.long())
    r, total = torch.tensor(round_to), torch.tensor([size[j] for j in range(case.num_groups)])
    unit = torch.tensor([case.c[case.g.index(j)] for j in range(case.num_groups)])
    admissible = ((counts % r == 0) | (counts == total)).all(1) & (counts >= torch.tensor(mins)).all(1)
    step = torch.minimum(r, total - counts) * unit
    tight = ((counts == total) | (step > (budget - kept)[:, None])).all(1)
    valid = admissible & (kept <= budget) & tight
    keys = ref_keys(case, "optimal", scope)
    weight, sums = objective(keys, masks[valid])
    best_weight = weight.max()
    best_sum = sums[weight == best_weight].max()
    got_weight, got_sum = objective(keys, mask)
    tol = 1e-9 * sum(abs(k) for k in keys if math.isfinite(k))
    assert int(got_weight) == int(best_weight)
    assert float(got_sum) >= float(best_sum) - tol


@given(data=st.data(), policy=st.sampled_from(POLICIES), scope=st.sampled_from(SCOPES))
def test_round_to_one_is_no_rounding(data: st.DataObject, policy: str, scope: str) -> None:
    case = data.draw(cases(), label="case")
    budget = draw_budget(data, case, policy)
    plain = case.project(budget, policy, scope)
    for round_to in (1, torch.ones(case.num_groups, dtype=torch.int64)):
        assert torch.equal(
            project(case.scores, case.costs, budget, groups=case.groups, minimum=case.minimum, policy=policy, scope=scope, round_to=round_to), plain
        )


def test_rounded_mixed_costs_and_bad_round_to_are_rejected() -> None:
    scores, groups = torch.zeros(4), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="one unit cost per rounded group: group 1"):
        project(scores, torch.tensor([2, 2, 3, 4]), 10, groups=groups, round_to=2)
    with pytest.raises(ValueError, match=r"round_to must be >= 1 \(group 0"):
        project(scores, torch.ones(4, dtype=torch.int64), 10, groups=groups, round_to=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="out of range for a round_to"):
        project(scores, torch.ones(4, dtype=torch.int64), 10, groups=groups, round_to=torch.tensor([2]))
    with pytest.raises(BudgetError, match="rounded up to multiples of round_to"):
        project(scores, torch.ones(4, dtype=torch.int64), 2, groups=groups, round_to=2)


def test_rounded_example_keeps_whole_blocks() -> None:
    # one FFN group of 8 channels (cost 1) with round_to 4, one KV group of 2 units (cost 3)
    groups = torch.tensor([0] * 8 + [1] * 2)
    costs = torch.tensor([1] * 8 + [3] * 2)
    scores = torch.tensor([9.0, 8, 7, 6, 5, 4, 3, 2, 4.5, 1])
    mask = project(scores, costs, 10, groups=groups, minimum=0, round_to=torch.tensor([4, 1]))
    # blocks: {9,8,7,6} mean 7.5, {5,4,3,2} mean 3.5; KV 4.5 then 1 -> first block (4), KV (3), second
    # block does not fit in the 3 left, so the group closes; the other KV unit (3) fits
    assert mask.tolist() == [True] * 4 + [False] * 4 + [True, True]
    # unrounded: channels 9..5 (5), KV 4.5 (3), channels 4 and 3 (2): seven channels
    assert project(scores, costs, 10, groups=groups, minimum=0).tolist() == [True] * 7 + [False] + [True, False]
    assert project(scores, costs, 9, groups=groups, minimum=0, round_to=torch.tensor([4, 1])).tolist() == [True] * 4 + [False] * 4 + [True, False]


@given(data=st.data(), order_key=st.sampled_from(("score", "density")))
def test_forced_units_with_round_to_equal_reference(data: st.DataObject, order_key: str) -> None:
    case, round_to = data.draw(rounded_cases(), label="case")
    got = forced_units(case.scores, case.costs, case.groups, case.minimum, order_key=order_key, round_to=torch.tensor(round_to))
    unit_keys = [si / ci for si, ci in zip(case.s, case.c)] if order_key == "density" else case.s
    rank, mins = ref_ranks(ref_walk(unit_keys, case.g), case.g), ref_rounded_minimum(case, round_to)
    assert got.tolist() == [rank[i] < mins[case.g[i]] for i in range(len(case.g))]
