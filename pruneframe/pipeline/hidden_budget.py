"""The hidden dimension under the budget: parameter counts affine in the hidden width, and their projection.

Cutting hidden channels (coordinates of the residual stream) shrinks every tensor that reads or writes
the stream, so a per-layer unit's cost depends on how many hidden channels are kept. With ``h`` of the
``d`` hidden channels kept, every unit ``u`` (an FFN channel, a KV group) costs ``a_u * h + b_u``:
``a_u`` weights per hidden channel (an FFN channel: its gate and up rows and its down column, 3; a KV
group: ``(2G + 2) * head_dim``) and ``b_u`` entries that do not span the stream (its own biases). A
hidden channel that no unit owns still carries ``per_channel`` parameters: its embedding column, its
lm_head column when untied, one entry of every norm and of every output bias. Everything else is
``fixed``. The model then has exactly

    total(h, mask) = fixed + per_channel * h + shortcuts * h^2 + sum over kept u of (a_u * h + b_u)

parameters, for any hidden mask of ``h`` channels and any unit mask. ``shortcuts`` counts the ``h x h``
matrices a residual connection may carry (SliceGPT's per-layer rotations put one on each block's
residual, :meth:`HiddenCostModel.with_shortcuts`); it is zero for every other prune. :class:`HiddenCostModel` holds
these numbers (pure, int64); :func:`project_with_hidden` turns scores into a hidden mask and a unit mask
whose total meets a parameter target exactly:

1. the hidden width ``h`` is chosen first (a method's setting), the ``h`` best-scored channels kept;
2. the per-layer units are projected by :func:`pruneframe.pipeline.projection.project` with their costs
   at width ``h`` and what the target leaves after the hidden channels' own parameters;
3. while a block of ``hidden_round_to`` more hidden channels still fits, it is added (its cost grows
   with the units kept, so this happens only where the budget is loose).

The result is exact in the projector's sense: ``total <= target`` and no admissible addition fits. A
dropped unit would cost ``a_u * h + b_u`` at the final width, more than what step 2 left, and step 3
only shrinks what is left while unit costs grow with ``h``; the next hidden block does not fit by step 3.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from pruneframe.pipeline.projection import BudgetError, project

__all__ = ["HiddenCostModel", "HiddenProjection", "balanced_width", "project_with_hidden", "top_hidden_mask"]


@dataclass(frozen=True)
class HiddenCostModel:
    """A model's parameter count as a function of its hidden width and the per-layer units kept.

    Attributes:
        hidden_size: ``d``, the dense model's hidden width.
        fixed: parameters that depend on neither the hidden width nor the units (q/k norms, ...).
        per_channel: parameters every kept hidden channel carries outside the units (embedding column,
            untied lm_head column, one entry of every norm and output bias).
        unit_per_channel: ``a_u`` per unit, int64: its weights per hidden channel.
        unit_fixed: ``b_u`` per unit, int64: its entries that do not span the hidden dimension.
        shortcuts: ``h x h`` matrices on residual connections (0 unless a per-layer rotation adds them).
    """

    hidden_size: int
    fixed: int
    per_channel: int
    unit_per_channel: torch.Tensor
    unit_fixed: torch.Tensor
    shortcuts: int = 0

    def __post_init__(self) -> None:
        a, b = self.unit_per_channel, self.unit_fixed
        if a.dtype != torch.int64 or b.dtype != torch.int64 or a.dim() != 1 or a.shape != b.shape:
            raise ValueError("unit_per_channel and unit_fixed must be 1-D int64 tensors of one length")
        if self.hidden_size < 1 or min(self.per_channel, self.fixed, self.shortcuts) < 0 or bool((a < 0).any()) or bool((b < 0).any()):
            raise ValueError("hidden costs must be non-negative and the hidden size positive")
        if bool(((a == 0) & (b == 0)).any()):
            raise ValueError("every unit must cost something")

    @classmethod
    def from_counts(cls, total_params: int, hidden_size: int, per_channel: int, unit_per_channel: torch.Tensor, unit_fixed: torch.Tensor) -> HiddenCostModel:
        """The model whose dense count (every unit kept, ``h = d``) is ``total_params``; ``fixed`` is what remains.

        Raises:
            ValueError: the per-channel and unit counts exceed ``total_params`` (inconsistent discovery).
        """
        spanned = hidden_size * (per_channel + int(unit_per_channel.sum())) + int(unit_fixed.sum())
        if spanned > total_params:
            raise ValueError(f"hidden-channel and unit costs ({spanned:,}) exceed the model's {total_params:,} parameters")
        return cls(hidden_size, total_params - spanned, per_channel, unit_per_channel, unit_fixed)

    def with_untied_head(self, vocab_size: int) -> HiddenCostModel:
        """The same model once its tied lm_head gets its own ``[vocab_size, hidden]`` weight (a rotation unties it)."""
        return dataclasses.replace(self, per_channel=self.per_channel + vocab_size)

    def with_shortcuts(self, count: int) -> HiddenCostModel:
        """The same model with ``count`` more ``h x h`` residual shortcut matrices (two per layer for SliceGPT's per-layer rotations)."""
        if count < 0:
            raise ValueError(f"a model cannot gain {count} shortcut matrices")
        return dataclasses.replace(self, shortcuts=self.shortcuts + count)

    def hidden_only(self, hidden_kept: int) -> int:
        """Parameters with ``hidden_kept`` hidden channels and no unit kept: ``fixed``, the shared entries and the shortcuts."""
        return self.fixed + self.per_channel * hidden_kept + self.shortcuts * hidden_kept * hidden_kept

    def __len__(self) -> int:
        return int(self.unit_per_channel.numel())

    def unit_costs(self, hidden_kept: int) -> torch.Tensor:
        """Every unit's cost (int64) with ``hidden_kept`` hidden channels."""
        return self.unit_per_channel * hidden_kept + self.unit_fixed

    def total(self, hidden_kept: int, unit_mask: torch.Tensor) -> int:
        """Exact parameter count with ``hidden_kept`` hidden channels and the units ``unit_mask`` keeps."""
        kept = unit_mask.bool()
        return self.hidden_only(hidden_kept) + hidden_kept * int(self.unit_per_channel[kept].sum()) + int(self.unit_fixed[kept].sum())

    @property
    def dense_total(self) -> int:
        """The dense model's parameter count."""
        return self.total(self.hidden_size, torch.ones(len(self), dtype=torch.bool))


@dataclass(frozen=True)
class HiddenProjection:
    """The masks :func:`project_with_hidden` returns and what they spend."""

    hidden_mask: torch.Tensor
    unit_mask: torch.Tensor
    total: int

    @property
    def hidden_kept(self) -> int:
        """Number of hidden channels kept."""
        return int(self.hidden_mask.sum())


def top_hidden_mask(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """The ``kept`` best-scored hidden channels (ties: lower index first), as a bool mask."""
    if scores.dim() != 1 or not torch.is_floating_point(scores) or bool(torch.isnan(scores).any()):
        raise ValueError("hidden scores must be a 1-D floating-point tensor without NaN")
    if not 0 <= kept <= scores.numel():
        raise ValueError(f"cannot keep {kept} of {scores.numel()} hidden channels")
    order = torch.sort(scores.to(torch.float64), descending=True, stable=True).indices
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[order[:kept]] = True
    return mask


def balanced_width(costs: HiddenCostModel, target_total: int, round_to: int = 1) -> int:
    """The widest hidden width (a multiple of ``round_to``, or ``d``) whose share of ``d`` is at most the share
    of the units' parameters the target leaves at that width.

    Cutting the hidden dimension and the per-layer units by the same fraction is the rule this encodes:
    at width ``h`` the units would cost ``U(h)`` if all were kept, and the target leaves them
    ``target_total - hidden_only(h)``; the width is balanced when ``h / d`` does not exceed that
    over ``U(h)``. The left-over share only falls as ``h`` grows, so the widths that satisfy it form a
    prefix and the widest is found by scanning. Returns ``round_to`` (or ``d``) when none does: the
    narrowest width, which the caller's budget check then judges.
    """
    d = costs.hidden_size
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    every_unit = torch.ones(len(costs), dtype=torch.bool)
    best = min(d, round_to)
    for width in sorted({*range(round_to, d + 1, round_to), d}):
        hidden_only = costs.hidden_only(width)
        units_full = costs.total(width, every_unit) - hidden_only
        left = target_total - hidden_only
        # width / d <= left / units_full, in integers
        if units_full > 0 and width * units_full > left * d:
            break
        if units_full == 0 and left < 0:
            break
        best = width
    return best


def _rounded(width: int, round_to: int, hidden_size: int) -> int:
    """``width`` rounded up to a multiple of ``round_to`` (the whole width at most)."""
    return min(hidden_size, -(-width // round_to) * round_to)


def project_with_hidden(
    costs: HiddenCostModel,
    hidden_scores: torch.Tensor,
    unit_scores: torch.Tensor,
    target_total: int,
    hidden_keep: float,
    *,
    hidden_round_to: int = 1,
    **project_kwargs: Any,
) -> HiddenProjection:
    """Hidden and unit masks whose parameter count meets ``target_total`` exactly (see the module docstring).

    Args:
        costs: the model's :class:`HiddenCostModel`.
        hidden_scores: one float per hidden channel, higher = keep.
        unit_scores: one float per unit, as :func:`~pruneframe.pipeline.projection.project` takes them.
        target_total: the most parameters the pruned model may have.
        hidden_keep: share of hidden channels to keep, in ``(0, 1]``: ``ceil(hidden_keep * d)``
            rounded up to a multiple of ``hidden_round_to``.
        hidden_round_to: hidden widths are multiples of this (or ``d``).
        project_kwargs: ``groups``, ``minimum``, ``policy``, ``scope``, ``round_to`` for the units.

    Raises:
        BudgetError: the hidden channels and the units' forced minimum cost more than the target.
        ValueError: malformed inputs.
    """
    d = costs.hidden_size
    if hidden_scores.numel() != d:
        raise ValueError(f"{hidden_scores.numel()} hidden scores for a hidden size of {d}")
    if unit_scores.numel() != len(costs):
        raise ValueError(f"{unit_scores.numel()} unit scores for {len(costs)} units")
    if not 0 < hidden_keep <= 1:
        raise ValueError(f"hidden_keep must be in (0, 1], got {hidden_keep}")
    if hidden_round_to < 1:
        raise ValueError(f"hidden_round_to must be >= 1, got {hidden_round_to}")
    width = _rounded(max(1, math.ceil(hidden_keep * d - 1e-9)), hidden_round_to, d)
    left = target_total - costs.hidden_only(width)
    if left < 0:
        raise BudgetError(f"{width} hidden channels alone need {target_total - left:,} parameters, over the target of {target_total:,}")
    unit_mask = project(unit_scores, costs.unit_costs(width), left, **project_kwargs).cpu()
    while width < d:
        wider = _rounded(width + 1, hidden_round_to, d)
        if costs.total(wider, unit_mask) > target_total:
            break
        width = wider
    hidden_mask = top_hidden_mask(hidden_scores.cpu(), width)
    return HiddenProjection(hidden_mask, unit_mask, costs.total(width, unit_mask))
