"""The core's default stage implementations, registered as a plugin like any other.

They run last (``trylast``), so any plugin can override a stage by implementing the same hook.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pruneframe.architectures import ArchitectureAdapter, builtin_adapters
from pruneframe.pipeline.fold import fold
from pruneframe.pipeline.removal import project_removal
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.methods import PruningMethod, Recalibration, ScoringContext
from pruneframe.pipeline.recalibration import NoRecalibration, RecalibrationMethod
from pruneframe.pipeline.projection import Policy, Scope, project
from pruneframe.pipeline.units import UnitSet


@hookimpl(trylast=True)
def pruneframe_register_architectures(register: Callable[[ArchitectureAdapter], None]) -> None:
    """The core's families: Llama/Mistral/Qwen2/Qwen3, Gemma 3, Phi-3."""
    for adapter in builtin_adapters():
        register(adapter)


@hookimpl(trylast=True)
def pruneframe_register_recalibrations(register: Callable[[type[RecalibrationMethod]], None]) -> None:
    """The core's recalibration: ``none`` (fold the mask as it is)."""
    register(NoRecalibration)


@hookimpl(trylast=True)
def pruneframe_score_units(method: PruningMethod, context: ScoringContext) -> torch.Tensor:
    """Call the method object's own scoring rule."""
    return method.score(context)


@hookimpl(trylast=True)
def pruneframe_recalibrate(method: PruningMethod, context: ScoringContext, mask: torch.Tensor) -> Recalibration | None:
    """Call the method object's own recalibration rule (``None`` when it has none)."""
    return method.recalibrate(context, mask)


@hookimpl(trylast=True)
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
) -> torch.Tensor:
    """The core projector: a mask that meets the budget exactly (with removable blocks when ``removal`` says so)."""
    if removal != "none":
        return project_removal(
            scores,
            units.cost,
            budget,
            groups=units.groups,
            overhead=units.overhead,
            removal=removal,
            removable=removable,
            minimum=minimum,
            policy=policy,
            scope=scope,
        )
    return project(scores, units.cost, budget, groups=units.groups, minimum=minimum, policy=policy, scope=scope, round_to=round_to)


@hookimpl(trylast=True)
def pruneframe_fold(model: nn.Module, units: UnitSet, mask: torch.Tensor, recalibration: Recalibration | None, inplace: bool) -> nn.Module:
    """The core fold: slice units out, multiply scales and add bias corrections into the weights."""
    return fold(model, units, mask, recalibration, inplace=inplace)
