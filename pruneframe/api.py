"""The public entry point: ``prune(model, method=..., budget=..., calibration=...)``.

Runs the five stages through a fresh :class:`~pruneframe.host.PluginHost`: discover units, score,
project (the same projector every method gets), recalibrate, fold. Checks that the mask meets the
budget exactly and that the folded model has exactly the parameter count the mask implies.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruneframe import checkpoint
from pruneframe.memory import release_unused_memory
from pruneframe.budget import BudgetKind, check_meets_budget, group_round_to, make_budget, resolve
from pruneframe.calibration import CalibrationData
from pruneframe.host import PluginHost
from pruneframe.methods import PruningMethod, Recalibration, ScoringContext
from pruneframe.units import UnitSet

__all__ = ["prune", "PruneResult", "load_pruned"]

load_pruned = checkpoint.load_pruned


@dataclass
class PruneResult:
    """The outcome of :func:`prune`.

    Attributes:
        model: the folded, smaller dense model.
        mask: bool keep-mask over ``units``.
        scores: the scores the mask was projected from.
        recalibration: what was folded in besides the mask (or ``None``).
        units: the dense model's units.
        report: method, budget, achieved cost, widths, timings (what ``pruning.json`` records).
    """

    model: nn.Module
    mask: torch.Tensor
    scores: torch.Tensor
    recalibration: Recalibration | None
    units: UnitSet
    report: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path, tokenizer: Any = None) -> Path:
        """Write the folded model as a checkpoint folder (see :mod:`pruneframe.checkpoint`)."""
        return checkpoint.save(path, self.model, report=self.report, tokenizer=tokenizer)


def _as_calibration(calibration: Any) -> CalibrationData | None:
    if calibration is None or isinstance(calibration, CalibrationData):
        return calibration
    if isinstance(calibration, torch.Tensor):
        return CalibrationData(calibration, name="tensor")
    raise TypeError(
        f"calibration must be CalibrationData or a tensor of token ids, got {type(calibration).__name__}; "
        "use pruneframe.data.calibration_data(source, tokenizer) for text"
    )


def prune(
    model: nn.Module,
    method: str | PruningMethod,
    budget: float | int | dict | Any,
    calibration: CalibrationData | torch.Tensor | None = None,
    config: dict[str, Any] | None = None,
    *,
    budget_kind: BudgetKind = "prunable",
    host: PluginHost | None = None,
    progress: bool = True,
    inplace: bool = False,
    scores: torch.Tensor | None = None,
) -> PruneResult:
    """Prune ``model`` with ``method`` to ``budget`` and return the folded result.

    Args:
        model: a supported causal LM (left unchanged unless ``inplace``; the result is a copy).
        method: a registered method name (``pruneframe plugins`` lists them) or a method object.
        budget: a keep-ratio (of prunable params by default, see ``budget_kind``), a budget dict
            such as ``{"kind": "total", "keep": 0.8}``, or a budget object.
        calibration: token ids (any shape) or :class:`CalibrationData`; methods cut their own windows.
        config: the method's settings (validated by its config model; unknown keys are errors).
        budget_kind: how a bare number is read: ``prunable``, ``total`` or ``params``.
        host: a plugin host (a fresh one is built when omitted).
        progress: show progress bars.
        inplace: shrink ``model`` itself instead of returning a copy (halves peak memory on large
            models; ``model`` is unusable as the dense model afterwards).
        scores: precomputed scores, one per unit (e.g. ``PruneResult.scores`` of an earlier run of the
            same method on the same model): the scoring stage is skipped and the rest (projection to
            this budget, the method's recalibration, fold) runs as usual. Use it to compare
            recalibration settings on one mask, or to cut one score vector to several budgets.
    """
    host = host or PluginHost.create()
    method_obj = host.method(method, config) if isinstance(method, str) else method
    budget_obj = make_budget(budget, budget_kind)
    units = host.discover_units(model)
    minimum = method_obj.minimum(units)
    round_to = group_round_to(units, method_obj.config.round_to)
    target = resolve(budget_obj, units, minimum, round_to)
    policy, scope = method_obj.config.policy, method_obj.config.scope

    def project(scores: torch.Tensor) -> torch.Tensor:
        return host.project(scores.detach().float().cpu(), units, target, minimum, policy, scope, round_to)

    context = ScoringContext(
        model=model, units=units, calibration=_as_calibration(calibration), budget=target,
        minimum=minimum, project=project, progress=progress,
    )

    def score_with(name: str, config: dict[str, Any] | None = None) -> torch.Tensor:
        other = host.method(name, config)
        sub = dataclasses.replace(context, stats={})
        other_scores = host.score(other, sub)
        context.stats.setdefault("scored_with", {})[name] = sub.stats
        release_unused_memory()  # the other method's temporaries must not inflate the caller's memory
        return other_scores

    context.score_with = score_with
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    if scores is None:
        scores = host.score(method_obj, context)
    else:
        if scores.shape != (len(units),):
            raise ValueError(f"scores must have shape ({len(units)},) for this model's units, got {tuple(scores.shape)}")
        context.stats["scores"] = "precomputed"
    t1 = time.perf_counter()
    mask = project(scores)
    check_meets_budget(mask, units.cost, target, groups=units.groups, minimum=minimum, round_to=round_to)
    recalibration = host.recalibrate(method_obj, context, mask)
    t2 = time.perf_counter()
    added = _added_bias_params(model, units, recalibration)
    folded = host.fold(model, units, mask, recalibration, inplace).eval()
    t3 = time.perf_counter()
    if not inplace:
        model.train(was_training)

    params = sum(p.numel() for p in folded.parameters())
    if params != units.kept_params(mask) + added:
        raise RuntimeError(
            f"fold produced {params:,} parameters, expected {units.kept_params(mask) + added:,}; "
            "a fold plugin is inconsistent with unit discovery"
        )
    report = {
        "method": method_obj.name,
        "config": method_obj.config.model_dump(),
        "budget": {**budget_obj.model_dump(), "label": budget_obj.label()},
        "budget_prunable_params": target,
        "kept_prunable_params": units.kept_cost(mask),
        "prunable_params": units.prunable_params,
        "kept_params": params,
        "dense_params": units.total_params,
        "kept_fraction_of_prunable": units.kept_cost(mask) / max(units.prunable_params, 1),
        "kept_fraction_of_total": params / units.total_params,
        "architecture": units.architecture,
        "calibration": None if context.calibration is None else {
            "name": context.calibration.name, "tokens_read": context.calibration.tokens_read,
        },
        "timings_s": {"score": t1 - t0, "project_recalibrate": t2 - t1, "fold": t3 - t2},
        "method_stats": context.stats,
    }
    return PruneResult(model=folded, mask=mask, scores=scores, recalibration=recalibration, units=units, report=report)


def _added_bias_params(model: nn.Module, units: UnitSet, rec: Recalibration | None) -> int:
    """Bias parameters the fold creates: a correction on a down_proj / o_proj that had no bias."""
    if rec is None:
        return 0
    added = 0
    for mods in units.layer_slices(model):
        if rec.mlp_bias is not None and mods.down_proj.bias is None:
            added += mods.down_proj.out_features
        if rec.attn_bias is not None and mods.o_proj.bias is None:
            added += mods.o_proj.out_features
    return added
