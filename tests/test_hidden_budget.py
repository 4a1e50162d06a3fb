"""Property tests of the hidden dimension's costs and projection (:mod:`pruneframe.pipeline.hidden_budget`).

The cost model is checked against transformers' own parameter count of the model a mask describes
(uniform widths: a Llama built on the meta device with the smaller sizes) and against an independent
per-tensor count (uneven widths); the projection against the exactness rule by brute force.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from pruneframe.pipeline.hidden_budget import HiddenCostModel, balanced_width, project_with_hidden, top_hidden_mask
from pruneframe.pipeline.projection import BudgetError


@dataclass(frozen=True)
class Shape:
    """A Llama-style model's sizes: every layer alike before pruning."""

    vocab: int
    hidden: int
    layers: int
    ffn: int
    kv_heads: int
    queries_per_group: int
    head_dim: int
    tied: bool
    attention_bias: bool
    mlp_bias: bool
    shortcuts: bool = False  # an h x h matrix on each residual connection (SliceGPT's per-layer rotations)

    def config(self, hidden: int | None = None, ffn: int | None = None, kv_heads: int | None = None) -> LlamaConfig:
        kv = self.kv_heads if kv_heads is None else kv_heads
        heads = kv * self.queries_per_group
        config = LlamaConfig(
            vocab_size=self.vocab,
            hidden_size=heads,  # transformers checks hidden % heads on construction only; the sizes are set below
            intermediate_size=self.ffn if ffn is None else ffn,
            num_hidden_layers=self.layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            head_dim=self.head_dim,
            tie_word_embeddings=self.tied,
            attention_bias=self.attention_bias,
            mlp_bias=self.mlp_bias,
        )
        config.hidden_size = self.hidden if hidden is None else hidden
        return config

    def cost_model(self) -> HiddenCostModel:
        """Units layer by layer, FFN channels then KV groups, as :class:`~pruneframe.pipeline.units.UnitSet` orders them."""
        g, hd = self.queries_per_group, self.head_dim
        ffn_a, ffn_b = 3, 2 * self.mlp_bias
        kv_a, kv_b = (2 * g + 2) * hd, (g + 2) * hd * self.attention_bias
        a = ([ffn_a] * self.ffn + [kv_a] * self.kv_heads) * self.layers
        b = ([ffn_b] * self.ffn + [kv_b] * self.kv_heads) * self.layers
        norms = 2 * self.layers + 1
        per_channel = self.vocab * (1 if self.tied else 2) + norms + self.layers * (self.attention_bias + self.mlp_bias)
        costs = HiddenCostModel.from_counts(
            meta_count(self.config()), self.hidden, per_channel, torch.tensor(a, dtype=torch.long), torch.tensor(b, dtype=torch.long)
        )
        return costs.with_shortcuts(2 * self.layers) if self.shortcuts else costs

    def shortcut_params(self, hidden: int) -> int:
        """The residual shortcut matrices' entries at width ``hidden`` (two per layer when the shape has them)."""
        return 2 * self.layers * hidden * hidden * self.shortcuts

    def unit_mask(self, ffn_kept: list[int], kv_kept: list[int]) -> torch.Tensor:
        """The mask keeping the first ``ffn_kept[l]`` channels and ``kv_kept[l]`` groups of each layer."""
        parts = []
        for f, k in zip(ffn_kept, kv_kept):
            parts += [torch.arange(self.ffn) < f, torch.arange(self.kv_heads) < k]
        return torch.cat(parts)

    def tensor_count(self, hidden: int, ffn_kept: list[int], kv_kept: list[int]) -> int:
        """Parameters of the model with these widths, tensor by tensor (an independent count)."""
        g, hd = self.queries_per_group, self.head_dim
        n = self.vocab * hidden * (1 if self.tied else 2) + hidden  # embedding, lm_head, final norm
        for f, k in zip(ffn_kept, kv_kept):
            n += 2 * hidden  # input and post-attention norms
            n += (k * g * hd + 2 * k * hd) * hidden + k * g * hd * hidden  # q, k, v, o
            n += self.attention_bias * (k * g * hd + 2 * k * hd + hidden)
            n += 3 * f * hidden + self.mlp_bias * (2 * f + hidden)
        return n + self.shortcut_params(hidden)


