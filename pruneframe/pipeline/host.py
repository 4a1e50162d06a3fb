"""The plugin host: the one typed facade over pluggy. Nothing but it and its base class calls ``pm.hook.*``.

Build a fresh host per run (``PluginHost.create()``); there is no global manager, so tests and
parallel runs never share registrations.

What the plugins register (methods, recalibrations, evaluators, recoveries, adapters) is looked up by
the base class, :class:`~pruneframe.pipeline.registry.PluginRegistry`; the host adds the stage calls. The
errors are defined in :mod:`pruneframe.pipeline.plugin_errors` and re-exported here.

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

import hashlib
import importlib
import os
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy
import torch
from pydantic import ValidationError
from torch import nn

from pruneframe.pipeline import hookspecs
from pruneframe.pipeline.budget import check_mask
from pruneframe.pipeline.calibration import InsufficientCalibrationError
from pruneframe.util.digests import package_digest, top_package
from pruneframe.pipeline.methods import PruningMethod, Recalibration, ScoringContext
from pruneframe.pipeline.plugin_errors import PluginError, UnknownNameError, UnsupportedModelError
from pruneframe.pipeline.recalibration import PipelineMethod, RecalibrationMethod
from pruneframe.pipeline.registry import CORE_PLUGINS, PLUGINS_ENV, PluginInfo, PluginRegistry
from pruneframe.pipeline.projection import BudgetError
from pruneframe.pipeline.prune_report import StageRecord
from pruneframe.toolkit.resume import StaleCheckpointError
from pruneframe.pipeline.units import UnitSet
from pruneframe.pipeline.vocab_method import VocabularyComposition

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
#: Set to 1 to load only the plugins pruneframe ships (third-party entry points are skipped).
DISABLE_AUTOLOAD_ENV = "PRUNEFRAME_DISABLE_PLUGIN_AUTOLOAD"
#: The distribution whose entry-point plugins count as pruneframe's own.
OWN_DISTRIBUTION = "pruneframe"
#: The hook of each first-result stage, by the stage's name in a report.
STAGE_HOOKS = {"score": "pruneframe_score_units", "project": "pruneframe_project", "recalibrate": "pruneframe_recalibrate", "fold": "pruneframe_fold"}
#: Joins the plugins of a stage whose hook has wrappers (each of them takes part in the call).
_WRAPPED = " + "

#: Exceptions that describe bad input rather than a faulty plugin: never re-labelled as a plugin's fault.
_INPUT_ERRORS = (ValidationError, BudgetError, InsufficientCalibrationError, StaleCheckpointError, UnknownNameError, PluginError)


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


class PluginHost(PluginRegistry):
    """A PluginManager with the pruneframe hookspecs: its registrations (:class:`PluginRegistry`), plus typed calls for every stage."""

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

    # stages -----------------------------------------------------------------------------------

    @staticmethod
    def stage_owner(method: PruningMethod, stage: str) -> PruningMethod | RecalibrationMethod:
        """The object whose code carries out ``stage`` for ``method``: a pipeline's scorer scores and its
        recalibration recalibrates, a vocabulary composition's width method does both (the session
        scores the tokens); any other method does both."""
        if isinstance(method, VocabularyComposition):
            return PluginHost.stage_owner(method.width, stage)
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
