"""Recalibrations as their own plugins, and pipelines that put any scorer with any recalibration.

A :class:`RecalibrationMethod` is the fourth stage alone: given the dense model, the calibration data
and a fixed keep-mask, it returns a :class:`~pruneframe.pipeline.methods.Recalibration` (per-unit scales, output
biases, ...) or ``None``. Plugins announce them through ``pruneframe_register_recalibrations``; the core
ships ``none``, GRASPrune's plugin ``scales`` (its stage B) and the baselines' plugin ``bias`` (FLAP's
compensation).

A :class:`PipelineMethod` named ``SCORER+RECALIBRATION`` (``llm-pruner+bias``) is a pruning method
whose ``score`` is the scorer's and whose ``recalibrate`` is the recalibration's; everything else
(minimums, projection policy, scope, ``round_to``) is the scorer's. Its config is the scorer's config
plus one field, ``recalibration``, holding the recalibration's settings, so a pipeline's settings
round-trip through :meth:`pruneframe.pipeline.host.PluginHost.method` like any method's. A method's own
recalibration (its paper's) stays its default: ``flap`` still compensates biases and ``grasprune`` still
learns scales; ``flap+none`` is FLAP without its compensation.

Recalibrations chain: ``SCORER+R1+R2`` (``llm-pruner+refit+scales``) runs ``R1``, then ``R2`` on the model
with ``R1``'s replacement weights swapped in, and folds both (:class:`ChainedRecalibration`). Every step
but the last must only replace weights (:attr:`RecalibrationMethod.replaces_weights`, ``refit``): a later
step sees those weights exactly, while scales or biases would have to be simulated under it. Its config
holds each step's settings under the step's name (``{"refit": {...}, "scales": {...}}``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model
from torch import nn

from pruneframe.util.digests import package_digest
from pruneframe.pipeline.methods import MethodConfig, PruningMethod, Recalibration, ScoringContext
from pruneframe.pipeline.units import UnitSet

if TYPE_CHECKING:
    from pruneframe.architectures.rotation import StreamBases

__all__ = [
    "PIPELINE_SEPARATOR",
    "RecalibrationConfig",
    "RecalibrationMethod",
    "NoRecalibration",
    "ChainedRecalibration",
    "PipelineMethod",
    "split_pipeline_name",
    "method_code_digest",
]

#: Joins a scorer's name and a recalibration's name into a pipeline's name.
PIPELINE_SEPARATOR = "+"


class RecalibrationConfig(BaseModel):
    """Settings every recalibration has (none yet); subclass it for a recalibration's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RecalibrationMethod(ABC):
    """Base class of every recalibration plugin: ``name``, ``Config``, ``summary`` and :meth:`recalibrate`."""

    name: ClassVar[str]
    Config: ClassVar[type[RecalibrationConfig]] = RecalibrationConfig
    summary: ClassVar[str] = ""
    #: Whether every result only replaces o_proj / down_proj weights (no scales, no biases): such a
    #: recalibration may run before another in a chain (:class:`ChainedRecalibration`).
    replaces_weights: ClassVar[bool] = False

    def __init__(self, config: RecalibrationConfig | dict[str, Any] | None = None) -> None:
        if isinstance(config, RecalibrationConfig):
            config = config.model_dump()
        self.config = self.Config.model_validate(config or {})

    @abstractmethod
    def recalibrate(self, context: ScoringContext, mask: torch.Tensor) -> Recalibration | None:
        """Scales and/or bias corrections for the fixed ``mask`` (``None``: nothing to fold)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class NoRecalibration(RecalibrationMethod):
    """``none``: fold the mask as it is."""

    name = "none"
    summary = "no recalibration: the kept weights are folded unchanged"

    def recalibrate(self, context: ScoringContext, mask: torch.Tensor) -> Recalibration | None:
        """Nothing to fold."""
        return None


def split_pipeline_name(name: str) -> tuple[str, str] | None:
    """``"llm-pruner+bias"`` -> ``("llm-pruner", "bias")``, ``"llm-pruner+refit+scales"`` -> ``("llm-pruner",
    "refit+scales")`` (a chain); ``None`` for a plain method name.

    Raises:
        ValueError: ``name`` has a separator but an empty part.
    """
    if PIPELINE_SEPARATOR not in name:
        return None
    parts = [p.strip() for p in name.split(PIPELINE_SEPARATOR)]
    if not all(parts):
        raise ValueError(f"pipeline {name!r}: expected SCORER{PIPELINE_SEPARATOR}RECALIBRATION, e.g. 'llm-pruner+bias'")
    return parts[0], PIPELINE_SEPARATOR.join(parts[1:])


@contextmanager
def replaced_weights(units: UnitSet, model: nn.Module, result: Recalibration | None) -> Iterator[None]:
    """Inside, ``model``'s o_proj and down_proj weights are ``result``'s replacements (restored on exit)."""
    swaps: list[tuple[nn.Linear, torch.Tensor]] = []
    if result is not None:
        for layer, mods in enumerate(units.layer_slices(model)):
            for linear, weights in ((mods.o_proj, result.o_proj), (mods.down_proj, result.down_proj)):
                if weights is not None:
                    swaps.append((linear, linear.weight.data))
                    linear.weight.data = weights[layer].to(linear.weight.data)
    try:
        yield
    finally:
        for linear, saved in swaps:
            linear.weight.data = saved


def merge_recalibrations(first: Recalibration | None, second: Recalibration | None) -> Recalibration | None:
    """One result folding both: ``second``'s fields, and ``first``'s replacement weights where ``second`` has none.

    ``first`` must only replace weights (a chain's earlier step), so nothing else of it is lost.
    """
    if first is None or first.is_empty():
        return second
    if second is None:
        return first
    return dataclasses.replace(
        second,
        o_proj=second.o_proj if second.o_proj is not None else first.o_proj,
        down_proj=second.down_proj if second.down_proj is not None else first.down_proj,
    )


class ChainedRecalibration(RecalibrationMethod):
    """Recalibrations run in order, each on the model with the earlier ones' replacement weights (see the module docstring).

    Attributes:
        steps: the recalibrations, in order; all but the last replace weights only.
    """

    def __init__(self, steps: list[RecalibrationMethod]) -> None:
        if len(steps) < 2:
            raise ValueError("a chain of recalibrations needs at least two")
        early = [s.name for s in steps[:-1] if not s.replaces_weights]
        if early:
            raise ValueError(
                f"recalibration chain {PIPELINE_SEPARATOR.join(s.name for s in steps)!r}: {', '.join(map(repr, early))} "
                "returns scales or biases, so no recalibration can follow it; only weight replacements (refit) can come first"
            )
        if len({s.name for s in steps}) != len(steps):
            raise ValueError(f"recalibration chain {PIPELINE_SEPARATOR.join(s.name for s in steps)!r} names a step twice")
        self.steps = steps
        self.name = PIPELINE_SEPARATOR.join(s.name for s in steps)  # type: ignore[misc]
        self.summary = ", then ".join(s.name for s in steps)  # type: ignore[misc]
        self.replaces_weights = all(s.replaces_weights for s in steps)  # type: ignore[misc]
        self.Config = _chain_config(tuple(type(s.config) for s in steps), tuple(s.name for s in steps))  # type: ignore[misc]
        self.config = self.Config.model_validate({s.name: s.config for s in steps})

    def recalibrate(self, context: ScoringContext, mask: torch.Tensor) -> Recalibration | None:
        """Each step's result for ``mask``, the later ones computed with the earlier weights in place; all folded together."""
        result: Recalibration | None = None
        for step in self.steps:
            with replaced_weights(context.units, context.model, result):
                result = merge_recalibrations(result, step.recalibrate(context, mask))
        return result

    def __repr__(self) -> str:
        return f"ChainedRecalibration({self.steps!r})"


_CHAIN_CONFIGS: dict[tuple[tuple[type[RecalibrationConfig], ...], tuple[str, ...]], type[RecalibrationConfig]] = {}


def _chain_config(classes: tuple[type[RecalibrationConfig], ...], names: tuple[str, ...]) -> type[RecalibrationConfig]:
    """A config class with one field per step, named by the step, of that step's config class."""
    key = (classes, names)
    if key not in _CHAIN_CONFIGS:
        fields: dict[str, Any] = {name: (cls, Field(default_factory=cls, description=f"the {name} step's settings")) for cls, name in zip(classes, names)}
        _CHAIN_CONFIGS[key] = create_model("ChainedRecalibrationConfig", __base__=RecalibrationConfig, **fields)  # type: ignore[call-overload]
    return _CHAIN_CONFIGS[key]


_CONFIG_CLASSES: dict[tuple[type[MethodConfig], type[RecalibrationConfig]], type[MethodConfig]] = {}


def _pipeline_config(scorer: type[MethodConfig], recalibration: type[RecalibrationConfig]) -> type[MethodConfig]:
    """The scorer's config class plus a ``recalibration`` field of the recalibration's config class."""
    key = (scorer, recalibration)
    if key not in _CONFIG_CLASSES:
        if "recalibration" in scorer.model_fields:
            raise TypeError(f"{scorer.__name__} has its own 'recalibration' field; it cannot head a pipeline")
        _CONFIG_CLASSES[key] = create_model(  # type: ignore[call-overload]
            f"{scorer.__name__}With{recalibration.__name__}",
            __base__=scorer,
            recalibration=(recalibration, Field(default_factory=recalibration, description="the recalibration's settings")),
        )
    return _CONFIG_CLASSES[key]


class PipelineMethod(PruningMethod):
    """A scorer's scores with another plugin's recalibration (see the module docstring).

    Attributes:
        scorer: the method whose ``score`` and ``minimum`` are used.
        recalibration: the recalibration whose ``recalibrate`` is used.
        name: ``"<scorer>+<recalibration>"``.
        config: the scorer's settings plus ``recalibration`` (the recalibration's settings).
    """

    name = ""  # set per instance

    def __init__(self, scorer: PruningMethod, recalibration: RecalibrationMethod) -> None:
        self.scorer = scorer
        self.recalibration = recalibration
        self.name = f"{scorer.name}{PIPELINE_SEPARATOR}{recalibration.name}"  # type: ignore[misc]
        self.Config = _pipeline_config(type(scorer.config), type(recalibration.config))  # type: ignore[misc]
        self.summary = f"{scorer.name}'s scores, {recalibration.name} recalibration"  # type: ignore[misc]
        self.config = self.Config.model_validate({**scorer.config.model_dump(), "recalibration": recalibration.config})

    @property
    def rotates_hidden(self) -> bool:  # type: ignore[override]
        """Whether the scorer rotates the residual stream."""
        return self.scorer.rotates_hidden

    @property
    def residual_shortcuts(self) -> bool:  # type: ignore[override]
        """Whether the scorer's rotation adds residual shortcut matrices."""
        return self.scorer.residual_shortcuts

    def score(self, context: ScoringContext) -> torch.Tensor:
        """The scorer's scores."""
        return self.scorer.score(context)

    def score_hidden(self, context: ScoringContext) -> torch.Tensor:
        """The scorer's hidden-channel scores."""
        return self.scorer.score_hidden(context)

    def hidden_rotation(self, context: ScoringContext) -> torch.Tensor | StreamBases | None:
        """The scorer's basis of the residual stream."""
        return self.scorer.hidden_rotation(context)

    def recalibrate(self, context: ScoringContext, mask: torch.Tensor) -> Recalibration | None:
        """The recalibration plugin's result for ``mask``."""
        return self.recalibration.recalibrate(context, mask)

    def minimum(self, units: UnitSet) -> torch.Tensor:
        """The scorer's minimums."""
        return self.scorer.minimum(units)

    def removable(self, units: UnitSet) -> torch.Tensor:
        """The scorer's removable blocks."""
        return self.scorer.removable(units)

    def code_parts(self) -> tuple[object, ...]:
        """The scorer's parts, then the recalibration (each step of a chain)."""
        steps = self.recalibration.steps if isinstance(self.recalibration, ChainedRecalibration) else [self.recalibration]
        return (*self.scorer.code_parts(), *steps)

    def __repr__(self) -> str:
        return f"PipelineMethod({self.scorer!r}, {self.recalibration!r})"


def method_code_digest(method: PruningMethod | RecalibrationMethod) -> str:
    """The digest of the code a method (or a recalibration) runs: its package's, or for a composite method (a pipeline) every part's package's."""
    parts = method.code_parts() if isinstance(method, PruningMethod) else (method,)
    if len(parts) > 1:
        joined = PIPELINE_SEPARATOR.join(package_digest(type(part)) for part in parts)
        return hashlib.sha256(joined.encode()).hexdigest()[:16]
    return package_digest(type(method))
