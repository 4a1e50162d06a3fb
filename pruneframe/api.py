"""The public entry point: ``prune(model, method=..., budget=..., calibration=...)``.

A thin call of :class:`~pruneframe.pipeline.session.PruneSession`: discover units, resolve the budget, score,
project (the same projector every method gets), recalibrate, fold, with the checks, timings and
memory that session records in its typed report.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pruneframe import checkpoint
from pruneframe.pipeline.budget import BudgetKind
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.pipeline.host import PluginHost
from pruneframe.pipeline.methods import PruningMethod
from pruneframe.pipeline.prune_report import PruneReport
from pruneframe.pipeline.session import PruneResult, PruneSession

__all__ = ["prune", "PruneResult", "PruneReport", "PruneSession", "load_pruned"]

load_pruned = checkpoint.load_pruned


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
    device: str | torch.device | None = None,
    tokenizer: Any = None,
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
        device: move ``model`` to this device first (``auto``: CUDA when present; ``cpu``, ``cuda``,
            ``cuda:N``, ``mps``); ``None`` prunes it where it is.
        tokenizer: the model's tokenizer, for a method that trims the vocabulary (``vocab``,
            ``vocab+METHOD``); the result then carries the rebuilt one (``PruneResult.tokenizer``).

    Returns:
        the folded model, mask, scores and the typed :class:`~pruneframe.pipeline.prune_report.PruneReport`.
    """
    session = PruneSession(model, method, budget, config, budget_kind=budget_kind, host=host, device=device, tokenizer=tokenizer)
    return session.run(calibration, progress=progress, inplace=inplace, scores=scores)
