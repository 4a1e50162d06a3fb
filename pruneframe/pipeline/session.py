"""One prune, start to end: :class:`PruneSession` runs the five stages, timed and memory-tracked.

Building a session discovers the model's units and resolves the budget (so a budget the model cannot
meet fails before anything slow starts); :meth:`PruneSession.run` scores, projects (the projector every
method gets), recalibrates and folds, checks with the core's checks that the mask meets the budget
exactly and that the folded model has exactly the parameters the mask implies, whichever plugin
projected or folded (a method that trims the vocabulary then slices the token rows and rebuilds the
tokenizer within the same budget, :mod:`pruneframe.pipeline.vocab_plan`), and returns a :class:`PruneResult` whose ``report`` is a typed
:class:`~pruneframe.pipeline.prune_report.PruneReport` naming the plugin (and its code's digest) that carried
out each stage. ``pruneframe.prune``, the ``prune`` command, ``compare``'s runner and the benchmarks
all prune through this one object.

    session = PruneSession(model, "wanda-sp", 0.5)
    print(session.target)                       # the budget in prunable parameters
    result = session.run(calibration, inplace=True)
    print(result.report.kept_params, result.report.timings.total_s, result.report.memory.peak_rss_bytes)
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruneframe import checkpoint
from pruneframe.toolkit.memory import PeakMemory, release_unused_memory
from pruneframe.architectures.hidden import fold_hidden
from pruneframe.architectures.rotation import StreamBases, fuse_input_norms, rotate_hidden, rotate_stream, slice_shortcuts
from pruneframe.pipeline.budget import BudgetError, BudgetKind, check_mask, group_round_to, make_budget, mandatory_cost, resolve
from pruneframe.pipeline.hidden_plan import HiddenPlan, hidden_plan
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.util.devices import dtype_name, model_device, resolve_device
from pruneframe.pipeline.host import PluginHost
from pruneframe.pipeline.recalibration import PipelineMethod
from pruneframe.pipeline.methods import PruningMethod, Recalibration, ScoringContext
from pruneframe.pipeline.prune_report import STAGES, CalibrationRecord, MemoryRecord, PruneReport, StageRecord, Timings
from pruneframe.toolkit.hidden_stats import norm_factors, norm_input_energy
from pruneframe.util.offload import StreamingOptions, resolve_compute_device
from pruneframe.pipeline.units import UnitSet
from pruneframe.pipeline.vocab_method import VocabularyComposition
from pruneframe.pipeline.vocab_plan import VocabularyPlan, vocabulary_plan

__all__ = ["PruneSession", "PruneResult", "as_calibration"]


@dataclass
class PruneResult:
    """The outcome of a prune.

    Attributes:
        model: the folded, smaller dense model.
        mask: bool keep-mask over ``units``.
        scores: the scores the mask was projected from.
        recalibration: what was folded in besides the mask (or ``None``).
        units: the dense model's units.
        report: the typed record of the prune (what ``pruning.json`` holds).
        tokenizer: the rebuilt tokenizer when the prune trimmed the vocabulary (``None``: the dense
            model's tokenizer still fits the model).
        token_scores: the token scores the kept vocabulary was projected from (``None`` without a trim).
        kept_tokens: the kept tokens' dense ids in their new order (new id ``i`` is dense id
            ``kept_tokens[i]``; ``None`` without a trim).
    """

    model: nn.Module
    mask: torch.Tensor
    scores: torch.Tensor
    recalibration: Recalibration | None
    units: UnitSet
    report: PruneReport
    tokenizer: Any = None
    token_scores: torch.Tensor | None = None
    kept_tokens: torch.Tensor | None = None

    def save(self, path: str | Path, tokenizer: Any = None) -> Path:
        """Write the folded model as a checkpoint folder (see :mod:`pruneframe.checkpoint`) with ``tokenizer``,
        or with the rebuilt tokenizer when the prune trimmed the vocabulary (the dense one no longer fits)."""
        tokenizer = self.tokenizer if self.tokenizer is not None else tokenizer
        return checkpoint.save(path, self.model, report=self.report, tokenizer=tokenizer, adapter=self.units.adapter)


def as_calibration(calibration: Any) -> CalibrationData | None:
    """``calibration`` as :class:`CalibrationData` (token-id tensors are wrapped; ``None`` stays ``None``)."""
    if calibration is None or isinstance(calibration, CalibrationData):
        return calibration
    if isinstance(calibration, torch.Tensor):
        return CalibrationData(calibration, name="tensor")
    raise TypeError(
        f"calibration must be CalibrationData or a tensor of token ids, got {type(calibration).__name__}; "
        "use pruneframe.data.calibration_data(source, tokenizer) for text"
    )


def _json_ready(stats: dict[str, Any]) -> dict[str, Any]:
    """The method's statistics as plain JSON values (anything else as its string), as ``pruning.json`` stores them."""
    return json.loads(json.dumps(stats, default=str))


