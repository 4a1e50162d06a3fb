"""The pluggy contract: one hook per stage of structured pruning.

Every hook is prefixed ``pruneframe_`` and called with keyword arguments only. The core's own
behaviour (the Llama, Gemma 3 and Phi-3 adapters, the budget projector, folding, dispatching to method objects) is
itself implemented as plugins, registered like any third-party one, so a plugin can override any
stage with ``tryfirst=True``. Plugins are found through the ``pruneframe`` entry-point group.

A *method* (GRASPrune, magnitude, ...) is a :class:`pruneframe.pipeline.methods.PruningMethod` subclass
that a plugin announces through :func:`pruneframe_register_methods`; the default ``score`` and
``recalibrate`` implementations call that object. Only :mod:`pruneframe.pipeline.host` calls these hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pruneframe.architectures.base import ArchitectureAdapter
    from pruneframe.pipeline.methods import PruningMethod, Recalibration, ScoringContext
    from pruneframe.pipeline.projection import Policy, Scope
    from pruneframe.pipeline.units import UnitSet

PROJECT_NAME = "pruneframe"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def pruneframe_register_methods(register: Callable[[type[PruningMethod]], None]) -> None:
    """Announce pruning methods: call ``register(MethodClass)`` once per method.

    Every implementation is called (collect-all). The class's ``name`` is how users select it.
    """


@hookspec
def pruneframe_register_evaluators(register: Callable[[type[Any]], None]) -> None:
    """Announce evaluators (perplexity, zero-shot, ...): call ``register(EvaluatorClass)`` for each."""


@hookspec
def pruneframe_register_recoveries(register: Callable[[type[Any]], None]) -> None:
    """Announce recovery plugins: call ``register(RecoveryClass)`` once per :class:`pruneframe.recovery.Recovery` subclass.

    Every implementation is called (collect-all). A recovery heals a folded model after pruning
    (fine-tuning, distillation) without changing its widths or parameter count; the class's ``name``
    is how users select it (``--recover NAME``, ``recovery: [...]`` in a comparison).
    """


@hookspec
def pruneframe_register_recalibrations(register: Callable[[type[Any]], None]) -> None:
    """Announce recalibrations: call ``register(RecalibrationClass)`` once per :class:`pruneframe.pipeline.recalibration.RecalibrationMethod` subclass.

    Every implementation is called (collect-all). A recalibration computes, for a fixed keep-mask,
    what the fold multiplies or adds into the kept weights (per-unit scales, output biases); the
    class's ``name`` is how users pair it with any scorer (``llm-pruner+bias``, see
    :class:`pruneframe.pipeline.recalibration.PipelineMethod`).
    """


@hookspec
def pruneframe_register_architectures(register: Callable[[ArchitectureAdapter], None]) -> None:
    """Announce model families: call ``register(adapter)`` once per :class:`~pruneframe.architectures.ArchitectureAdapter`.

    Every implementation is called (collect-all). A model is handled by the first adapter whose
    ``matches(model)`` is true, plugins before the core, so a plugin can take over a built-in family.
    The adapter answers every family-specific question: units and their exact costs (the sum of unit
    costs plus the non-prunable parameters must equal the model's parameter count), each unit's
    weight slices, the decoder layers, the per-layer widths and the checkpoint config.
    """


@hookspec(firstresult=True)
def pruneframe_score_units(method: PruningMethod, context: ScoringContext) -> torch.Tensor | None:
    """Return one float score per unit (higher = more important to keep) for ``method``.

    The default implementation calls ``method.score(context)``. Iterative methods call
    ``context.project(scores)`` to get a budget-exact mask at every step.
    """


@hookspec(firstresult=True)
def pruneframe_project(
    scores: torch.Tensor,
    units: UnitSet,
    budget: int,
    minimum: torch.Tensor,
    policy: Policy,
    scope: Scope,
    round_to: torch.Tensor | None,
    removal: str,
    removable: torch.Tensor | None,
) -> torch.Tensor | None:
    """Turn scores into a boolean keep-mask whose cost meets ``budget`` exactly.

    ``budget`` is the largest allowed summed cost of kept units; ``minimum`` holds, per projection
    group (``units.groups``), the number of units that must be kept; ``round_to`` (``None``: no
    rounding) holds per group the multiple its kept width must be (or the whole group), as in
    :func:`pruneframe.pipeline.projection.project`. An implementation that cannot round must return ``None``
    when ``round_to`` is given (the mask is checked against it). ``removal`` (``none``, ``mixed``,
    ``blocks``, ``layers``) and ``removable`` (per group) say whether whole blocks may go, as in
    :func:`pruneframe.pipeline.removal.project_removal`; an implementation that cannot remove blocks
    must return ``None`` unless ``removal`` is ``none``. The core's projectors
    (:func:`pruneframe.pipeline.budget.project`, :func:`pruneframe.pipeline.removal.project_removal`) are
    the default implementation.
    """


@hookspec(firstresult=True)
def pruneframe_recalibrate(method: PruningMethod, context: ScoringContext, mask: torch.Tensor) -> Recalibration | None:
    """Return per-unit scales and/or output-bias corrections for the fixed ``mask``, or ``None``.

    The default implementation calls ``method.recalibrate(context, mask)``.
    """


@hookspec(firstresult=True)
def pruneframe_fold(model: nn.Module, units: UnitSet, mask: torch.Tensor, recalibration: Recalibration | None, inplace: bool) -> nn.Module | None:
    """Return a smaller dense model with dropped units removed and the recalibration folded in.

    With ``inplace`` the given model itself is shrunk (no second copy of the weights in memory).

    The core's :func:`pruneframe.pipeline.fold.fold` is the default implementation.
    """
