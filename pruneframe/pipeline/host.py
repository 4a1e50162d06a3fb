"""The plugin host: the one typed facade over pluggy. Nothing else calls ``pm.hook.*``.

Build a fresh host per run (``PluginHost.create()``); there is no global manager, so tests and
parallel runs never share registrations.

Plugin faults are named: a plugin's hook that raises, or returns something the contract forbids
(wrong type or shape, NaN scores, a mask over budget), and two plugins registering one method name,
raise :class:`PluginError` naming the plugin. Errors that describe bad input (settings, budgets,
calibration size) pass through unchanged, and so does anything raised by pruneframe's own plugins.

Every stage call can record which plugin carried it out (``provenance``: stage name ->
:class:`~pruneframe.pipeline.prune_report.StageRecord`, with the digest of the code that ran);
:meth:`PluginHost.stage_candidates` lists every implementation that may carry out each stage, which
the run cache keys on.

Which installed plugins load is set from the environment, as pytest does:

- ``PRUNEFRAME_DISABLE_PLUGIN_AUTOLOAD=1``: load only the plugins pruneframe itself ships (the core
  stages, GRASPrune and the baselines), no third-party entry points;
- ``PRUNEFRAME_PLUGINS=grasprune,magnitude``: load exactly these entry-point plugins (plus the core
  stages); a listed name that is not installed is reported by ``pruneframe plugins``.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy
import torch
from pydantic import ValidationError
from torch import nn

from pruneframe.pipeline import hookspecs
from pruneframe.architectures.base import ArchitectureAdapter
from pruneframe.pipeline.budget import check_mask
from pruneframe.pipeline.calibration import InsufficientCalibrationError
from pruneframe.util.digests import package_digest, top_package
from pruneframe.pipeline.methods import PruningMethod, Recalibration, ScoringContext
from pruneframe.pipeline.recalibration import PipelineMethod, RecalibrationMethod, split_pipeline_name
from pruneframe.pipeline.removal import REMOVAL_MODES, REMOVAL_SEPARATOR
from pruneframe.pipeline.projection import BudgetError
from pruneframe.pipeline.prune_report import StageRecord
from pruneframe.toolkit.resume import StaleCheckpointError
from pruneframe.pipeline.units import UnitSet

__all__ = [
    "PluginHost",
    "PluginInfo",
    "PluginError",
    "UnknownNameError",
    "UnsupportedModelError",
    "ENTRY_POINT_GROUP",
    "DISABLE_AUTOLOAD_ENV",
    "PLUGINS_ENV",
    "STAGE_HOOKS",
]

ENTRY_POINT_GROUP = "pruneframe"
CORE_PLUGINS = ("pruneframe.pipeline.builtins", "pruneframe.evaluation.builtin")
#: Set to 1 to load only the plugins pruneframe ships (third-party entry points are skipped).
DISABLE_AUTOLOAD_ENV = "PRUNEFRAME_DISABLE_PLUGIN_AUTOLOAD"
#: Comma-separated entry-point plugin names: load exactly these (the core stages always load).
PLUGINS_ENV = "PRUNEFRAME_PLUGINS"
#: The distribution whose entry-point plugins count as pruneframe's own.
OWN_DISTRIBUTION = "pruneframe"
#: The hook of each first-result stage, by the stage's name in a report.
STAGE_HOOKS = {"score": "pruneframe_score_units", "project": "pruneframe_project", "recalibrate": "pruneframe_recalibrate", "fold": "pruneframe_fold"}
#: Joins the plugins of a stage whose hook has wrappers (each of them takes part in the call).
_WRAPPED = " + "


class PluginError(RuntimeError):
    """A plugin raised, or returned what the hook contract forbids; ``plugins`` names the plugin(s) at fault."""

    def __init__(self, message: str, plugins: tuple[str, ...]) -> None:
        super().__init__(message)
        self.plugins = plugins


class UnknownNameError(KeyError):
    """A method or evaluator name that no plugin registered; the message suggests close names."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnsupportedModelError(NotImplementedError):
    """No installed plugin's architecture adapter handles the model; the message lists the supported classes."""


