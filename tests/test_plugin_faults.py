"""Plugin faults are named: hooks that raise or break the contract, clashing names; plugin selection by environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pruneframe
import pruneframe.pipeline.host as host_module
from pruneframe.architectures.llama import LlamaAdapter
from pruneframe.pipeline.calibration import InsufficientCalibrationError
from pruneframe.checkpoint import load_pruned
from pruneframe.cli import main
from pruneframe.pipeline.fold import fold
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.host import PluginError, PluginHost
from pruneframe.pipeline.methods import PruningMethod
from tiny import tiny_model, tokens
from workspace_files import cli_flags


def method_plugin(name: str, score, recalibrate=None) -> object:
    """A plugin object registering one method ``name`` whose score (and recalibration) are the given functions."""
    attrs = {"name": name, "score": lambda self, context: score(context)}
    if recalibrate is not None:
        attrs["recalibrate"] = lambda self, context, mask: recalibrate(context, mask)
    method = type(f"{name.title()}Method", (PruningMethod,), attrs)

    class Plugin:
        @hookimpl
        def pruneframe_register_methods(self, register):
            register(method)

    Plugin.__qualname__ = f"{name}-plugin"
    return Plugin()


def ones(context) -> torch.Tensor:
    return torch.ones(len(context.units))


def prune(host: PluginHost, method: str = "random", **kwargs) -> pruneframe.PruneResult:
    return pruneframe.prune(tiny_model(), method, 0.5, calibration=tokens(), host=host, progress=False, **kwargs)


def boom(*args):
    raise RuntimeError("boom")


@pytest.mark.parametrize(
    "score,message",
    [
        (boom, "plugin 'faulty-plugin' failed in scoring with method 'faulty': RuntimeError: boom"),
        (lambda context: [1.0] * len(context.units), "plugin 'faulty-plugin': method 'faulty' returned scores of shape list"),
        (lambda context: torch.ones(len(context.units), 2), r"method 'faulty' returned scores of shape \(126, 2\), expected \(126,\)"),
        (lambda context: torch.full((len(context.units),), float("nan")), "plugin 'faulty-plugin': method 'faulty' returned NaN scores"),
        (lambda context: torch.ones(len(context.units), dtype=torch.complex64), "returned scores of dtype torch.complex64"),
    ],
)
def test_a_faulty_method_is_named_with_its_plugin(score, message) -> None:
    host = PluginHost.create(plugins=[method_plugin("faulty", score)])
    with pytest.raises(PluginError, match=message) as caught:
        prune(host, "faulty")
    assert caught.value.plugins == ("faulty-plugin",)


def test_a_faulty_recalibration_is_named() -> None:
    host = PluginHost.create(plugins=[method_plugin("faulty", ones, lambda context, mask: torch.ones(3))])
    with pytest.raises(PluginError, match="plugin 'faulty-plugin': method 'faulty' recalibration returned Tensor"):
        prune(host, "faulty")
    host = PluginHost.create(plugins=[method_plugin("faulty", ones, boom)])
    with pytest.raises(PluginError, match="plugin 'faulty-plugin' failed in recalibration with method 'faulty': RuntimeError"):
        prune(host, "faulty")


class OverBudget:
    @hookimpl(tryfirst=True)
    def pruneframe_project(self, scores, units, budget, minimum, policy, scope):
        return torch.ones(len(units), dtype=torch.bool)


class FloatMask:
    @hookimpl(tryfirst=True)
    def pruneframe_project(self, scores, units, budget, minimum, policy, scope):
        return torch.ones(len(units))


class RaisingProjector:
    @hookimpl(tryfirst=True)
    def pruneframe_project(self, scores, units, budget, minimum, policy, scope):
        raise ZeroDivisionError("division by zero")


class WrongFold:
    @hookimpl(tryfirst=True)
    def pruneframe_fold(self, model, units, mask, recalibration, inplace):
        return {"not": "a model"}


class WrongDiscovery:
    """Registers an adapter whose discovery returns a string."""

    @hookimpl
    def pruneframe_register_architectures(self, register):
        class Broken(LlamaAdapter):
            def discover(self, model):
                return "units"

        register(Broken())


@pytest.mark.parametrize(
    "plugin,message",
    [
        (OverBudget(), r"plugin 'OverBudget': pruneframe_project returned a mask over budget: it keeps cost [\d,]+ > budget [\d,]+"),
        (FloatMask(), r"plugin 'FloatMask': pruneframe_project returned torch.float32 tensor of shape \(126,\), expected a bool mask"),
        (RaisingProjector(), "plugin 'RaisingProjector' failed in projection: ZeroDivisionError: division by zero"),
        (WrongFold(), "plugin 'WrongFold': pruneframe_fold returned dict, expected the folded nn.Module"),
        (WrongDiscovery(), "plugin 'WrongDiscovery': Broken.discover returned str, expected a UnitSet"),
    ],
)
def test_a_faulty_stage_plugin_is_named(plugin, message) -> None:
    with pytest.raises(PluginError, match=message):
        prune(PluginHost.create(plugins=[plugin]))


def test_input_errors_raised_inside_a_plugin_keep_their_type() -> None:
    def short(context):
        return context.calibration.windows(100, 16)

    host = PluginHost.create(plugins=[method_plugin("greedy", short)])
    with pytest.raises(InsufficientCalibrationError, match="has 64 tokens; 100 windows of 16"):
        prune(host, "greedy")


def test_two_plugins_claiming_one_method_name_are_both_named() -> None:
    host = PluginHost.create(plugins=[method_plugin("twin", ones), method_plugin("twin", ones)])
    with pytest.raises(PluginError, match="method 'twin' is registered by plugins 'twin-plugin', 'twin-plugin#2'") as caught:
        host.method("twin")
    assert caught.value.plugins == ("twin-plugin", "twin-plugin#2")
    assert "twin" not in host.methods() and "magnitude" in host.methods()  # the others still work
    assert "method 'twin' is registered by plugins" in host.failures["twin-plugin#2"]
    assert prune(host, "magnitude").report.method == "magnitude"


# installed (entry-point) plugins ------------------------------------------------------------------


class FakeEntryPoint:
    """An installed third-party plugin: an entry point of another distribution."""

    dist = None

    def __init__(self, name: str, plugin: object) -> None:
        self.name, self._plugin = name, plugin

    def load(self) -> object:
        return self._plugin


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch):
    """``install(name, plugin)`` makes ``plugin`` an installed entry-point plugin for this test."""
    installed: list[FakeEntryPoint] = []
    real = host_module.metadata.entry_points
    monkeypatch.setattr(host_module.metadata, "entry_points", lambda group: [*real(group=group), *installed])
    return lambda name, plugin: installed.append(FakeEntryPoint(name, plugin))


def test_autoload_can_be_disabled_and_plugins_allow_listed(install, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    install("extra", method_plugin("extra-method", ones))
    assert "extra-method" in PluginHost.create().methods()
    monkeypatch.setenv("PRUNEFRAME_DISABLE_PLUGIN_AUTOLOAD", "1")
    host = PluginHost.create()
    assert "extra-method" not in host.methods() and {"grasprune", "magnitude", "random"} <= set(host.methods())
    assert host.evaluators().keys() >= {"perplexity", "size"}  # the core plugins always load
    monkeypatch.delenv("PRUNEFRAME_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("PRUNEFRAME_PLUGINS", "grasprune,magnitude,extra,nope")
    host = PluginHost.create()
    assert sorted(host.methods()) == ["extra-method", "grasprune", "magnitude"]
    assert "PRUNEFRAME_PLUGINS names 'nope', but no installed plugin is called that" in host.failures["nope"]
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    loaded = {line.split()[0] for line in text.split("failed to load")[0].splitlines()[1:] if line.strip()}
    assert loaded == {"pruneframe.pipeline.builtins", "pruneframe.evaluation.builtin", "grasprune", "magnitude", "extra"}
    assert "nope: $PRUNEFRAME_PLUGINS names 'nope'" in text


@pytest.fixture
def ws(workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    return workspace


def test_a_method_raising_mid_compare_fails_its_run_and_the_others_complete(ws, install, tmp_path: Path, capsys) -> None:
    calls: list[int] = []

    def flaky(context):
        calls.append(1)
        context.project(torch.rand(len(context.units)))  # part of the way in
        raise RuntimeError("lost the GPU")

    install("flaky", method_plugin("flaky", flaky))
    out = tmp_path / "out"
    flags = cli_flags("compare", ws, out, "--methods", "random,flaky,magnitude", "--budgets", "0.8,0.5")
    assert main(flags) == 1
    captured = capsys.readouterr()
    assert "(runs: 4 computed, 0 cached, 2 failed; dense computed)" in captured.out
    assert "run flaky-0.8-s0 failed: PluginError: plugin 'flaky' failed in scoring with method 'flaky'" in captured.err
    results = json.loads((out / "results.json").read_text())
    status = {r["run_id"]: r["status"] for r in results["runs"]}
    assert status == {
        "random-0.8-s0": "ok",
        "flaky-0.8-s0": "failed",
        "magnitude-0.8-s0": "ok",
        "random-0.5-s0": "ok",
        "flaky-0.5-s0": "failed",
        "magnitude-0.5-s0": "ok",
    }
    failed = next(r for r in results["runs"] if r["run_id"] == "flaky-0.5-s0")
    assert "plugin 'flaky'" in failed["error"] and "RuntimeError: lost the GPU" in failed["error"]
    assert "lost the GPU" in (out / "results.md").read_text()
    assert len(calls) == 2
    assert main(flags) == 1  # the failed runs are retried, the finished ones are not
    assert "(runs: 0 computed, 4 cached, 2 failed; dense cached)" in capsys.readouterr().out and len(calls) == 4


class SnapToBF16:
    """A third-party fold: the core fold, then every weight rounded to bfloat16 precision (kept in float32)."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl(tryfirst=True)
    def pruneframe_fold(self, model, units, mask, recalibration, inplace):
        self.calls += 1
        folded = fold(model, units, mask, recalibration, inplace=inplace)
        with torch.no_grad():
            for p in folded.parameters():
                p.copy_(p.bfloat16().float())
        return folded


def test_a_third_party_fold_plugin_end_to_end(ws, install, tmp_path: Path, capsys) -> None:
    plugin = SnapToBF16()
    install("snap-bf16", plugin)
    out = tmp_path / "ckpt"
    assert (
        main(["prune", "--model", str(ws["model"]), "--method", "magnitude", "--budget", "0.5", "--calib", str(ws["calib"]), "--out", str(out), "--quiet"]) == 0
    )
    assert plugin.calls == 1
    model, _ = load_pruned(out)
    weights = [p for p in model.parameters()]
    assert all(torch.equal(p, p.bfloat16().float()) for p in weights)
    assert not all(torch.equal(p, p.bfloat16().float()) for p in tiny_model().parameters())  # the core fold alone would not
    assert main(["plugins"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("snap-bf16"))
    assert "fold" in row
