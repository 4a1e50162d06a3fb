"""Property tests: projection with removable blocks meets the budget exactly, holds the minimums, and
removes a block exactly when all of its units are dropped (its overhead credited then and only then)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from pruneframe.pipeline.projection import BudgetError
from pruneframe.pipeline.removal import budget_cost, check_removal, empty_groups, item_of_group, project_removal


@st.composite
def layered(draw):  # noqa: ANN201 - a dict of tensors
    """A random model's units: per layer an FFN group and a KV group with one cost each, norms as overhead."""
    layers = draw(st.integers(1, 6))
    groups, costs, overhead = [], [], []
    for layer in range(layers):
        for kind, (lo, hi) in enumerate(((1, 12), (0, 4))):
            n = draw(st.integers(lo, hi))
            cost = draw(st.integers(1, 40)) if kind == 0 else draw(st.integers(20, 200))
            groups += [2 * layer + kind] * n
            costs += [cost] * n
            overhead.append(draw(st.integers(0, 30)))
    n = len(groups)
    assume(n > 0)
    scores = draw(st.lists(st.one_of(st.floats(-5, 5, allow_nan=False), st.sampled_from([0.0, 1.0])), min_size=n, max_size=n))
    removable = draw(st.lists(st.booleans(), min_size=2 * layers, max_size=2 * layers))
    total = sum(costs)
    keep = draw(st.floats(0.0, 1.0))
    return {
        "scores": torch.tensor(scores, dtype=torch.float64),
        "costs": torch.tensor(costs, dtype=torch.long),
        "groups": torch.tensor(groups, dtype=torch.long),
        "overhead": torch.tensor(overhead, dtype=torch.long),
        "removable": torch.tensor(removable),
        "budget": math.floor(keep * total),
    }


def _minimum(case: dict) -> torch.Tensor:
    counts = torch.bincount(case["groups"], minlength=case["overhead"].numel())
    return torch.minimum(counts, torch.ones_like(counts))


@pytest.mark.parametrize("removal", ["mixed", "blocks", "layers"])
@given(case=layered())
def test_removal_masks_meet_the_budget_exactly(removal: str, case: dict) -> None:
    """Every mask passes the exactness check, or the non-removable minimums alone do not fit."""
    minimum = _minimum(case)
    kwargs = dict(groups=case["groups"], overhead=case["overhead"], removal=removal, removable=case["removable"], minimum=minimum)
    try:
        mask = project_removal(case["scores"], case["costs"], case["budget"], **kwargs)
    except BudgetError:
        # only when what must stay (non-removable groups: their minimum, or whole items) cannot fit
        forced = ~case["removable"]
        has_units = torch.bincount(case["groups"], minlength=case["overhead"].numel()) > 0
        overhead = torch.where(has_units, case["overhead"], 0)  # a group without units sheds nothing
        if removal == "mixed":
            need = sum(int(case["costs"][case["groups"] == g][: int(minimum[g])].sum()) for g in forced.nonzero().flatten().tolist())
            need -= int(overhead[case["removable"]].sum())
        else:
            item = item_of_group(case["overhead"].numel(), removal)
            forced_items = set(item[forced & has_units].tolist())
            costs = [int(case["costs"][item[case["groups"]] == i].sum()) + int(overhead[item == i].sum()) for i in forced_items]
            need = sum(costs) - int(overhead.sum())
        assert need > case["budget"]
        return
    check_removal(mask, case["costs"], case["budget"], **kwargs)
    spent = budget_cost(mask, case["costs"], case["groups"], case["overhead"], case["removable"])
    assert spent <= case["budget"]


@pytest.mark.parametrize("removal", ["mixed", "blocks", "layers"])
@given(case=layered())
def test_a_block_is_removed_exactly_when_all_its_units_are(removal: str, case: dict) -> None:
    """The overhead is credited for exactly the emptied removable groups; non-removable groups never empty."""
    kwargs = dict(groups=case["groups"], overhead=case["overhead"], removal=removal, removable=case["removable"], minimum=_minimum(case))
    try:
        mask = project_removal(case["scores"], case["costs"], case["budget"], **kwargs)
    except BudgetError:
        return
    empty = empty_groups(mask, case["groups"], case["overhead"].numel())
    counts = torch.bincount(case["groups"], minlength=case["overhead"].numel())
    assert not bool((empty & ~case["removable"] & (counts > 0)).any())
    # a group without units has no block left to remove: it sheds nothing
    expected = int(case["costs"][mask].sum()) - int(case["overhead"][empty & case["removable"] & (counts > 0)].sum())
    assert budget_cost(mask, case["costs"], case["groups"], case["overhead"], case["removable"]) == expected


@given(case=layered())
def test_whole_layers_drop_both_blocks_together(case: dict) -> None:
    """In ``layers`` mode a layer's FFN and KV groups are both kept whole or both removed."""
    kwargs = dict(groups=case["groups"], overhead=case["overhead"], removal="layers", removable=case["removable"], minimum=_minimum(case))
    try:
        mask = project_removal(case["scores"], case["costs"], case["budget"], **kwargs)
    except BudgetError:
        return
    layers = case["overhead"].numel() // 2
    for layer in range(layers):
        in_layer = (case["groups"] // 2) == layer
        assert bool(mask[in_layer].all()) or not bool(mask[in_layer].any())


def test_check_refuses_a_loose_and_a_partial_mask() -> None:
    """Hand-made masks: a block that still fits is not tight; a partly kept block breaks ``blocks`` mode."""
    groups = torch.tensor([0, 0, 1, 2, 2, 3])
    costs = torch.tensor([2, 2, 10, 2, 2, 10])
    overhead = torch.tensor([1, 1, 1, 1])
    kw = dict(groups=groups, overhead=overhead)
    # keeps layer 0 whole (2+2+10 + overheads) and drops layer 1 (cost 16 with its norms): 16 left would fit it
    mask = torch.tensor([True, True, True, False, False, False])
    with pytest.raises(BudgetError, match="not tight"):
        check_removal(mask, costs, 30, removal="layers", **kw)
    check_removal(mask, costs, 14 + 2 - 4 + 4, removal="layers", **kw)  # 16 spent of 16: exact
    with pytest.raises(BudgetError, match="keeps items whole"):
        check_removal(torch.tensor([True, False, True, True, True, True]), costs, 100, removal="blocks", **kw)


def test_mixed_hand_computation() -> None:
    """Two layers; the scores rank all of layer 1's FFN channels out: the MLP block goes and its norm's
    parameters are spent on one more channel of layer 0."""
    groups = torch.tensor([0, 0, 0, 1, 2, 2, 3])
    costs = torch.tensor([3, 3, 3, 20, 3, 3, 20])
    overhead = torch.tensor([3, 5, 3, 5])
    scores = torch.tensor([5.0, 4.0, 3.0, 9.0, 0.1, 0.2, 8.0])
    # budget 46: units of both KV blocks (40) + 2 FFN channels = 46 with every block present; removing
    # layer 1's MLP block (both channels out) credits 3, enough for layer 0's third channel
    mask = project_removal(scores, costs, 46, groups=groups, overhead=overhead, removal="mixed")
    assert mask.tolist() == [True, True, True, True, False, False, True]
    check_removal(mask, costs, 46, groups=groups, overhead=overhead, removal="mixed")