def _check_weights_present(model: nn.Module) -> None:
    """Raise ValueError when a weight of ``model`` has no data (on the meta device).

    That is a model loaded with accelerate's offload (``device_map`` entries ``"cpu"``/``"disk"``
    keep the weights outside the module until its forward runs) or built without weights: scores and
    the fold read the weights directly, so it cannot be pruned.
    """
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_meta:
            raise ValueError(
                f"{type(model).__name__}.{name} has no data (it is on the meta device, as with accelerate's "
                "device_map offload to 'cpu' or 'disk'); load the model without offload, on the CPU for one "
                "larger than the device, and set the method's offload: cpu to run it one layer at a time there"
            )


class PruneSession:
    """One method, one budget, one model: units discovered and the budget resolved once, then :meth:`run`.

    Args:
        model: a supported causal LM.
        method: a registered method name (``pruneframe plugins`` lists them) or a method object.
        budget: a keep-ratio (of prunable params by default, see ``budget_kind``), a budget dict such
            as ``{"kind": "total", "keep": 0.8}``, or a budget object.
        config: the method's settings when ``method`` is a name (validated; unknown keys are errors).
        budget_kind: how a bare number is read: ``prunable``, ``total`` or ``params``.
        host: a plugin host (a fresh one is built when omitted).
        device: move the model there first (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``); ``None``
            leaves it where it is.
        model_identity: the dense model's identity stamp, copied into the report.
        tokenizer: the model's tokenizer; needed by a method that trims the vocabulary (``vocab``,
            ``vocab+METHOD``: :mod:`pruneframe.pipeline.vocab_plan`), whose prune rebuilds it
            (:attr:`PruneResult.tokenizer`); other methods do not use it.

    Raises:
        pruneframe.pipeline.budget.BudgetError: the budget cannot hold the method's per-layer minimum.
        pruneframe.util.devices.DeviceUnavailableError: ``device`` is not on this machine.
        ValueError: a weight of the model has no data (meta device: accelerate offload), or a method
            that trims the vocabulary gets no tokenizer or one that is not BPE (the message names its type).
    """

    def __init__(
        self,
        model: nn.Module,
        method: str | PruningMethod,
        budget: float | int | dict | Any,
        config: dict[str, Any] | None = None,
        *,
        budget_kind: BudgetKind = "prunable",
        host: PluginHost | None = None,
        device: str | torch.device | None = None,
        model_identity: dict[str, Any] | None = None,
        tokenizer: Any = None,
    ) -> None:
        """Resolve the method and budget against the model's units (see the class docstring)."""
        self.host = host or PluginHost.create()
        if not isinstance(method, str) and config is not None:
            raise ValueError("config is for a method given by name; a method object carries its own config")
        self.method = self.host.method(method, config) if isinstance(method, str) else method
        self.budget = make_budget(budget, budget_kind)
        if device is not None:
            model.to(resolve_device(device))
        _check_weights_present(model)
        self.model = model
        #: Per stage that ran so far, the plugin that carried it out (the report's ``stages``).
        self.stages: dict[str, StageRecord] = {}
        self.units = self.host.discover_units(model, self.stages)
        self.minimum = self.method.minimum(self.units)
        self.round_to = group_round_to(self.units, self.method.config.round_to)
        self.removal = self.method.config.removal
        self.removable = self.method.removable_blocks(self.units)
        if self.removal != "none" and self.round_to is not None:
            raise ValueError(f"method {self.method.name!r}: round_to cannot be combined with removal {self.removal!r}; set one of them")
        #: How the hidden dimension is cut (``None``: it is not); then :attr:`cost_units` price the units at its width.
        total = self.budget.resolve(self.units) + self.units.nonprunable_params
        self.plan: HiddenPlan | None = hidden_plan(self.method, model, self.units, total)
        #: How the budget is shared with the tokens (``None``: the vocabulary is kept whole).
        self.vocab_plan: VocabularyPlan | None = vocabulary_plan(self.method, model, self.units, tokenizer, total, hidden=self.plan is not None)
        self.tokenizer = tokenizer
        #: The units with the costs the projector and the budget check use (at the kept hidden width).
        self.cost_units = self.units if self.plan is None else self.plan.units_at(self.units, self.plan.width)
        if self.vocab_plan is not None:
            self.target = self._vocabulary_target()
        elif self.plan is None:
            self.target = resolve(self.budget, self.units, self.minimum, self.round_to, self.removable)
        else:
            self.target = self._hidden_target(self.cost_units)
        self.model_identity = model_identity
        self._ran = False

    def _hidden_target(self, cost_units: UnitSet) -> int:
        """What the budget leaves the units at the plan's width; refuses one below their minimum."""
        assert self.plan is not None
        target = self.plan.unit_target(cost_units)
        floor = mandatory_cost(cost_units, self.minimum, self.round_to)
        if target < floor:
            raise BudgetError(
                f"budget '{self.budget.label()}' with {cost_units.hidden_size} hidden channels leaves {target:,} parameters for "
                f"the layers' units, below their mandatory minimum of {floor:,}; lower hidden_keep or raise the budget"
            )
        return min(target, cost_units.prunable_params)

    def _vocabulary_target(self) -> int:
        """What the budget leaves the width units beside the vocabulary's first share; refuses one below their minimum."""
        assert self.vocab_plan is not None
        target = self.vocab_plan.unit_target()
        minimum = self.minimum if self.removable is None else torch.where(self.removable, 0, self.minimum)
        floor = mandatory_cost(self.units, minimum, self.round_to)
        if target < floor:
            plan = self.vocab_plan
            raise BudgetError(
                f"budget '{self.budget.label()}' with {plan.initial_tokens:,} of {plan.tokens:,} tokens (vocab_keep {plan.keep!r}) leaves "
                f"{target:,} parameters for the layers' units, below their mandatory minimum of {floor:,}; lower vocab_keep or raise the budget"
            )
        return min(target, self.units.prunable_params)

    def project(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` -> a keep-mask meeting this session's budget (the projector every method gets)."""
        cfg = self.method.config
        return self.host.project(
            scores.detach().float().cpu(),
            self.cost_units,
            self.target,
            self.minimum,
            cfg.policy,
            cfg.scope,
            self.round_to,
            provenance=self.stages,
            removal=self.removal,
            removable=self.removable,
        )

    def _context(self, calibration: CalibrationData | None, progress: bool) -> ScoringContext:
        context = ScoringContext(
            model=self.model,
            units=self.units,
            calibration=calibration,
            budget=self.target,
            minimum=self.minimum,
            project=self.project,
            progress=progress,
        )

        def score_with(name: str, config: dict[str, Any] | None = None) -> torch.Tensor:
            other = self.host.method(name, config)
            sub = dataclasses.replace(context, stats={})
            other_scores = self.host.score(other, sub)
            context.stats.setdefault("scored_with", {})[name] = sub.stats
            release_unused_memory()  # the other method's temporaries must not inflate the caller's memory
            return other_scores

        context.score_with = score_with
        return context

    def _compute_device(self, model: nn.Module) -> torch.device:
        """Where the method computes: the model's device, or its streaming ``compute_device`` when it offloads."""
        config = self.method.config
        if isinstance(config, StreamingOptions) and config.offload != "none":
            return resolve_compute_device(model, config.compute_device)
        return model_device(model)

    def run(
        self,
        calibration: CalibrationData | torch.Tensor | None = None,
        *,
        progress: bool = True,
        inplace: bool = False,
        scores: torch.Tensor | None = None,
        calibration_source: dict[str, Any] | None = None,
    ) -> PruneResult:
        """Score, project, recalibrate and fold; return the folded model and the typed report.

        Args:
            calibration: token ids (any shape) or :class:`CalibrationData`; methods cut their own windows.
            progress: show progress bars.
            inplace: shrink the model itself, layer by layer, instead of folding a copy (the model is
                unusable as the dense model afterwards).
            scores: precomputed scores, one per unit: the scoring stage is skipped and the rest runs as usual.
            calibration_source: where the calibration stream came from, copied into the report.

        Raises:
            RuntimeError: the session already ran (a session is one prune).
            pruneframe.pipeline.host.PluginError: a plugin's mask fails the core budget check, or its fold produced
                a parameter count other than the mask implies (a ``RuntimeError`` when pruneframe's own
                code did: a bug).
        """
        if self._ran:
            raise RuntimeError("this PruneSession already ran; build a new one for another prune")
        self._ran = True
        model, units = self.model, self.units
        data = as_calibration(calibration)
        context = self._context(data, progress)
        if scores is not None and scores.shape != (len(units),):
            raise ValueError(f"scores must have shape ({len(units)},) for this model's units, got {tuple(scores.shape)}")
        was_training = model.training
        model.eval()
        with PeakMemory(device=str(self._compute_device(model))) as memory:
            t0 = time.perf_counter()
            if scores is None:
                scores = self.host.score(self.method, context, provenance=self.stages)
            else:
                context.stats["scores"] = "precomputed"
            hidden_scores = None if self.plan is None else self.method.score_hidden(context).detach().float().cpu()
            token_scores = None if self.vocab_plan is None else self.vocab_plan.score_tokens(context)
            t1 = time.perf_counter()
            mask = self.project(scores)
            cost_units, target = self.cost_units, self.target
            if self.plan is not None:
                cost_units = self.plan.units_at(units, self.plan.widen(mask))
                target = self.plan.unit_target(cost_units)
            check_mask(mask, cost_units, target, self.minimum, self.round_to, self.removal, self.removable)
            recalibration = self.host.recalibrate(self.method, context, mask, provenance=self.stages)
            t2 = time.perf_counter()
            added = _added_bias_params(model, units, recalibration) * cost_units.hidden_size // units.hidden_size
            folded = self.host.fold(model, units, mask, recalibration, inplace, provenance=self.stages).eval()
            if self.plan is not None:
                self._fold_hidden(folded, hidden_scores, cost_units.hidden_size, data, context)
            trim, vocabulary = None, None
            if self.vocab_plan is not None:
                trim, vocabulary = self.vocab_plan.trim(folded, self.tokenizer, token_scores, cost_units.budget_cost(mask))
            t3 = time.perf_counter()
        # The scoring temporaries and (in place) the dense weights are gone: hand their pages back, so the
        # pruned model's evaluation is not measured on top of freed memory the allocator kept.
        release_unused_memory()
        if not inplace:
            model.train(was_training)
        params = sum(p.numel() for p in folded.parameters())
        expected = cost_units.kept_params(mask) + added
        if vocabulary is not None:
            expected += vocabulary.params - vocabulary.dense_rows * vocabulary.row_cost
        if params != expected:
            raise self.host.stage_error(
                self.stages["fold"].plugin,
                f"pruneframe_fold produced {params:,} parameters, expected {expected:,} (the fold is inconsistent with unit discovery)",
            )
        if self.vocab_plan is not None and params - added > self.vocab_plan.target_total:
            raise RuntimeError(f"the vocabulary trim left {params - added:,} parameters, over the budget's {self.vocab_plan.target_total:,} (a bug)")
        report = self._report(folded, mask, params, added, data, context.stats, (t0, t1, t2, t3), memory, calibration_source, cost_units, target)
        if vocabulary is not None:
            report = report.model_copy(update={"vocabulary": vocabulary})
        return PruneResult(
            model=folded,
            mask=mask,
            scores=scores,
            recalibration=recalibration,
            units=units,
            report=report,
            tokenizer=None if trim is None else trim.trimmed.tokenizer,
            token_scores=token_scores,
            kept_tokens=None if trim is None else trim.trimmed.old_ids,
        )

    def _fold_hidden(self, folded: nn.Module, scores: torch.Tensor, width: int, data: CalibrationData | None, context: ScoringContext) -> None:
        """Cut ``folded``'s hidden dimension to the ``width`` best-scored channels, norms corrected as the plan says.

        Where the method gives a basis (:meth:`~pruneframe.pipeline.methods.PruningMethod.hidden_rotation`),
        the norms are fused and the stream rotated into it first; the channels cut are its axes. With a
        basis per stream point, every block gains its residual shortcut matrices, cut to the kept width.
        """
        from pruneframe.pipeline.hidden_budget import top_hidden_mask

        assert self.plan is not None
        if scores.shape != (self.units.hidden_size,):
            raise ValueError(f"method {self.method.name!r} gave {tuple(scores.shape)} hidden scores for a hidden size of {self.units.hidden_size}")
        keep = top_hidden_mask(scores, width)
        adapter = self.units.require_adapter()
        rotation = self.method.hidden_rotation(context)
        if isinstance(rotation, StreamBases):
            fused = fuse_input_norms(adapter, folded, untie=True)
            rotate_stream(adapter, folded, rotation)
            context.stats["rotation"] = {"norms_fused": len(fused), "bases": len(rotation.bases), "residual_shortcuts": 2 * rotation.num_layers}
        elif rotation is not None:
            fused = fuse_input_norms(adapter, folded, untie=True)
            missed = rotate_hidden(adapter, folded, rotation)
            context.stats["rotation"] = {"norms_fused": len(fused), "norms_approximated": {k: round(v, 6) for k, v in missed.items()}}
        factors = None
        if self.plan.options.norm_correction == "energy":
            if data is None:
                raise ValueError(f"method {self.method.name!r}: norm_correction 'energy' needs calibration data (or set norm_correction: none)")
            windows = data.windows(self.plan.options.norm_windows, self.plan.options.norm_seq_len)
            factors = norm_factors(norm_input_energy(adapter, folded, windows, progress=context.progress), keep)
            context.stats["norm_factors"] = {name: round(f, 6) for name, f in factors.items()}
        fold_hidden(adapter, folded, keep, factors)
        if isinstance(rotation, StreamBases):  # the leading axes of every basis are the ones kept
            slice_shortcuts(folded, width)
        context.stats["hidden_kept"] = width

    def _report(
        self,
        folded: nn.Module,
        mask: torch.Tensor,
        params: int,
        added: int,
        data: CalibrationData | None,
        stats: dict[str, Any],
        times: tuple[float, float, float, float],
        memory: PeakMemory,
        calibration_source: dict[str, Any] | None,
        cost_units: UnitSet,
        target: int,
    ) -> PruneReport:
        units, (t0, t1, t2, t3) = self.units, times
        return PruneReport(
            method=self.method.name,
            config=self.method.config.model_dump(mode="json"),
            budget=self.budget,
            budget_label=self.budget.label(),
            budget_prunable_params=target,
            kept_prunable_params=cost_units.kept_cost(mask),
            prunable_params=units.prunable_params,
            kept_params=params,
            dense_params=units.total_params,
            added_params=added,
            kept_fraction_of_prunable=cost_units.kept_cost(mask) / max(units.prunable_params, 1),
            kept_fraction_of_total=params / units.total_params,
            architecture=units.architecture,
            units=len(units),
            calibration=None if data is None else CalibrationRecord(name=data.name, tokens_read=data.tokens_read),
            timings=Timings(score_s=t1 - t0, project_recalibrate_s=t2 - t1, fold_s=t3 - t2, total_s=t3 - t0),
            memory=MemoryRecord(**{k: v for k, v in memory.report.as_dict().items() if k != "samples"}),
            device=str(model_device(folded)),
            dtype=dtype_name(folded),
            method_stats=_json_ready(stats),
            software=checkpoint.software_versions(),
            model=self.model_identity,
            calibration_source=calibration_source,
            stages={stage: self.stages[stage] for stage in STAGES if stage in self.stages},
            pipeline=_pipeline_parts(self.method),
            removed_blocks=_removed_blocks(units, mask),
            hidden_size=None if self.plan is None else cost_units.hidden_size,
        )


def _pipeline_parts(method: PruningMethod) -> dict[str, str] | None:
    """A composite method's parts by role (``vocabulary``, ``width``, ``scorer``, ``recalibration``); None for a plain method."""
    parts: dict[str, str] = {}
    if isinstance(method, VocabularyComposition):
        parts = {"vocabulary": method.vocabulary.name, "width": method.width.name}
        method = method.width
    if isinstance(method, PipelineMethod):
        parts.update(scorer=method.scorer.name, recalibration=method.recalibration.name)
    return parts or None


def _removed_blocks(units: UnitSet, mask: torch.Tensor) -> dict[str, list[int]] | None:
    """Layers whose attention block, MLP block or both the mask removes; None when it removes none."""
    empty = units.removed_groups(mask).reshape(-1, 2)  # per layer: (FFN, KV)
    if not bool(empty.any()):
        return None
    both = empty.all(dim=1)
    return {
        "attention": [i for i in range(units.num_layers) if bool(empty[i, 1]) and not bool(both[i])],
        "mlp": [i for i in range(units.num_layers) if bool(empty[i, 0]) and not bool(both[i])],
        "layers": [i for i in range(units.num_layers) if bool(both[i])],
    }


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
