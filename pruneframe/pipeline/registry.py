"""What the loaded plugins register: methods, recalibrations, evaluators, recoveries and architecture adapters.

:class:`PluginRegistry` collects each kind by name from its registration hook, remembers which plugin
registered each name, and instantiates a name with its validated settings. A name two plugins claim is
left out and reported (a :class:`~pruneframe.pipeline.plugin_errors.PluginError` naming both when it is
asked for); an unknown name suggests close ones. :class:`~pruneframe.pipeline.host.PluginHost` builds on
it with the stage calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pluggy
from pydantic import ValidationError
from torch import nn

from pruneframe.architectures.base import ArchitectureAdapter
from pruneframe.pipeline.methods import PruningMethod
from pruneframe.pipeline.plugin_errors import PluginError, UnknownNameError, UnsupportedModelError, did_you_mean
from pruneframe.pipeline.recalibration import PIPELINE_SEPARATOR, ChainedRecalibration, PipelineMethod, RecalibrationMethod, split_pipeline_name
from pruneframe.pipeline.removal import REMOVAL_MODES, REMOVAL_SEPARATOR
from pruneframe.pipeline.vocab_method import VOCAB_SEPARATOR, VocabularyComposition, VocabularyMethod

__all__ = ["CORE_PLUGINS", "PLUGINS_ENV", "PluginInfo", "PluginRegistry"]

#: The plugins pruneframe itself is made of: the core stages and evaluators (always loaded, their exceptions never re-labelled).
CORE_PLUGINS = ("pruneframe.pipeline.builtins", "pruneframe.evaluation.builtin")
#: Comma-separated entry-point plugin names: load exactly these (the core stages always load).
PLUGINS_ENV = "PRUNEFRAME_PLUGINS"


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


def _retitled(exc: ValidationError, title: str) -> ValidationError:
    """``exc`` with another title (pydantic prints it as "N validation errors for <title>")."""
    try:
        return ValidationError.from_exception_data(title, exc.errors())
    except (TypeError, ValueError, KeyError):  # an error type pydantic cannot rebuild: keep the original
        return exc


class PluginRegistry:
    """A PluginManager's registrations by kind and name, with the plugin each came from."""

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

    # registries ---------------------------------------------------------------------------------

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
        """An instance of recalibration ``name`` with ``config`` validated by its config model.

        ``R1+R2`` (``refit+scales``) is a :class:`~pruneframe.pipeline.recalibration.ChainedRecalibration`
        whose ``config`` holds each step's settings under the step's name.
        """
        if PIPELINE_SEPARATOR not in name:
            return self._instance("recalibration", self.recalibrations(), name, config)
        names = [part.strip() for part in name.split(PIPELINE_SEPARATOR)]
        settings = dict(config or {})
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise UnknownNameError(f"recalibration chain {name!r}: settings for {', '.join(map(repr, unknown))}, which is not one of its steps")
        steps = [self._instance("recalibration", self.recalibrations(), part, settings.get(part)) for part in names]
        try:
            return ChainedRecalibration(steps)
        except ValueError as exc:
            raise UnknownNameError(str(exc)) from exc

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
        return did_you_mean(kind, name, known)

    def method(self, name: str, config: Any = None) -> PruningMethod:
        """An instance of method ``name`` with ``config`` validated by its config model.

        ``SCORER+RECALIBRATION`` (``llm-pruner+bias``) gives a :class:`~pruneframe.pipeline.recalibration.PipelineMethod`:
        ``config`` is the scorer's settings, plus under ``recalibration`` the recalibration's.
        ``VOCAB+METHOD`` (``vocab+llm-pruner``, ``vocab+llm-pruner+scales``), where ``VOCAB`` is a
        vocabulary method, gives a :class:`~pruneframe.pipeline.vocab_method.VocabularyComposition`:
        ``config`` is ``METHOD``'s settings, plus under ``vocab`` the vocabulary method's.
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
        composed = self._vocabulary_composition(name, config)
        if composed is not None:
            return composed
        try:
            parts = split_pipeline_name(name)
        except ValueError as exc:
            raise UnknownNameError(str(exc)) from exc
        if parts is not None:
            settings = dict(config or {})
            recalibration = self.recalibration(parts[1], settings.pop("recalibration", None))
            return PipelineMethod(self.method(parts[0], settings), recalibration)
        return self._instance("method", self.methods(), name, config)

    def _vocabulary_composition(self, name: str, config: Any) -> VocabularyComposition | None:
        """``VOCAB+METHOD`` as a :class:`VocabularyComposition` when ``VOCAB`` names a vocabulary method, else None."""
        vocab, separator, rest = (part.strip() for part in name.partition(VOCAB_SEPARATOR))
        registered = self.methods().get(vocab) if separator else None
        if registered is None or not issubclass(registered, VocabularyMethod):
            return None
        if not rest:
            raise UnknownNameError(f"method {name!r}: expected VOCAB{VOCAB_SEPARATOR}METHOD, e.g. '{vocab}{VOCAB_SEPARATOR}llm-pruner'")
        settings = dict(config or {})
        vocabulary = self._instance("method", self.methods(), vocab, settings.pop("vocab", None))
        width = self.method(rest, settings)
        try:
            return VocabularyComposition(vocabulary, width)
        except ValueError as exc:
            raise UnknownNameError(str(exc)) from exc

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

    # adapters -----------------------------------------------------------------------------------

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
