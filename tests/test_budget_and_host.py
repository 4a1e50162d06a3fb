"""Budgets (typed, validated), the plugin host and the public prune() contract."""

from __future__ import annotations

import math

import pluggy
import pytest
import torch
from tiny import tiny_model

import pruneframe
from pruneframe.architectures import discover
from pruneframe.pipeline.budget import (
    BudgetError,
    KeepParams,
    KeepPrunable,
    KeepTotal,
    check_meets_budget,
    group_round_to,
    make_budget,
    resolve,
)
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.fold import fold
from pruneframe.pipeline.host import PluginError, PluginHost, UnknownNameError
from pruneframe.pipeline.methods import PruningMethod
from pruneframe.pipeline.projection import project


class Scores(PruningMethod):
    """A test method: scores = unit index (keeps the last units)."""

    name = "by-index"

    def score(self, context):
        return torch.arange(len(context.units), dtype=torch.float32)


class RegisterScores:
    @hookimpl
    def pruneframe_register_methods(self, register):
        register(Scores)


def _host() -> PluginHost:
    return PluginHost.create(plugins=[RegisterScores()])


@pytest.mark.parametrize("kind", ["prunable", "total"])
@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), float("inf"), "half", True])
def test_ratio_budgets_reject_bad_values(kind: str, bad) -> None:
    with pytest.raises(ValueError, match=r"keep ratio must be a number in \(0, 1\]"):
        make_budget(bad, kind)


def test_params_budget_rejects_non_positive_and_fractions() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        make_budget(0, "params")
    with pytest.raises(ValueError, match="whole number"):
        make_budget(10.5, "params")
    with pytest.raises(ValueError):
        make_budget({"kind": "params", "params": 10, "keep": 0.5})  # extra field forbidden
    with pytest.raises(ValueError, match="budget kind"):
        make_budget(0.5, "flops")


def test_budget_kinds_resolve_against_units() -> None:
    units = discover(tiny_model())
    assert resolve(KeepPrunable(keep=0.5), units) == math.floor(0.5 * units.prunable_params)
    assert resolve(KeepTotal(keep=0.9), units) == math.floor(0.9 * units.total_params) - units.nonprunable_params
    assert resolve(KeepParams(params=units.total_params - 1000), units) == units.prunable_params - 1000
    assert resolve(KeepPrunable(keep=1.0), units) == units.prunable_params
    assert make_budget({"kind": "total", "keep": 0.8}) == KeepTotal(keep=0.8)


def test_budget_below_mandatory_minimum_is_rejected_with_allowed_range() -> None:
    units = discover(tiny_model())
    with pytest.raises(BudgetError, match="below the mandatory minimum.*allowed"):
        resolve(KeepPrunable(keep=0.001), units)
    with pytest.raises(BudgetError, match="below the mandatory minimum"):
        resolve(KeepTotal(keep=0.05), units)  # less than the embeddings alone


@pytest.mark.parametrize("kind,value", [("prunable", 0.5), ("total", 0.8), ("params", None)])
def test_prune_meets_budget_and_counts_parameters_exactly(kind: str, value) -> None:
    model = tiny_model()
    units = discover(model)
    value = value if value is not None else units.total_params - units.prunable_params // 3
    result = pruneframe.prune(model, "by-index", value, budget_kind=kind, host=_host(), progress=False)
    rep = result.report
    target = rep.budget_prunable_params
    kept = units.kept_cost(result.mask)
    assert kept <= target
    assert units.cost[~result.mask].min() > target - kept
    assert sum(p.numel() for p in result.model.parameters()) == units.kept_params(result.mask) == rep.kept_params
    assert sum(p.numel() for p in model.parameters()) == units.total_params  # dense model untouched


def test_prune_inplace_shrinks_the_given_model() -> None:
    model = tiny_model()
    result = pruneframe.prune(model, "by-index", 0.5, host=_host(), progress=False, inplace=True)
    assert result.model is model
    assert sum(p.numel() for p in model.parameters()) == result.report.kept_params


@pytest.mark.parametrize("policy", ["rank", "density", "optimal"])
@pytest.mark.parametrize("scope", ["global", "uniform"])
@pytest.mark.parametrize("keep", [0.4, 0.6, 0.85])
def test_prune_round_to_keeps_whole_blocks_of_channels(policy: str, scope: str, keep: float) -> None:
    model = tiny_model()  # 3 layers of 40 FFN channels and 2 KV groups
    units = discover(model)
    config = {"round_to": 8, "policy": policy, "scope": scope}
    result = pruneframe.prune(model, "by-index", keep, config=config, host=_host(), progress=False)
    target, kept = result.report.budget_prunable_params, units.kept_cost(result.mask)
    widths = units.widths(result.mask)
    assert result.report.config["round_to"] == 8
    assert all(w["ffn_channels"] % 8 == 0 and w["ffn_channels"] >= 8 for w in widths)
    assert kept <= target
    for shape, w in zip(units.layers, widths):  # no whole block of 8 channels and no KV group still fits
        assert w["ffn_channels"] == shape.ffn_channels or min(8, shape.ffn_channels - w["ffn_channels"]) * shape.ffn_cost > target - kept
        assert w["kv_groups"] == shape.kv_groups or shape.kv_cost > target - kept
    folded = [layer.mlp.down_proj.in_features for layer in result.model.model.layers]
    assert folded == [w["ffn_channels"] for w in widths]