#: Exceptions that describe bad input rather than a faulty plugin: never re-labelled as a plugin's fault.
_INPUT_ERRORS = (ValidationError, BudgetError, InsufficientCalibrationError, StaleCheckpointError, UnknownNameError, PluginError)


@dataclass
class PluginInfo:
    """What ``pruneframe plugins`` shows for one plugin."""

    name: str
    module: str
    hooks: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    evaluators: list[str] = field(default_factory=list)
    recoveries: list[str] = field(default_factory=list)
    recalibrations: list[str] = field(default_factory=list)
    error: str | None = None


def _did_you_mean(kind: str, name: str, known: list[str]) -> UnknownNameError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}{hint} (installed: {', '.join(sorted(known)) or 'none'})")


def _env_names(value: str | None) -> set[str] | None:
    return None if value is None or not value.strip() else {n.strip() for n in value.split(",") if n.strip()}


def _is_own(entry_point: Any) -> bool:
    dist = getattr(entry_point, "dist", None)
    return str(getattr(dist, "name", "")).lower() == OWN_DISTRIBUTION


def _object_name(plugin: object, pm: pluggy.PluginManager) -> str:
    """A readable, unique registration name for a plugin object: its module or class name."""
    base = getattr(plugin, "__name__", None) or type(plugin).__qualname__
    name, n = base, 2
    while pm.has_plugin(name):
        name, n = f"{base}#{n}", n + 1
    return name


def _retitled(exc: ValidationError, title: str) -> ValidationError:
    """``exc`` with another title (pydantic prints it as "N validation errors for <title>")."""
    try:
        return ValidationError.from_exception_data(title, exc.errors())
    except (TypeError, ValueError, KeyError):  # an error type pydantic cannot rebuild: keep the original
        return exc


