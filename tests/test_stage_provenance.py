"""Every stage implementation that ran is on record (report, run JSON) and in the run's cache key; overrides are checked."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import pruneframe
from pruneframe.util import digests
from pruneframe.checkpoint import read_report
from pruneframe.pipeline.fold import fold
from pruneframe.harness import runner
from pruneframe.harness.config import CompareConfig
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.host import PluginError, PluginHost
from pruneframe.pipeline.projection import project
from pruneframe.pipeline.prune_report import PruneReport
from test_compare import compare_settings, count_prunes
from tiny import tiny_model, tokens

#: A third-party plugin package: the core projector, counted, as an override that runs before the core's.
PROJECTOR = '''"""A third-party projector."""
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.projection import project

CALLS = []


@hookimpl(tryfirst=True)
def pruneframe_project(scores, units, budget, minimum, policy, scope, round_to):
    CALLS.append(budget)
    return project(scores, units.cost, budget, groups=units.groups, minimum=minimum, policy=policy, scope=scope,
                   round_to=round_to)
'''

#: A third-party plugin package registering its own adapter for Llama models (it runs before the core's).
ADAPTER = '''"""A third-party architecture adapter."""
from pruneframe.architectures.llama import LlamaAdapter
from pruneframe.pipeline.hookspecs import hookimpl


class OwnLlama(LlamaAdapter):
    """The core's Llama adapter, from another package."""


@hookimpl
def pruneframe_register_architectures(register):
    register(OwnLlama())
