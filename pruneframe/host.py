"""The plugin host: the one typed facade over pluggy. Nothing else calls ``pm.hook.*``.

Build a fresh host per run (``PluginHost.create()``); there is no global manager, so tests and
parallel runs never share registrations.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy
import torch
from torch import nn

from pruneframe import hookspecs
from pruneframe.architectures.base import ArchitectureAdapter
from pruneframe.methods import PruningMethod, Recalibration, ScoringContext
from pruneframe.units import UnitSet

__all__ = ["PluginHost", "PluginInfo", "UnknownNameError", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "pruneframe"
CORE_PLUGINS = ("pruneframe.builtins", "pruneframe.evaluation.builtin")


class UnknownNameError(KeyError):
    """A method or evaluator name that no plugin registered; the message suggests close names."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class PluginInfo:
    """What ``pruneframe plugins`` shows for one plugin."""

    name: str
    module: str
    hooks: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    evaluators: list[str] = field(default_factory=list)
    error: str | None = None


def _did_you_mean(kind: str, name: str, known: list[str]) -> UnknownNameError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}{hint} (installed: {', '.join(sorted(known)) or 'none'})")


class PluginHost:
    """A PluginManager with the pruneframe hookspecs, plus typed calls for every stage."""

    def __init__(self, pm: pluggy.PluginManager, failures: dict[str, str] | None = None) -> None:
        self.pm = pm
        self.failures = dict(failures or {})
        self._methods: dict[str, type[PruningMethod]] | None = None
        self._evaluators: dict[str, type[Any]] | None = None
        self._adapters: list[tuple[ArchitectureAdapter, str]] | None = None
        self._method_origin: dict[str, str] = {}
        self._evaluator_origin: dict[str, str] = {}

    @classmethod
    def create(
        cls,
        *,
        entry_points: bool = True,
        plugins: tuple[ModuleType | object, ...] | list[ModuleType | object] = (),
        block: tuple[str, ...] = (),
    ) -> "PluginHost":
        """A new host with the core plugins, the installed entry-point plugins and ``plugins``.

        A plugin that fails to import is recorded in :attr:`failures` (shown by ``pruneframe
        plugins``) instead of breaking every other method.
        """
        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        failures: dict[str, str] = {}
        for name in CORE_PLUGINS:
            pm.register(importlib.import_module(name), name=name)
        if entry_points:
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                if ep.name in block or pm.get_plugin(ep.name) is not None:
                    continue
                try:
                    pm.register(ep.load(), name=ep.name)
                except Exception as exc:  # a broken plugin must not take the others down
                    failures[ep.name] = f"{type(exc).__name__}: {exc}"
        for plugin in plugins:
            pm.register(plugin)
        pm.check_pending()
        return cls(pm, failures)

    # registries -------------------------------------------------------------------------------

    def _collect(self, hook_name: str) -> tuple[dict[str, type[Any]], dict[str, str]]:
        found: dict[str, type[Any]] = {}
        origin: dict[str, str] = {}
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            def register(obj: type[Any], _plugin: str = impl.plugin_name) -> None:
                name = getattr(obj, "name", None)
                if not isinstance(name, str) or not name:
                    raise TypeError(f"plugin {_plugin!r} registered {obj!r} without a string 'name'")
                if name in found and found[name] is not obj:
                    raise ValueError(f"{name!r} is registered by both {origin[name]!r} and {_plugin!r}")
                found[name], origin[name] = obj, _plugin
            impl.function(register=register)
        return found, origin

    def methods(self) -> dict[str, type[PruningMethod]]:
        """Every registered method class by name."""
        if self._methods is None:
            self._methods, self._method_origin = self._collect("pruneframe_register_methods")
        return dict(self._methods)

    def evaluators(self) -> dict[str, type[Any]]:
        """Every registered evaluator class by name."""
        if self._evaluators is None:
            self._evaluators, self._evaluator_origin = self._collect("pruneframe_register_evaluators")
        return dict(self._evaluators)

    def method(self, name: str, config: Any = None) -> PruningMethod:
        """An instance of method ``name`` with ``config`` validated by its config model."""
        methods = self.methods()
        if name not in methods:
            raise _did_you_mean("method", name, list(methods))
        return methods[name](config)

    def evaluator(self, name: str, config: Any = None) -> Any:
        """An instance of evaluator ``name`` with its validated ``config``."""
        evaluators = self.evaluators()
        if name not in evaluators:
            raise _did_you_mean("evaluator", name, list(evaluators))
        cls = evaluators[name]
        return cls(cls.Config.model_validate(config or {}))

    # stages -----------------------------------------------------------------------------------

    def adapters(self) -> list[ArchitectureAdapter]:
        """Every registered architecture adapter, plugins' before the core's."""
        if self._adapters is None:
            found: list[tuple[ArchitectureAdapter, str]] = []
            for impl in self.pm.hook.pruneframe_register_architectures.get_hookimpls()[::-1]:
                def register(adapter: ArchitectureAdapter, _plugin: str = impl.plugin_name) -> None:
                    if not isinstance(adapter, ArchitectureAdapter):
                        raise TypeError(f"plugin {_plugin!r} registered {adapter!r}, not an ArchitectureAdapter instance")
                    found.append((adapter, _plugin))
                impl.function(register=register)
            self._adapters = found
        return [a for a, _ in self._adapters]

    def adapter_for(self, model: nn.Module) -> ArchitectureAdapter:
        """The first registered adapter that handles ``model``."""
        adapters = self.adapters()
        for adapter in adapters:
            if adapter.matches(model):
                return adapter
        supported = sorted({a for adapter in adapters for a in adapter.architectures})
        raise NotImplementedError(
            f"no installed plugin handles {type(model).__name__}; supported: {', '.join(supported)}"
        )

    def discover_units(self, model: nn.Module) -> UnitSet:
        """The model's units, from the adapter that handles its architecture."""
        return self.adapter_for(model).discover(model)

    def score(self, method: PruningMethod, context: ScoringContext) -> torch.Tensor:
        """One score per unit, validated (shape and finiteness)."""
        scores = self.pm.hook.pruneframe_score_units(method=method, context=context)
        if not isinstance(scores, torch.Tensor) or scores.shape != (len(context.units),):
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"method {method.name!r} returned scores of shape {got}, expected ({len(context.units)},)")
        bad = torch.nonzero(torch.isnan(scores)).flatten()
        if bad.numel():
            raise ValueError(f"method {method.name!r} returned NaN scores (first at unit {int(bad[0])})")
        return scores.detach().float().cpu()

    def project(self, scores: torch.Tensor, units: UnitSet, budget: int, minimum: torch.Tensor, policy: str, scope: str,
                round_to: torch.Tensor | None = None) -> torch.Tensor:
        """A boolean keep-mask meeting ``budget`` exactly (``round_to``: per-group width multiples)."""
        return self.pm.hook.pruneframe_project(
            scores=scores, units=units, budget=budget, minimum=minimum, policy=policy, scope=scope, round_to=round_to
        )

    def recalibrate(self, method: PruningMethod, context: ScoringContext, mask: torch.Tensor) -> Recalibration | None:
        """The method's recalibration for ``mask`` (``None`` when it has none)."""
        return self.pm.hook.pruneframe_recalibrate(method=method, context=context, mask=mask)

    def fold(
        self, model: nn.Module, units: UnitSet, mask: torch.Tensor, recalibration: Recalibration | None, inplace: bool = False
    ) -> nn.Module:
        """The smaller dense model (``inplace``: shrink ``model`` itself)."""
        return self.pm.hook.pruneframe_fold(model=model, units=units, mask=mask, recalibration=recalibration, inplace=inplace)

    # introspection ----------------------------------------------------------------------------

    def describe(self) -> list[PluginInfo]:
        """Every loaded plugin with its hooks and registrations, then every plugin that failed."""
        self.methods()
        self.evaluators()
        infos: dict[str, PluginInfo] = {}
        for name, plugin in self.pm.list_name_plugin():
            module = getattr(plugin, "__name__", type(plugin).__name__)
            infos[name] = PluginInfo(name=name, module=module)
        for hook_name in sorted(n for n in dir(self.pm.hook) if n.startswith("pruneframe_")):
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                infos[impl.plugin_name].hooks.append(hook_name.removeprefix("pruneframe_"))
        for name, plugin_name in self._method_origin.items():
            infos[plugin_name].methods.append(name)
        for name, plugin_name in self._evaluator_origin.items():
            infos[plugin_name].evaluators.append(name)
        out = list(infos.values())
        out += [PluginInfo(name=n, module="?", error=err) for n, err in self.failures.items()]
        return out