class PluginHost:
    """A PluginManager with the pruneframe hookspecs, plus typed calls for every stage."""

    def __init__(self, pm: pluggy.PluginManager, failures: dict[str, str] | None = None, own: set[str] | None = None) -> None:
        self.pm = pm
        self.failures = dict(failures or {})
        #: Plugins pruneframe ships (core stages, its own entry points): their exceptions pass through as raised.
        self.own = set(CORE_PLUGINS) if own is None else set(own)
        self._methods: dict[str, type[PruningMethod]] | None = None
        self._evaluators: dict[str, type[Any]] | None = None
        self._recoveries: dict[str, type[Any]] | None = None
        self._recovery_origin: dict[str, str] = {}
        self._recalibrations: dict[str, type[RecalibrationMethod]] | None = None
        self._recalibration_origin: dict[str, str] = {}
        self._adapters: list[tuple[ArchitectureAdapter, str]] | None = None
        self._method_origin: dict[str, str] = {}
        self._evaluator_origin: dict[str, str] = {}
        self._conflicts: dict[str, tuple[str, ...]] = {}

    @classmethod
    def create(
        cls,
        *,
        entry_points: bool = True,
        plugins: tuple[ModuleType | object, ...] | list[ModuleType | object] = (),
        block: tuple[str, ...] = (),
    ) -> "PluginHost":
        """A new host with the core plugins, the installed entry-point plugins and ``plugins``.

        Entry points are filtered by ``$PRUNEFRAME_PLUGINS`` and ``$PRUNEFRAME_DISABLE_PLUGIN_AUTOLOAD``
        (see the module docstring). A plugin that fails to import is recorded in :attr:`failures`
        (shown by ``pruneframe plugins``) instead of breaking every other method.
        """
        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        failures: dict[str, str] = {}
        own = set(CORE_PLUGINS)
        for name in CORE_PLUGINS:
            pm.register(importlib.import_module(name), name=name)
        if entry_points:
            chosen = _env_names(os.environ.get(PLUGINS_ENV))
            own_only = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")
            installed = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
            for ep in installed:
                if ep.name in block or pm.get_plugin(ep.name) is not None:
                    continue
                if (chosen is not None and ep.name not in chosen) or (chosen is None and own_only and not _is_own(ep)):
                    continue
                try:
                    pm.register(ep.load(), name=ep.name)
                except Exception as exc:  # a broken plugin must not take the others down
                    failures[ep.name] = f"{type(exc).__name__}: {exc}"
                    continue
                if _is_own(ep):
                    own.add(ep.name)
            for name in sorted((chosen or set()) - {ep.name for ep in installed}):
                failures[name] = (
                    f"${PLUGINS_ENV} names {name!r}, but no installed plugin is called that "
                    f"(installed: {', '.join(sorted(ep.name for ep in installed)) or 'none'})"
                )
        for plugin in plugins:
            pm.register(plugin, name=_object_name(plugin, pm))
        pm.check_pending()
        return cls(pm, failures, own)

    # registries -------------------------------------------------------------------------------

    def _collect(self, hook_name: str, kind: str) -> tuple[dict[str, type[Any]], dict[str, str]]:
        found: dict[str, type[Any]] = {}
        origin: dict[str, str] = {}
        claims: dict[str, list[str]] = {}
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():

            def register(obj: type[Any], _plugin: str = impl.plugin_name) -> None:
                name = getattr(obj, "name", None)
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin {_plugin!r} registered {obj!r} without a string 'name'", (_plugin,))
                if name in found and found[name] is not obj:
                    claims.setdefault(name, [origin[name]]).append(_plugin)
                    return
                found[name], origin[name] = obj, _plugin

            try:
                impl.function(register=register)
            except PluginError as exc:
                self.failures[impl.plugin_name] = str(exc)
            except Exception as exc:  # one plugin's broken registration must not hide the other plugins' names
                self.failures[impl.plugin_name] = f"{hook_name} raised {type(exc).__name__}: {exc}"
        for name, plugins in claims.items():
            found.pop(name)
            origin.pop(name)
            self._conflicts[name] = tuple(plugins)
            for plugin in plugins:
                self.failures[plugin] = f"{kind} {name!r} is registered by plugins {', '.join(map(repr, plugins))}; none is used"
        return found, origin

    def methods(self) -> dict[str, type[PruningMethod]]:
        """Every registered method class by name (a name two plugins claim is left out, see :meth:`method`)."""
        if self._methods is None:
            self._methods, self._method_origin = self._collect("pruneframe_register_methods", "method")
        return dict(self._methods)

    def evaluators(self) -> dict[str, type[Any]]:
        """Every registered evaluator class by name."""
        if self._evaluators is None:
            self._evaluators, self._evaluator_origin = self._collect("pruneframe_register_evaluators", "evaluator")
        return dict(self._evaluators)

    def recoveries(self) -> dict[str, type[Any]]:
        """Every registered recovery class by name (``none``, ``lora``, ``distill``, ...)."""
        if self._recoveries is None:
            self._recoveries, self._recovery_origin = self._collect("pruneframe_register_recoveries", "recovery")
        return dict(self._recoveries)

    def recovery(self, name: str, config: Any = None) -> Any:
        """An instance of recovery ``name`` with ``config`` validated by its config model."""
        return self._instance("recovery", self.recoveries(), name, config)

    def recalibrations(self) -> dict[str, type[RecalibrationMethod]]:
        """Every registered recalibration class by name (``none``, ``scales``, ``bias``, ...)."""
        if self._recalibrations is None:
            self._recalibrations, self._recalibration_origin = self._collect("pruneframe_register_recalibrations", "recalibration")
        return dict(self._recalibrations)

    def recalibration(self, name: str, config: Any = None) -> RecalibrationMethod:
        """An instance of recalibration ``name`` with ``config`` validated by its config model."""
        return self._instance("recalibration", self.recalibrations(), name, config)

    def recovery_plugin(self, recovery: Any) -> str:
        """The plugin that registered ``recovery``'s class (its module name otherwise)."""
        self.recoveries()
        return self._recovery_origin.get(getattr(recovery, "name", ""), type(recovery).__module__)

    def _unknown(self, kind: str, name: str, known: list[str]) -> Exception:
        if name in self._conflicts:
            plugins = self._conflicts[name]
            return PluginError(
                f"{kind} {name!r} is registered by plugins {', '.join(map(repr, plugins))}; uninstall "
                f"all but one, or choose the plugins to load with ${PLUGINS_ENV}",
                plugins,
            )
        return _did_you_mean(kind, name, known)

    def method(self, name: str, config: Any = None) -> PruningMethod:
        """An instance of method ``name`` with ``config`` validated by its config model.

        ``SCORER+RECALIBRATION`` (``llm-pruner+bias``) gives a :class:`~pruneframe.pipeline.recalibration.PipelineMethod`:
        ``config`` is the scorer's settings, plus under ``recalibration`` the recalibration's.
        ``NAME@REMOVAL`` (``llm-pruner@mixed``, ``flap+scales@mixed``) is ``NAME`` with ``removal`` set
        to ``mixed``, ``blocks`` or ``layers`` (:mod:`pruneframe.pipeline.removal`), named so in reports.
        """
        if REMOVAL_SEPARATOR in name:
            base, _, removal = name.rpartition(REMOVAL_SEPARATOR)
            if removal not in REMOVAL_MODES or not base:
                raise UnknownNameError(f"method {name!r}: expected NAME{REMOVAL_SEPARATOR}REMOVAL with REMOVAL one of {', '.join(REMOVAL_MODES)}")
            made = self.method(base, {**dict(config or {}), "removal": removal})
            made.name = name  # type: ignore[misc] - the instance is reported under its full name
            return made
        try:
            parts = split_pipeline_name(name)
        except ValueError as exc:
            raise UnknownNameError(str(exc)) from exc
        if parts is not None:
            settings = dict(config or {})
            recalibration = self.recalibration(parts[1], settings.pop("recalibration", None))
            return PipelineMethod(self.method(parts[0], settings), recalibration)
        return self._instance("method", self.methods(), name, config)

    def _instance(self, kind: str, registered: dict[str, type[Any]], name: str, config: Any) -> Any:
        """``registered[name](config)``; an unknown name suggests close ones, a bad setting names the plugin's entry."""
        if name not in registered:
            raise self._unknown(kind, name, list(registered))
        try:
            return registered[name](config)
        except ValidationError as exc:  # name the method (recovery, ...) as well as the field
            raise _retitled(exc, f"{kind} {name!r} ({exc.title})") from exc

    def evaluator(self, name: str, config: Any = None) -> Any:
        """An instance of evaluator ``name`` with its validated ``config``."""
        evaluators = self.evaluators()
        if name not in evaluators:
            raise self._unknown("evaluator", name, list(evaluators))
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
        raise UnsupportedModelError(f"no installed plugin handles {type(model).__name__}; supported: {', '.join(supported)}")

    def method_plugin(self, method: PruningMethod | RecalibrationMethod) -> str:
        """The plugin that registered ``method``'s class (its module name for an unregistered method object).

        A recalibration is looked up among the recalibrations.
        """
        if isinstance(method, RecalibrationMethod):
            self.recalibrations()
            origin = self._recalibration_origin.get(method.name)
            registered = self._recalibrations is not None and self._recalibrations.get(method.name) is type(method)
            return origin if origin is not None and registered else type(method).__module__
        self.methods()
        origin = self._method_origin.get(getattr(method, "name", ""))
        if origin is not None and self._methods is not None and self._methods.get(method.name) is type(method):
            return origin
        return type(method).__module__

    @staticmethod
    def stage_owner(method: PruningMethod, stage: str) -> PruningMethod | RecalibrationMethod:
        """The object whose code carries out ``stage`` for ``method``: a pipeline's scorer scores and its
        recalibration recalibrates; any other method does both."""
        if isinstance(method, PipelineMethod):
            return method.recalibration if stage == "recalibrate" else method.scorer
        return method

    def _is_own(self, plugin: str) -> bool:
        return plugin in self.own or plugin.split(".")[0] in ("pruneframe", "pruneframe_grasprune", "pruneframe_baselines", "pruneframe_recovery")

    def _call(self, hook_name: str, what: str, owner: PruningMethod | RecalibrationMethod | None = None, /, **kwargs: Any) -> tuple[Any, str]:
        """Call a first-result hook as pluggy does; returns the result and the plugin that produced it.

        When the implementation is a core stage that only calls the method object (scoring,
        recalibration), the method's own plugin is the one named; when every implementation returns
        ``None``, the last one tried; when the hook has wrappers, every implementation (joined by
        ``" + "``). A third-party plugin's exception is raised as :class:`PluginError` naming it.
        """
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        if any(impl.hookwrapper or impl.wrapper for impl in impls):  # wrappers need pluggy's own loop
            return getattr(self.pm.hook, hook_name)(**kwargs), _WRAPPED.join(self._plugins_in_order(impls, owner))
        plugin = "?"
        for impl in reversed(impls):  # pluggy's order: tryfirst first, trylast (the core) last
            plugin = self.method_plugin(owner) if owner is not None and impl.plugin_name in CORE_PLUGINS else impl.plugin_name
            try:
                result = impl.function(*(kwargs[arg] for arg in impl.argnames))
            except _INPUT_ERRORS:
                raise
            except Exception as exc:
                if self._is_own(plugin):
                    raise
                raise PluginError(f"plugin {plugin!r} failed in {what}: {type(exc).__name__}: {exc}", (plugin,)) from exc
            if result is not None:
                return result, plugin
        return None, plugin

    @staticmethod
    def _fault(plugin: str, message: str) -> PluginError:
        return PluginError(f"plugin {plugin!r}: {message}", (plugin,))

    def stage_error(self, plugin: str, message: str) -> RuntimeError:
        """The error for a stage result that fails a core check: a :class:`PluginError` naming a third-party
        ``plugin``, a plain ``RuntimeError`` (a bug, with its traceback) when pruneframe's own code produced it."""
        if all(self._is_own(name) for name in plugin.split(_WRAPPED)):
            return RuntimeError(f"{message} (from {plugin!r}, pruneframe's own code: a bug)")
        return self._fault(plugin, message)

    # provenance -------------------------------------------------------------------------------

    def _plugins_in_order(self, impls: list[Any], owner: PruningMethod | RecalibrationMethod | None) -> list[str]:
        """The plugins of ``impls`` in the order pluggy tries them (the method's plugin for a core stage with an owner)."""
        return [self.method_plugin(owner) if owner is not None and impl.plugin_name in CORE_PLUGINS else impl.plugin_name for impl in reversed(impls)]

    def stage_record(self, plugin: str, owner: PruningMethod | RecalibrationMethod | None = None, code: Any = None) -> StageRecord:
        """The :class:`StageRecord` of ``plugin``: its name, its code's package and that package's digest.

        ``code`` is what ran when it is not the plugin object itself (an adapter instance); with ``owner``,
        a core stage that called the method object is recorded as the method's class. Plugins joined by
        ``" + "`` (a hook with wrappers) are recorded together, with one digest over theirs.
        """
        names = plugin.split(_WRAPPED)
        if len(names) > 1:
            parts = [self.stage_record(name, owner) for name in names]
            joined = hashlib.sha256(_WRAPPED.join(p.digest for p in parts).encode()).hexdigest()[:16]
            return StageRecord(plugin=plugin, package=_WRAPPED.join(p.package for p in parts), digest=joined)
        if code is None and owner is not None and plugin == self.method_plugin(owner):
            code = type(owner)
        if code is None:
            code = self.pm.get_plugin(plugin)
        if code is None:  # not a registered plugin: the name is a module's (an unregistered method object's)
            code = plugin
        return StageRecord(plugin=plugin, package=top_package(code) or "?", digest=package_digest(code))

    def _record(
        self, provenance: dict[str, StageRecord] | None, stage: str, plugin: str, owner: PruningMethod | RecalibrationMethod | None = None, code: Any = None
    ) -> None:
        if provenance is not None:
            provenance[stage] = self.stage_record(plugin, owner, code)

    def stage_candidates(self, method: PruningMethod | None = None) -> dict[str, list[StageRecord]]:
        """Per stage (score, project, recalibrate, fold), every implementation that may carry it out.

        In the order they are tried (the first non-``None`` result wins), each with its code's digest;
        with ``method``, the core scoring and recalibration stages are recorded as the method's class (a
        pipeline's scorer's and recalibration's, see :meth:`stage_owner`).
        Any plugin that overrides a stage appears here whether or not it returns a result for a given
        call, so a key over this changes when such a plugin is installed, removed or edited.
        """
        out: dict[str, list[StageRecord]] = {}
        for stage, hook_name in STAGE_HOOKS.items():
            owner = self.stage_owner(method, stage) if method is not None and stage in ("score", "recalibrate") else None
            impls = getattr(self.pm.hook, hook_name).get_hookimpls()
            out[stage] = [self.stage_record(plugin, owner) for plugin in self._plugins_in_order(impls, owner)]
        return out

    def discover_units(self, model: nn.Module, provenance: dict[str, StageRecord] | None = None) -> UnitSet:
        """The model's units, from the adapter that handles its architecture (recorded as ``architecture``)."""
        adapter = self.adapter_for(model)
        plugin = next(p for a, p in self._adapters or [] if a is adapter)
        try:
            units = adapter.discover(model)
        except _INPUT_ERRORS:
            raise
        except Exception as exc:
            if self._is_own(plugin):
                raise
            raise PluginError(f"plugin {plugin!r} failed in unit discovery ({type(adapter).__name__}): {type(exc).__name__}: {exc}", (plugin,)) from exc
        if not isinstance(units, UnitSet):
            raise self._fault(plugin, f"{type(adapter).__name__}.discover returned {type(units).__name__}, expected a UnitSet")
        self._record(provenance, "architecture", plugin, code=type(adapter))
        return units

    def score(self, method: PruningMethod, context: ScoringContext, provenance: dict[str, StageRecord] | None = None) -> torch.Tensor:
        """One score per unit, validated (type, shape and finiteness); recorded as ``score``."""
        owner = self.stage_owner(method, "score")
        scores, plugin = self._call("pruneframe_score_units", f"scoring with method {method.name!r}", owner, method=method, context=context)
        if not isinstance(scores, torch.Tensor) or scores.shape != (len(context.units),):
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise self._fault(plugin, f"method {method.name!r} returned scores of shape {got}, expected ({len(context.units)},)")
        if not (scores.dtype.is_floating_point or scores.dtype in (torch.int32, torch.int64, torch.bool)):
            raise self._fault(plugin, f"method {method.name!r} returned scores of dtype {scores.dtype}, expected real numbers")
        bad = torch.nonzero(torch.isnan(scores.detach().float())).flatten()
        if bad.numel():
            raise self._fault(plugin, f"method {method.name!r} returned NaN scores (first at unit {int(bad[0])})")
        self._record(provenance, "score", plugin, owner)
        return scores.detach().float().cpu()

    def project(
        self,
        scores: torch.Tensor,
        units: UnitSet,
        budget: int,
        minimum: torch.Tensor,
        policy: str,
        scope: str,
        round_to: torch.Tensor | None = None,
        provenance: dict[str, StageRecord] | None = None,
        removal: str = "none",
        removable: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A boolean keep-mask meeting ``budget`` exactly (``round_to``: per-group width multiples;
        ``removal`` / ``removable``: whole blocks may go); recorded as ``project``.

        Whichever plugin projected, its mask must pass the core check
        (:func:`pruneframe.pipeline.budget.check_meets_budget`: within budget, tight, the minimums and ``round_to``
        held; with removal, :func:`pruneframe.pipeline.removal.check_removal`); a plugin's mask of the wrong
        type or shape, or one that fails that check, is its fault (:class:`PluginError`).
        """
        mask, plugin = self._call(
            "pruneframe_project",
            "projection",
            scores=scores,
            units=units,
            budget=budget,
            minimum=minimum,
            policy=policy,
            scope=scope,
            round_to=round_to,
            removal=removal,
            removable=removable,
        )
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (len(units),):
            got = f"{mask.dtype} tensor of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise self._fault(plugin, f"pruneframe_project returned {got}, expected a bool mask of shape ({len(units)},)")
        kept = units.kept_cost(mask) if removal == "none" else units.budget_cost(mask)
        if kept > budget:
            raise self.stage_error(plugin, f"pruneframe_project returned a mask over budget: it keeps cost {kept:,} > budget {budget:,}")
        try:
            check_mask(mask, units, budget, minimum, round_to, removal, removable)
        except BudgetError as exc:
            raise self.stage_error(plugin, f"pruneframe_project returned a mask that fails the budget check: {exc}") from exc
        self._record(provenance, "project", plugin)
        return mask

    def recalibrate(
        self, method: PruningMethod, context: ScoringContext, mask: torch.Tensor, provenance: dict[str, StageRecord] | None = None
    ) -> Recalibration | None:
        """The method's recalibration for ``mask`` (``None`` when it has none); recorded as ``recalibrate``."""
        owner = self.stage_owner(method, "recalibrate")
        result, plugin = self._call("pruneframe_recalibrate", f"recalibration with method {method.name!r}", owner, method=method, context=context, mask=mask)
        if result is not None and not isinstance(result, Recalibration):
            raise self._fault(plugin, f"method {method.name!r} recalibration returned {type(result).__name__}, expected a Recalibration or None")
        self._record(provenance, "recalibrate", plugin, owner)
        return result

    def fold(
        self,
        model: nn.Module,
        units: UnitSet,
        mask: torch.Tensor,
        recalibration: Recalibration | None,
        inplace: bool = False,
        provenance: dict[str, StageRecord] | None = None,
    ) -> nn.Module:
        """The smaller dense model (``inplace``: shrink ``model`` itself); recorded as ``fold``."""
        folded, plugin = self._call("pruneframe_fold", "fold", model=model, units=units, mask=mask, recalibration=recalibration, inplace=inplace)
        if not isinstance(folded, nn.Module):
            raise self._fault(plugin, f"pruneframe_fold returned {type(folded).__name__}, expected the folded nn.Module")
        self._record(provenance, "fold", plugin)
        return folded

    # introspection ----------------------------------------------------------------------------

    def describe(self) -> list[PluginInfo]:
        """Every loaded plugin with its hooks and registrations, then every plugin that failed."""
        self.methods()
        self.evaluators()
        self.recoveries()
        self.recalibrations()
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
        for name, plugin_name in self._recovery_origin.items():
            infos[plugin_name].recoveries.append(name)
        for name, plugin_name in self._recalibration_origin.items():
            infos[plugin_name].recalibrations.append(name)
        out = list(infos.values())
        out += [PluginInfo(name=n, module="?", error=err) for n, err in self.failures.items()]
        return out