'''


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``third_party(name, source)``: a plugin package ``name`` written to disk and imported; digests start afresh."""
    root = tmp_path / "site"
    monkeypatch.syspath_prepend(str(root))
    digests.clear_digests()

    def make(name: str, source: str) -> ModuleType:
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(source)
        importlib.invalidate_caches()
        return importlib.import_module(name)

    yield make
    for name in [n for n in sys.modules if n.startswith("thirdparty_")]:
        del sys.modules[name]
    digests.clear_digests()


def prune(host: PluginHost, method: str = "magnitude", **kwargs) -> pruneframe.PruneResult:
    return pruneframe.prune(tiny_model(), method, 0.5, calibration=tokens(), host=host, progress=False, **kwargs)


def test_the_report_names_the_core_plugins_and_the_methods_package(tmp_path: Path) -> None:
    host = PluginHost.create()
    result = prune(host)
    stages = result.report.stages
    assert list(stages) == ["architecture", "score", "project", "recalibrate", "fold"]
    core = {"plugin": "pruneframe.pipeline.builtins", "package": "pruneframe", "digest": digests.package_digest("pruneframe")}
    for stage in ("architecture", "project", "fold"):
        assert stages[stage].model_dump() == core, stage
    method_plugin = host.method_plugin(host.method("magnitude"))
    method = {"plugin": method_plugin, "package": "pruneframe_baselines", "digest": digests.package_digest("pruneframe_baselines")}
    assert method_plugin != "pruneframe.pipeline.builtins"
    assert stages["score"].model_dump() == method == stages["recalibrate"].model_dump()  # the core stage called the method
    assert PruneReport.model_validate(result.report.model_dump(mode="json")) == result.report
    saved = read_report(result.save(tmp_path / "ckpt"))
    assert saved.stages == stages  # pruning.json holds them


def test_a_projector_override_is_named_in_the_report_and_the_stage_candidates(third_party) -> None:
    plugin = third_party("thirdparty_projector", PROJECTOR)
    host = PluginHost.create(plugins=[plugin])
    result = prune(host)
    assert plugin.CALLS and result.report.stages["project"].model_dump() == {
        "plugin": "thirdparty_projector",
        "package": "thirdparty_projector",
        "digest": digests.package_digest(plugin),
    }
    assert digests.package_digest(plugin) not in ("unknown", digests.package_digest("pruneframe"))
    assert result.report.stages["fold"].plugin == "pruneframe.pipeline.builtins"
    candidates = host.stage_candidates(host.method("magnitude"))
    assert [r.plugin for r in candidates["project"]] == ["thirdparty_projector", "pruneframe.pipeline.builtins"]
    assert [r.plugin for r in PluginHost.create().stage_candidates()["project"]] == ["pruneframe.pipeline.builtins"]


def test_a_plugin_adapter_is_named_as_the_architecture(third_party) -> None:
    plugin = third_party("thirdparty_adapter", ADAPTER)
    result = prune(PluginHost.create(plugins=[plugin]))
    assert result.report.stages["architecture"].model_dump() == {
        "plugin": "thirdparty_adapter",
        "package": "thirdparty_adapter",
        "digest": digests.package_digest(plugin),
    }
    assert prune(PluginHost.create()).report.stages["architecture"].plugin == "pruneframe.pipeline.builtins"


class HalfBudget:
    """A projector that leaves the costliest unit's cost of the budget unused: within budget, but not tight."""

    @hookimpl(tryfirst=True)
    def pruneframe_project(self, scores, units, budget, minimum, policy, scope):
        return project(scores, units.cost, budget - int(units.cost.max()), groups=units.groups, minimum=minimum, policy=policy, scope=scope)


@pytest.mark.parametrize("precomputed", [False, True])
def test_an_override_projector_is_held_to_the_core_budget_check(precomputed: bool) -> None:
    scores = prune(PluginHost.create()).scores if precomputed else None
    with pytest.raises(
        PluginError,
        match=r"plugin 'HalfBudget': pruneframe_project returned a mask that fails the budget "
        r"check: mask is not tight",
    ) as caught:
        prune(PluginHost.create(plugins=[HalfBudget()]), scores=scores)
    assert caught.value.plugins == ("HalfBudget",)


class DropsOneMore:
    """A fold that drops one more unit than the mask says."""

    @hookimpl(tryfirst=True)
    def pruneframe_fold(self, model, units, mask, recalibration, inplace):
        fewer = mask.clone()
        fewer[int(torch.nonzero(fewer)[0])] = False
        return fold(model, units, fewer, recalibration, inplace=inplace)


def test_an_override_fold_is_held_to_the_exact_parameter_count() -> None:
    with pytest.raises(
        PluginError,
        match=r"plugin 'DropsOneMore': pruneframe_fold produced [\d,]+ parameters, expected "
        r"[\d,]+ \(the fold is inconsistent with unit discovery\)",
    ):
        prune(PluginHost.create(plugins=[DropsOneMore()]))


def test_a_projector_plugin_changes_the_run_key_and_is_named_in_the_run_json(
    workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, third_party
) -> None:
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    settings = compare_settings(workspace, tmp_path / "out")
    settings.update(methods={"magnitude": {}}, budgets=[0.5])
    settings["evaluation"]["speed"] = None
    config = CompareConfig.model_validate(settings)
    calls = count_prunes(monkeypatch)
    run_file = tmp_path / "out" / "runs" / "magnitude-0.5-s0.json"

    def run(*plugins: object) -> dict:
        calls.clear()
        digests.clear_digests()  # a new process would read the files again
        outcome = runner.compare(config, host=PluginHost.create(plugins=list(plugins)), progress=False)
        assert not outcome.failed
        return json.loads(run_file.read_text())

    core = run()
    assert calls == ["magnitude"] and core["prune"]["stages"]["project"]["plugin"] == "pruneframe.pipeline.builtins"
    assert [r["plugin"] for r in core["protocol"]["stages"]["project"]] == ["pruneframe.pipeline.builtins"]
    assert core["protocol"]["stages"]["architecture"]["plugin"] == "pruneframe.pipeline.builtins"
    assert run()["cache_key"] == core["cache_key"] and calls == []  # nothing changed: cached

    plugin = third_party("thirdparty_projector", PROJECTOR)
    overridden = run(plugin)
    assert calls == ["magnitude"] and overridden["cache_key"] != core["cache_key"]
    assert overridden["prune"]["stages"]["project"] == {
        "plugin": "thirdparty_projector",
        "package": "thirdparty_projector",
        "digest": digests.package_digest(plugin),
    }
    assert [r["plugin"] for r in overridden["protocol"]["stages"]["project"]] == ["thirdparty_projector", "pruneframe.pipeline.builtins"]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["stages"]["project"] == ["thirdparty_projector"]
    assert run(plugin)["cache_key"] == overridden["cache_key"] and calls == []

    source = Path(plugin.__file__)
    source.write_text(source.read_text() + "# an edit to the plugin\n")
    edited = run(plugin)
    assert calls == ["magnitude"] and edited["cache_key"] not in (core["cache_key"], overridden["cache_key"])


class SmallBudgetsOnly:
    """A projector for budgets under 65% of the prunable parameters only (the core projects the others)."""

    @hookimpl(tryfirst=True)
    def pruneframe_project(self, scores, units, budget, minimum, policy, scope, round_to):
        if budget >= 0.65 * units.prunable_params:
            return None
        return project(scores, units.cost, budget, groups=units.groups, minimum=minimum, policy=policy, scope=scope, round_to=round_to)


def test_a_comparison_that_mixes_projectors_says_so(workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    settings = compare_settings(workspace, tmp_path / "out")
    settings.update(methods={"magnitude": {}}, budgets=[0.8, 0.5])
    settings["evaluation"]["speed"] = None
    lines: list[str] = []
    outcome = runner.compare(CompareConfig.model_validate(settings), host=PluginHost.create(plugins=[SmallBudgetsOnly()]), progress=False, log=lines.append)
    by_run = {r["run_id"]: r["prune"]["stages"]["project"]["plugin"] for r in outcome.runs}
    assert by_run == {"magnitude-0.8-s0": "pruneframe.pipeline.builtins", "magnitude-0.5-s0": "SmallBudgetsOnly"}
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["stages"]["project"] == ["SmallBudgetsOnly", "pruneframe.pipeline.builtins"]
    assert results["stages"]["fold"] == ["pruneframe.pipeline.builtins"]
    assert "warning: the runs' project stage was carried out by different plugins: SmallBudgetsOnly, pruneframe.pipeline.builtins" in lines
    assert not any("fold stage" in line for line in lines)


class WrapsTheProjector:
    """A wrapper around the projection stage: it takes part in every call, whoever returns the mask."""

    @hookimpl(wrapper=True)
    def pruneframe_project(self, scores, units, budget, minimum, policy, scope, round_to):
        return (yield)


def test_a_wrapped_stage_names_every_plugin_taking_part() -> None:
    result = prune(PluginHost.create(plugins=[WrapsTheProjector()]))
    record = result.report.stages["project"]
    assert record.plugin == "WrapsTheProjector + pruneframe.pipeline.builtins"
    assert record.package == "test_stage_provenance + pruneframe"
    assert record.digest not in (digests.package_digest("pruneframe"), digests.package_digest(WrapsTheProjector))