def meta_count(config: LlamaConfig) -> int:
    """transformers' own count of a model's parameters (tied weights once), built without memory."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    return Shape(
        vocab=draw(st.integers(5, 40)),
        hidden=draw(st.integers(2, 24)),
        layers=draw(st.integers(1, 3)),
        ffn=draw(st.integers(1, 8)),
        kv_heads=draw(st.integers(1, 3)),
        queries_per_group=draw(st.integers(1, 3)),
        head_dim=draw(st.sampled_from([2, 4])),
        tied=draw(st.booleans()),
        attention_bias=draw(st.booleans()),
        mlp_bias=draw(st.booleans()),
        shortcuts=draw(st.booleans()),
    )


@given(shapes(), st.data())
def test_the_cost_model_is_transformers_own_count_for_uniform_widths(shape: Shape, data: st.DataObject) -> None:
    costs = shape.cost_model()
    assert costs.dense_total == meta_count(shape.config()) + shape.shortcut_params(shape.hidden)
    hidden = data.draw(st.integers(1, shape.hidden))
    ffn = data.draw(st.integers(1, shape.ffn))
    kv = data.draw(st.integers(1, shape.kv_heads))
    mask = shape.unit_mask([ffn] * shape.layers, [kv] * shape.layers)
    assert costs.total(hidden, mask) == meta_count(shape.config(hidden, ffn, kv)) + shape.shortcut_params(hidden)


@given(shapes(), st.data())
def test_the_cost_model_matches_a_tensor_by_tensor_count_for_uneven_widths(shape: Shape, data: st.DataObject) -> None:
    costs = shape.cost_model()
    hidden = data.draw(st.integers(1, shape.hidden))
    ffn = data.draw(st.lists(st.integers(0, shape.ffn), min_size=shape.layers, max_size=shape.layers))
    kv = data.draw(st.lists(st.integers(0, shape.kv_heads), min_size=shape.layers, max_size=shape.layers))
    assert costs.total(hidden, shape.unit_mask(ffn, kv)) == shape.tensor_count(hidden, ffn, kv)
    # one more hidden channel costs exactly what the model then gains: its shared entries, its entries in
    # every kept unit, and a row and a column of every shortcut matrix
    mask = shape.unit_mask(ffn, kv)
    if hidden < shape.hidden:
        gained = costs.per_channel + int(costs.unit_per_channel[mask].sum()) + costs.shortcuts * (2 * hidden + 1)
        assert costs.total(hidden + 1, mask) - costs.total(hidden, mask) == gained


@given(shapes(), st.data())
def test_projection_meets_the_target_exactly_over_the_joint_space(shape: Shape, data: st.DataObject) -> None:
    costs = shape.cost_model()
    n = len(costs)
    unit_scores = torch.tensor(data.draw(st.lists(st.floats(-5, 5), min_size=n, max_size=n)), dtype=torch.float64)
    hidden_scores = torch.tensor(data.draw(st.lists(st.floats(-5, 5), min_size=shape.hidden, max_size=shape.hidden)), dtype=torch.float64)
    keep = data.draw(st.floats(0.05, 1.0))
    round_to = data.draw(st.sampled_from([1, 2, 4]))
    target = data.draw(st.integers(costs.fixed, costs.dense_total + 50))
    groups = torch.arange(2 * shape.layers).repeat_interleave(torch.tensor([shape.ffn, shape.kv_heads] * shape.layers))
    try:
        result = project_with_hidden(costs, hidden_scores, unit_scores, target, keep, hidden_round_to=round_to, groups=groups, minimum=0)
    except BudgetError:
        width = min(shape.hidden, -(-max(1, math.ceil(keep * shape.hidden - 1e-9)) // round_to) * round_to)
        assert costs.hidden_only(width) > target  # only the hidden channels alone can overrun it
        return
    h, mask = result.hidden_kept, result.unit_mask
    # within the target, and the count is what the masks describe
    assert result.total == costs.total(h, mask) <= target
    # no dropped unit fits at the final width ...
    left = target - result.total
    dropped_costs = costs.unit_costs(h)[~mask]
    assert bool((dropped_costs > left).all())
    # ... and neither does the next admissible hidden block
    if h < shape.hidden:
        wider = min(shape.hidden, -(-(h + 1) // round_to) * round_to)
        assert costs.total(wider, mask) > target
    # the hidden width is admissible and at least what was asked for; the best channels are the ones kept
    assert h % round_to == 0 or h == shape.hidden
    assert h >= min(shape.hidden, keep * shape.hidden - 1e-6)
    kept_scores, dropped_scores = hidden_scores[result.hidden_mask], hidden_scores[~result.hidden_mask]
    if dropped_scores.numel() and kept_scores.numel():
        assert float(kept_scores.min()) >= float(dropped_scores.max())


@given(shapes(), st.data())
def test_brute_force_no_mask_of_the_same_width_adds_to_the_kept_set_within_the_target(shape: Shape, data: st.DataObject) -> None:
    """On small cases: every superset of the kept units (one more unit, any of them) exceeds the target."""
    costs = shape.cost_model()
    n = len(costs)
    assume(n <= 12)
    scores = torch.tensor(data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)), dtype=torch.float64)
    target = data.draw(st.integers(costs.fixed, costs.dense_total))
    try:
        result = project_with_hidden(costs, torch.ones(shape.hidden), scores, target, 1.0, minimum=0)
    except BudgetError:
        assert costs.hidden_only(shape.hidden) > target
        return
    for u in range(n):
        if not result.unit_mask[u]:
            bigger = result.unit_mask.clone()
            bigger[u] = True
            assert costs.total(shape.hidden, bigger) > target


@given(shapes(), st.data())
def test_the_balanced_width_is_the_widest_whose_share_the_units_can_match(shape: Shape, data: st.DataObject) -> None:
    costs = shape.cost_model()
    round_to = data.draw(st.integers(1, shape.hidden))
    target = data.draw(st.integers(0, costs.dense_total))
    width = balanced_width(costs, target, round_to)
    d, every = shape.hidden, torch.ones(len(costs), dtype=torch.bool)

    def balanced(h: int) -> bool:  # h / d <= (what the target leaves the units) / (the units' full cost), exactly
        hidden_only = costs.hidden_only(h)
        return h * (costs.total(h, every) - hidden_only) <= (target - hidden_only) * d

    candidates = sorted({*range(round_to, d + 1, round_to), d})
    assert width in candidates
    passing = [h for h in candidates if balanced(h)]
    # brute force: the widest width that holds, or the narrowest when none does
    assert width == (max(passing) if passing else candidates[0])
    # and the widths that hold are a prefix, which is why a scan may stop at the first that fails
    assert passing == candidates[: len(passing)]
    assert balanced_width(costs, costs.dense_total, round_to) == d


def test_top_hidden_mask_breaks_ties_by_index_and_refuses_bad_input() -> None:
    assert top_hidden_mask(torch.tensor([1.0, 2.0, 2.0, 0.0]), 2).tolist() == [False, True, True, False]
    assert top_hidden_mask(torch.zeros(4), 2).tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="cannot keep 5 of 4"):
        top_hidden_mask(torch.zeros(4), 5)
    with pytest.raises(ValueError, match="NaN"):
        top_hidden_mask(torch.tensor([float("nan")]), 1)


def test_inconsistent_counts_are_refused() -> None:
    a, b = torch.tensor([3, 3]), torch.tensor([0, 0])
    with pytest.raises(ValueError, match="exceed the model's 10 parameters"):
        HiddenCostModel.from_counts(10, 4, 2, a, b)
    with pytest.raises(ValueError, match="cost something"):
        HiddenCostModel(4, 0, 1, torch.tensor([0]), torch.tensor([0]))
