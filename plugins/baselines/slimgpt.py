"""SlimGPT: layer-wise structured pruning with Optimal Brain Surgeon updates (Ling et al., NeurIPS 2024,
"SlimGPT: Layer-wise Structured Pruning for Large Language Models").

For every decoder layer in order, on the calibration activations of the already pruned and compensated
layers before it (:func:`pruneframe.toolkit.refit.sequential_solve`):

1. the Gram matrix ``H`` of o_proj's input (the layer dense) gives the KV groups to remove, one at a
   time, each time the group of least grouped OBS error ``tr(W_G (Hinv[G, G])^-1 W_G^T)`` over its
   ``G * head_dim`` columns, with the remaining columns and ``Hinv`` updated after each removal
   (:func:`pruneframe.toolkit.obs.greedy_removal`; Batched Greedy Pruning);
2. o_proj's kept columns take the grouped OBS update for the removed set
   (:func:`pruneframe.toolkit.obs.compensate`), and with the heads cut and that o_proj in place, the Gram
   matrix of down_proj's input gives the FFN channels to remove, several per step in shrinking groups
   (Dynamic Group Size, :func:`pruneframe.toolkit.obs.dynamic_group_sizes`), then down_proj's update;
3. the pruned, compensated layer gives the next layer's inputs.

**How many** units each layer loses follows the Incremental Pruning Ratio: layer ``l`` of ``L`` is pruned
at a ratio proportional to ``rho + (1 - rho) * ln(1 + l) / ln(L)`` (``schedule: log``; ``rho`` =
``first_to_last``, the first layer's ratio as a share of the last's), and the exact-budget projector
sets the common level. This reaches the projector as scores: in every layer and kind, the ``j``-th unit
to go scores ``(j + 0.5) / (n * shape_l)`` (``n`` units in the group), so one threshold on the scores
removes about ``level * shape_l * n`` units of every group. The counts are found first by projecting
those scores with the units in index order (a group's scores are the same set whichever unit holds
which, so the counts do not depend on the order); the OBS pass then chooses which units go, and the
returned scores put them in the lowest slots, the kept units after them by their last grouped error,
so the final projection keeps exactly what the OBS pass kept. The compensated weights of that pass
are the method's recalibration (:class:`~pruneframe.pipeline.methods.Recalibration` ``o_proj`` and
``down_proj``, which the fold slices like the originals); for any other mask (precomputed scores, a
projector override) the pass runs again with the grouped OBS update of that mask's removed units.

Differences from the paper and its official code:

* **Allocation**: the official code prunes ``round(r_l * n)`` heads and channels of layer ``l`` with
  ``r_l = r_min + (r_max - r_min) ln(1 + l) / ln(32)`` (defaults 0.06 and 0.3; 32 is LLaMA-7B's depth).
  Here the shape is ``ln(1 + l) / ln(L)`` for any depth ``L`` with ``r_min / r_max`` =
  ``first_to_last`` (0.2, the official defaults' ratio), and the level is whatever meets the budget
  exactly; attention and FFN share it, except that the exact fill may leave one kind a unit or so
  less pruned. ``schedule: linear`` is the official ``linear_increase``, ``uniform`` the same ratio in
  every layer. With ``scope: uniform`` the projector ranks units inside each group and breaks ties
  between equally ranked groups by a unit's position, which the OBS order permutes, so at some budgets
  a layer loses one unit more or less than the OBS pass chose; the update is then computed for the
  final mask.
* **Units**: a unit is a KV group (a KV head with its query heads); on grouped-query models the grouped
  error and update span the group's query heads together. On multi-head models this is the paper's head.
* **Head error**: the exact grouped error; the official code sums per-column errors
  ``||W_c||^2 / d_c^2`` with ``d`` the diagonal of the Cholesky factor of the head's ``Hinv`` block,
  which keeps only the diagonal of the triangular solve in the exact expression.
* **Numerics**: float64; ``Hinv`` is downdated after each removal instead of inverted again from ``H``,
  and the final weights are the one-shot grouped update of the removed set (the step-by-step updates'
  result, up to rounding). ``H`` is the plain sum ``x x^T`` (the official code averages ``2 x x^T``; the
  damping, ``1e-2`` of the mean diagonal as there, is relative, so nothing changes) and a column whose
  input was always zero gets the mean diagonal (the official code: 1 on its averaged scale).
* **Calibration**: 128 windows of 256 tokens of pruneframe's calibration stream (WikiText-2 validation
  by default) so the pass runs on a CPU; the paper takes 256 x 2,048 tokens of C4. Raise ``num_windows``
  and ``seq_len`` on a GPU.
* ``slimgpt+none`` folds the OBS pass's choice without its update; the official ``--no_compensate``
  also selects without updating.

With ``offload: cpu`` each layer runs on ``compute_device`` in turn, holding one layer, the calibration
hidden states and one ``H`` with its inverse (two for the greedy pass). Between scoring and the
recalibration the method holds the updated o_proj and down_proj weights of every layer (what the
recalibration returns), where the layers' own weights live.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, model_validator

from pruneframe.architectures import WeightSlice
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.methods import MethodConfig, PruningMethod, Recalibration, ScoringContext
from pruneframe.pipeline.units import UnitKind, UnitSet
from pruneframe.toolkit.obs import GreedyRemoval, compensate, damped_inverse, dead_columns, dynamic_group_sizes, greedy_removal
from pruneframe.toolkit.refit import LayerSolver, sequential_solve
from pruneframe.toolkit.streaming import StreamingOptions

__all__ = ["SlimGPTConfig", "SlimGPT", "Schedule", "ratio_shape", "schedule_scores"]

PositiveInt = Annotated[int, Field(ge=1)]
Schedule = Literal["log", "linear", "uniform"]


class SlimGPTConfig(MethodConfig, StreamingOptions):
    """SlimGPT settings.

    Attributes:
        num_windows: calibration windows the Gram matrices are summed over.
        seq_len: tokens per window.
        batch_size: windows per layer call.
        damping: added to ``H``'s diagonal, relative to its mean diagonal (the official ``percdamp``).
        schedule: how the pruning ratio grows with depth: ``log`` (the paper's Incremental Pruning
            Ratio), ``linear`` or ``uniform``.
        first_to_last: the first layer's pruning ratio as a share of the last layer's (``log``, ``linear``).
        ffn_group_min: fewest FFN channels removed per greedy step (Dynamic Group Size).
        ffn_group_max: most FFN channels removed per greedy step.
        offload, compute_device: ``offload="cpu"`` runs each decoder layer on ``compute_device`` in turn
            (:class:`~pruneframe.toolkit.streaming.StreamingOptions`).
    """

    num_windows: PositiveInt = 128
    seq_len: Annotated[int, Field(ge=2)] = 256
    batch_size: PositiveInt = 4
    damping: Annotated[float, Field(gt=0)] = 0.01
    schedule: Schedule = "log"
    first_to_last: Annotated[float, Field(gt=0, le=1)] = 0.2
    ffn_group_min: PositiveInt = 64
    ffn_group_max: PositiveInt = 1024

    @model_validator(mode="after")
    def _groups_ordered(self) -> "SlimGPTConfig":
        if self.ffn_group_max < self.ffn_group_min:
            raise ValueError(f"ffn_group_max ({self.ffn_group_max}) must be >= ffn_group_min ({self.ffn_group_min})")
        return self


def ratio_shape(num_layers: int, schedule: Schedule, first_to_last: float) -> torch.Tensor:
    """Per layer, its pruning ratio as a share of the last layer's (float64, ``first_to_last`` .. 1).

    ``log``: ``rho + (1 - rho) ln(1 + l) / ln(L)``; ``linear``: ``rho + (1 - rho) l / (L - 1)``;
    ``uniform`` (or one layer): all ones.
    """
    if schedule == "uniform" or num_layers < 2:
        return torch.ones(num_layers, dtype=torch.float64)
    depth = torch.arange(num_layers, dtype=torch.float64)
    rise = torch.log1p(depth) / math.log(num_layers) if schedule == "log" else depth / (num_layers - 1)
    return first_to_last + (1.0 - first_to_last) * rise


def schedule_scores(units: UnitSet, shape: torch.Tensor, orders: dict[tuple[int, UnitKind], torch.Tensor] | None = None) -> torch.Tensor:
    """Scores whose projection removes about ``level * shape[l]`` of every group of layer ``l``.

    In each layer and kind the ``j``-th unit of ``orders[(layer, kind)]`` (the first to remove first; the
    index order without ``orders``) scores ``(j + 0.5) / (n * shape[layer])``, times ``1 + (2 L - g) 2^-20``
    for group ``g`` (``2 * layer + kind``) of ``2 L``, which keeps equal slots of different groups apart
    (ties go to the shallower group).
    """
    scores = torch.empty(len(units), dtype=torch.float64)
    groups = 2 * units.num_layers
    for i in range(units.num_layers):
        for kind in (UnitKind.FFN, UnitKind.KV):
            group = units.slice(i, kind)
            n = group.stop - group.start
            # Equal slots of two groups (equal shapes, or FFN and KV of one layer) would tie, and the projector
            # breaks ties by a unit's position in its group, which the OBS order permutes: a factor a few
            # float32 steps apart per group breaks them the same way in both projections (shallower first).
            separate = 1.0 + (groups - 2 * i - int(kind)) * 2.0**-20
            slots = (torch.arange(n, dtype=torch.float64) + 0.5) / (n * float(shape[i])) * separate
            order = torch.arange(n) if orders is None else orders[(i, kind)]
            scores[group.start + order] = slots
    return scores.float()


@dataclass
class _Compensation:
    """The weights of the last scoring pass and what they are valid for."""

    key: tuple[int, int]
    mask: torch.Tensor
    o_proj: list[torch.Tensor]
    down_proj: list[torch.Tensor]


def _unit_columns(part: WeightSlice) -> torch.Tensor:
    """``[units, per_unit]``: the columns of the linear layer each unit of ``part`` owns."""
    return part.indices(torch.arange(part.units)).view(part.units, part.per_unit)


def _removal_order(greedy: GreedyRemoval, units: int) -> torch.Tensor:
    """The removed units in removal order, then the kept ones by ascending last error (first to go first)."""
    order = greedy.order.cpu()
    kept = torch.ones(units, dtype=torch.bool)
    kept[order] = False
    rest = torch.nonzero(kept).flatten()
    rest = rest[torch.sort(greedy.errors.cpu()[rest], stable=True).indices]
    return torch.cat([order, rest])


class SlimGPT(PruningMethod):
    """Greedy grouped-OBS removal of KV groups and FFN channels, layer by layer, with an incremental pruning ratio."""

    name = "slimgpt"
    Config = SlimGPTConfig
    summary = "layer-wise OBS: greedy grouped removal of heads and FFN channels with weight updates, pruning ratio rising with depth"
    config: SlimGPTConfig

    def __init__(self, config: SlimGPTConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self._last: _Compensation | None = None

    def _pass(self, context: ScoringContext, solve: LayerSolver) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        cfg = self.config
        windows = context.require_calibration(self.name).windows(cfg.num_windows, cfg.seq_len)
        context.stats.setdefault(self.name, {}).update({"calibration_tokens": int(windows.numel()), "damping": cfg.damping})
        return sequential_solve(
            context.model,
            context.units,
            windows,
            solve,
            batch_size=cfg.batch_size,
            device=cfg.device_for(context.model) if cfg.streaming else None,
            progress=context.progress,
            desc="slimgpt layers",
        )

    def score(self, context: ScoringContext) -> torch.Tensor:
        """Scores whose projection keeps what the OBS pass kept, at the schedule's per-layer counts."""
        cfg, units = self.config, context.units
        shape = ratio_shape(units.num_layers, cfg.schedule, cfg.first_to_last)
        planned = context.project(schedule_scores(units, shape)).bool().cpu()
        orders: dict[tuple[int, UnitKind], torch.Tensor] = {}

        def solve(i: int, part: WeightSlice, weight: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            count = int((~planned[units.slice(i, part.kind)]).sum())
            steps = [1] * count if part.kind == UnitKind.KV else dynamic_group_sizes(count, cfg.ffn_group_min, cfg.ffn_group_max)
            gram = gram.to(weight.device)
            hinv = damped_inverse(gram, cfg.damping)
            columns = _unit_columns(part)
            selection = weight.to(torch.float64, copy=True)
            selection[:, dead_columns(gram)] = 0  # an input that is always zero costs nothing to remove
            greedy = greedy_removal(weight, hinv, columns, steps, selection)
            orders[(i, part.kind)] = _removal_order(greedy, part.units)
            removed = torch.sort(greedy.order.cpu()).values
            keep = torch.ones(part.units, dtype=torch.bool)
            keep[removed] = False
            # the same call, on the same columns in the same order, as a recalibration for this mask makes
            return compensate(weight, hinv, columns[removed].flatten()), keep

        o_proj, down_proj, mask = self._pass(context, solve)
        self._last = _Compensation(self._key(context), mask, o_proj, down_proj)
        widths = units.widths(mask)
        context.stats[self.name].update(
            {
                "schedule": cfg.schedule,
                "ratio_shape": [round(float(s), 4) for s in shape],
                "removed_ffn_channels": [shape_.ffn_channels - w["ffn_channels"] for shape_, w in zip(units.layers, widths, strict=True)],
                "removed_kv_groups": [shape_.kv_groups - w["kv_groups"] for shape_, w in zip(units.layers, widths, strict=True)],
            }
        )
        return schedule_scores(units, shape, orders)

    @staticmethod
    def _key(context: ScoringContext) -> tuple[int, int]:
        return id(context.model), id(context.calibration)

    def recalibrate(self, context: ScoringContext, mask: torch.Tensor) -> Recalibration:
        """The grouped-OBS-updated o_proj and down_proj weights (full shapes) for ``mask``."""
        mask = mask.bool().cpu()
        last, self._last = self._last, None
        if last is not None and last.key == self._key(context) and torch.equal(last.mask, mask):
            context.stats.setdefault(self.name, {})["compensation"] = "from the scoring pass"
            return Recalibration(o_proj=last.o_proj, down_proj=last.down_proj)
        del last
        units, damping = context.units, self.config.damping

        def solve(i: int, part: WeightSlice, weight: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            keep = mask[units.slice(i, part.kind)]
            removed = part.indices(torch.nonzero(~keep).flatten())
            if removed.numel() == 0:
                return weight.clone(), keep
            return compensate(weight, damped_inverse(gram.to(weight.device), damping), removed), keep

        o_proj, down_proj, _ = self._pass(context, solve)
        context.stats[self.name]["compensation"] = "recomputed for the mask"
        return Recalibration(o_proj=o_proj, down_proj=down_proj)


@hookimpl
def pruneframe_register_methods(register: Callable[[type[PruningMethod]], None]) -> None:
    """Register SlimGPT."""
    register(SlimGPT)
