"""Budgets (typed, validated), the plugin host and the public prune() contract."""

from __future__ import annotations

import math

import pluggy
import pytest
import torch
from tiny import tiny_model

import pruneframe
from pruneframe.architectures import discover
from pruneframe.budget import BudgetError, KeepParams, KeepPrunable, KeepTotal, make_budget, resolve
from pruneframe.hookspecs import hookimpl
from pruneframe.host import PluginHost, UnknownNameError
from pruneframe.methods import PruningMethod


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
    target = rep["budget_prunable_params"]
    kept = units.kept_cost(result.mask)
    assert kept <= target
    assert units.cost[~result.mask].min() > target - kept
    assert sum(p.numel() for p in result.model.parameters()) == units.kept_params(result.mask) == rep["kept_params"]
    assert sum(p.numel() for p in model.parameters()) == units.total_params  # dense model untouched


def test_prune_inplace_shrinks_the_given_model() -> None:
    model = tiny_model()
    result = pruneframe.prune(model, "by-index", 0.5, host=_host(), progress=False, inplace=True)
    assert result.model is model
    assert sum(p.numel() for p in model.parameters()) == result.report["kept_params"]


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
    import pruneframe.host as host_module

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
    assert "project" in infos["pruneframe.builtins"].hooks
    assert "grasprune" in infos["grasprune"].methods


def test_unsupported_model_error_lists_architectures() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(NotImplementedError, match="GPT2LMHeadModel.*LlamaForCausalLM"):
        PluginHost.create().discover_units(model)


def test_a_plugin_can_override_the_projector() -> None:
    calls = []

    class Override:
        @hookimpl(tryfirst=True)
        def pruneframe_project(self, scores, units, budget, minimum, policy, scope):
            calls.append(budget)
            return None  # defer to the core projector

    host = PluginHost.create(plugins=[RegisterScores(), Override()])
    pruneframe.prune(tiny_model(), "by-index", 0.5, host=host, progress=False)
    assert len(calls) == 1


def test_method_returning_wrong_shape_is_named() -> None:
    class Bad(PruningMethod):
        name = "bad"

        def score(self, context):
            return torch.zeros(3)

    with pytest.raises(ValueError, match="'bad' returned scores of shape"):
        pruneframe.prune(tiny_model(), Bad(), 0.5, host=_host(), progress=False)