def test_check_meets_budget_with_round_to_rejects_odd_widths_and_slack() -> None:
    groups = torch.tensor([0] * 8 + [1] * 2)
    costs = torch.tensor([1] * 8 + [5] * 2)
    round_to = torch.tensor([4, 1])
    full_block = torch.tensor([True] * 4 + [False] * 4 + [True, False])
    check_meets_budget(full_block, costs, 12, groups, torch.tensor([1, 1]), round_to)  # 9 kept, next block 4 > 3
    with pytest.raises(BudgetError, match="group 0 keeps 3 of 8 units, not a multiple of its round_to 4"):
        check_meets_budget(torch.tensor([True] * 3 + [False] * 5 + [True, False]), costs, 12, groups, None, round_to)
    with pytest.raises(BudgetError, match="4 more units of group 0 .*still fit"):
        check_meets_budget(full_block, costs, 13, groups, None, round_to)
    all_channels = torch.tensor([True] * 8 + [True, False])
    with pytest.raises(BudgetError, match="dropped unit of cost 5"):
        check_meets_budget(all_channels, costs, 18, groups, None, round_to)
    with pytest.raises(BudgetError, match="group 0 keeps 4 units, below its minimum 8"):  # 5 rounded up to 8
        check_meets_budget(full_block, costs, 9, groups, torch.tensor([5, 1]), round_to)


def test_round_to_groups_and_rounded_minimum() -> None:
    units = discover(tiny_model())
    assert group_round_to(units, 8).tolist() == [8, 1] * 3
    assert group_round_to(units, 1) is None and group_round_to(units, None) is None
    with pytest.raises(ValueError, match="round_to must be a whole number"):
        group_round_to(units, 0)
    ffn, kv = units.layers[0].ffn_cost, units.layers[0].kv_cost
    with pytest.raises(BudgetError, match="minimum of {:,} .*rounded up".format(3 * (16 * ffn + kv))):
        resolve(KeepParams(params=units.nonprunable_params + 3 * (16 * ffn + kv) - 1), units, None, group_round_to(units, 16))
    with pytest.raises(ValueError, match="round_to"):
        pruneframe.prune(tiny_model(), "by-index", 0.5, config={"round_to": 0}, host=_host(), progress=False)


def test_unknown_method_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'by-index'"):
        _host().method("by-indx")


def test_method_config_is_validated() -> None:
    with pytest.raises(ValueError, match="extra"):
        _host().method("by-index", {"polcy": "rank"})


def test_misspelt_hook_implementation_is_caught() -> None:
    class Misspelt:
        @hookimpl
        def pruneframe_register_method(self, register):  # missing "s"
            pass

    with pytest.raises(pluggy.PluginValidationError, match="unknown hook"):
        PluginHost.create(plugins=[Misspelt()])


def test_each_host_is_independent() -> None:
    assert "by-index" in _host().methods()
    assert "by-index" not in PluginHost.create().methods()


def test_broken_entry_point_is_reported_not_fatal(monkeypatch) -> None:
    import pruneframe.pipeline.host as host_module

    class BrokenEP:
        name = "broken-plugin"

        def load(self):
            raise ImportError("needs a library that is not installed")

    real = host_module.metadata.entry_points
    monkeypatch.setattr(host_module.metadata, "entry_points", lambda group: [*real(group=group), BrokenEP()])
    host = PluginHost.create()
    assert "needs a library" in host.failures["broken-plugin"]
    infos = {i.name: i for i in host.describe()}
    assert infos["broken-plugin"].error
    assert "project" in infos["pruneframe.pipeline.builtins"].hooks
    assert "grasprune" in infos["grasprune"].methods


def test_unsupported_model_error_lists_architectures() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(NotImplementedError, match="GPT2LMHeadModel.*LlamaForCausalLM"):
        PluginHost.create().discover_units(model)


def test_a_plugin_can_override_the_projector() -> None:
    masks = []

    class Override:
        """Keeps the lowest-index units instead (the core keeps the highest ones for by-index scores)."""

        @hookimpl(tryfirst=True)
        def pruneframe_project(self, scores, units, budget, minimum, policy, scope):
            mask = project(-scores, units.cost, budget, groups=units.groups, minimum=minimum, policy=policy, scope=scope)
            masks.append(mask)
            return mask

    model = tiny_model()
    host = PluginHost.create(plugins=[RegisterScores(), Override()])
    result = pruneframe.prune(model, "by-index", 0.5, host=host, progress=False)
    units = discover(model)
    core = PluginHost.create(plugins=[RegisterScores()])
    core_mask = pruneframe.prune(model, "by-index", 0.5, host=core, progress=False).mask
    assert len(masks) == 1 and torch.equal(result.mask, masks[0]) and not torch.equal(masks[0], core_mask)
    want = fold(model, units, masks[0]).state_dict()
    got = result.model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)  # the override's mask is folded


def test_method_returning_wrong_shape_is_named() -> None:
    class Bad(PruningMethod):
        name = "bad"

        def score(self, context):
            return torch.zeros(3)

    with pytest.raises(PluginError, match=r"plugin 'test_budget_and_host': method 'bad' returned scores of shape \(3,\)"):
        pruneframe.prune(tiny_model(), Bad(), 0.5, host=_host(), progress=False)
