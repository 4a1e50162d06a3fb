"""What a pruning method is: a scoring rule, optionally a recalibration rule, and a typed config.

A method never touches the budget arithmetic or the weights' surgery: it gets a
:class:`ScoringContext` (model, units, calibration data, the resolved budget and a projector bound
to it) and returns one score per unit; the core projects, folds and reports.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import torch
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from torch import nn

if TYPE_CHECKING:
    from pruneframe.architectures.base import LayerSlices
    from pruneframe.architectures.rotation import StreamBases

from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.pipeline.projection import Policy, Scope
from pruneframe.pipeline.removal import Removal
from pruneframe.pipeline.units import UnitSet

__all__ = ["HiddenOptions", "MethodConfig", "PruningMethod", "Recalibration", "ScoringContext", "Policy", "Scope", "Seed", "not_a_boolean"]


def not_a_boolean(value: Any) -> Any:
    """Refuse ``true``/``false`` where a number belongs (pydantic would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got the boolean {value!r}")
    return value


def _seedable(value: int) -> int:
    """Refuse an integer torch cannot seed a generator with."""
    if not -(2**63) <= value < 2**64:
        raise ValueError(f"a seed must lie in [-2**63, 2**64 - 1]; {value} does not")
    return value


#: A seed: an integer torch can seed a generator with (a boolean is not one).
Seed = Annotated[int, BeforeValidator(not_a_boolean), AfterValidator(_seedable)]


class MethodConfig(BaseModel):
    """Settings every method has. Subclass it (``extra="forbid"`` is inherited) for a method's own.

    Attributes:
        policy: how the core projector orders units (``rank`` by score, ``density`` by score/cost,
            ``optimal`` maximises the kept score sum).
        scope: ``global`` (one ranking across layers and kinds) or ``uniform`` (same keep fraction in
            every layer and kind).
        round_to: keep a multiple of this many FFN channels in every layer (or all of them), e.g. 64
            for tensor-core friendly widths; KV groups are whole units anyway. ``None`` = any width.
            Honoured by every projection (iterative methods' too); the budget is then met exactly in
            the rounded sense of :mod:`pruneframe.pipeline.projection`.
        seed: seed for anything random the method does.
        removal: whether whole blocks may go (:mod:`pruneframe.pipeline.removal`): ``none`` (every
            layer keeps its minimum of both kinds: the published width methods' default), ``mixed``
            (width, and a block is removed when the scores drop all its units), ``blocks`` (whole
            attention / MLP blocks only) or ``layers`` (whole layers only).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Policy = "rank"
    scope: Scope = "global"
    round_to: Annotated[int, Field(ge=1)] | None = None
    seed: Seed = 0
    removal: Removal = "none"


class HiddenOptions(BaseModel):
    """Settings of a method that may cut the hidden dimension (mix into its config to opt in).

    Attributes:
        hidden_keep: share of hidden channels to keep, ``None`` (the default) = keep them all. The
            per-layer units are then projected at that width (:mod:`pruneframe.pipeline.hidden_budget`).
            ``"budget"``: the hidden width alone meets the budget; the per-layer units are projected
            at the narrowest admissible width (where they all fit unless the budget is extreme), then
            the width grows while the model still fits. ``"balanced"``: the widest hidden width whose
            share of the dense width is at most the share of the per-layer units' parameters the budget
            leaves at that width, so the hidden dimension and the units are cut by about the same
            fraction (:func:`~pruneframe.pipeline.hidden_budget.balanced_width`); the units are then
            projected at that width.
        hidden_round_to: kept hidden widths are multiples of this; ``None`` = the attention head count
            (transformers' configs require ``hidden_size`` to be a multiple of it).
        norm_correction: ``energy`` multiplies every norm's scale by ``sqrt(f * d / d')`` with ``f``
            its input's energy share on the kept channels, measured on calibration text; ``none``
            leaves the norms as they are.
        norm_windows: calibration windows the energies are measured on.
        norm_seq_len: tokens per such window.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_keep: Annotated[float, BeforeValidator(not_a_boolean), Field(gt=0, le=1)] | Literal["budget", "balanced"] | None = None
    hidden_round_to: Annotated[int, BeforeValidator(not_a_boolean), Field(ge=1)] | None = None
    norm_correction: Literal["energy", "none"] = "energy"
    norm_windows: Annotated[int, Field(ge=1)] = 16
    norm_seq_len: Annotated[int, Field(ge=2)] = 256


@dataclass
class Recalibration:
    """What a method's recalibration returns; the fold multiplies/adds it into the weights.

    Attributes:
        scales: one multiplier per unit (flat unit order; entries of dropped units are ignored).
            FFN channel scales multiply down_proj columns; KV-group scales multiply the group's
            k_proj and v_proj rows (and biases).
        mlp_bias: ``[num_layers, hidden]`` added to each down_proj output (a bias is created if absent).
        attn_bias: ``[num_layers, hidden]`` added to each o_proj output.
        mlp_out_scale: ``[num_layers, hidden]`` multiplying each down_proj output (its rows and bias)
            before ``mlp_bias`` is added.
        attn_out_scale: ``[num_layers, hidden]`` multiplying each o_proj output, likewise.
        down_proj: per layer, a replacement down_proj weight ``[hidden, intermediate]`` (the dense
            shape; columns of dropped channels are ignored), e.g. a least-squares refit of the kept
            columns. Scales multiply the replacement columns.
        o_proj: per layer, a replacement o_proj weight ``[hidden, heads * head_dim]`` (the dense shape;
            columns of dropped heads are ignored), likewise.
    """

    scales: torch.Tensor | None = None
    mlp_bias: torch.Tensor | None = None
    attn_bias: torch.Tensor | None = None
    mlp_out_scale: torch.Tensor | None = None
    attn_out_scale: torch.Tensor | None = None
    down_proj: list[torch.Tensor] | None = None
    o_proj: list[torch.Tensor] | None = None

    def is_empty(self) -> bool:
        """True when there is nothing to fold."""
        parts = (self.scales, self.mlp_bias, self.attn_bias, self.mlp_out_scale, self.attn_out_scale, self.down_proj, self.o_proj)
        return all(p is None for p in parts)


@dataclass
class ScoringContext:
    """Everything a method may use while scoring and recalibrating (runtime state, not config).

    Attributes:
        model: the dense model (do not modify its weights; gates belong in hooks).
        units: the model's prunable units.
        calibration: calibration token stream; methods cut their own windows from it.
        budget: largest allowed summed cost of kept units.
        minimum: per projection group, units that must be kept.
        project: ``scores -> bool mask`` using the same projector, budget and policy as the final
            projection; iterative methods call it at every step.
        progress: show progress bars.
        stats: free-form numbers a method reports (tokens processed, losses, ...), copied into the report.
        score_with: ``(method name, config) -> scores`` of another registered method on the same
            model, units and calibration (e.g. to warm-start learned scores); ``None`` outside
            :func:`pruneframe.prune`.
    """

    model: nn.Module
    units: UnitSet
    calibration: CalibrationData | None
    budget: int
    minimum: torch.Tensor
    project: Callable[[torch.Tensor], torch.Tensor]
    progress: bool = True
    stats: dict[str, Any] = field(default_factory=dict)
    score_with: Callable[[str, dict[str, Any] | None], torch.Tensor] | None = None

    def layers(self) -> "list[LayerSlices]":
        """Per decoder layer, where each unit's weights are (:class:`~pruneframe.architectures.LayerSlices`)."""
        return self.units.layer_slices(self.model)

    def require_calibration(self, method: str) -> CalibrationData:
        """The calibration data, or a clear error naming the method that needs it."""
        if self.calibration is None:
            raise ValueError(f"method {method!r} needs calibration data; pass calibration=... (a text source or token ids)")
        return self.calibration


class PruningMethod(ABC):
    """Base class of every method. Subclasses set ``name``, ``Config`` and implement :meth:`score`."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    summary: ClassVar[str] = ""

    def __init__(self, config: MethodConfig | dict[str, Any] | None = None) -> None:
        if isinstance(config, MethodConfig):
            config = config.model_dump()
        self.config = self.Config.model_validate(config or {})

    @abstractmethod
    def score(self, context: ScoringContext) -> torch.Tensor:
        """One float score per unit (higher = keep)."""

    def recalibrate(self, context: ScoringContext, mask: torch.Tensor) -> Recalibration | None:
        """Scales or bias corrections for the fixed ``mask``; ``None`` when the method has none."""
        return None

    def score_hidden(self, context: ScoringContext) -> torch.Tensor:
        """One float score per hidden channel (higher = keep), for a config with ``hidden_keep`` set.

        Only methods whose config mixes in :class:`HiddenOptions` are asked; the default refuses.
        """
        raise NotImplementedError(f"method {self.name!r} has no hidden-channel scores")

    #: Whether :meth:`hidden_rotation` gives a basis: the session then unties a tied lm_head (its cost is
    #: counted in the budget) and refuses a family whose post-norms a rotation can only approximate.
    rotates_hidden: ClassVar[bool] = False

    #: Whether :meth:`hidden_rotation` gives a basis per point of the stream
    #: (:class:`~pruneframe.architectures.rotation.StreamBases`): the model then carries a residual
    #: shortcut matrix per block, which the budget counts.
    residual_shortcuts: ClassVar[bool] = False

    def hidden_rotation(self, context: ScoringContext) -> torch.Tensor | StreamBases | None:
        """An orthonormal basis ``[d, d]`` of the residual stream to cut in, or None (the default: its own axes).

        Asked after :meth:`score_hidden`, whose scores then index the basis' columns. The session fuses
        the norms and rotates the folded model into it (:mod:`pruneframe.architectures.rotation`) before
        the hidden channels are cut. A method with :attr:`residual_shortcuts` gives one basis per point
        of the stream instead, the leading axes of each kept.
        """
        return None

    def minimum(self, units: UnitSet) -> torch.Tensor:
        """Units each projection group must keep (default: one FFN channel and one KV group per layer)."""
        return units.default_minimum()

    def removable(self, units: UnitSet) -> torch.Tensor:
        """Per projection group, whether its block may be removed when ``config.removal`` allows it (default: all)."""
        return torch.ones(units.num_groups, dtype=torch.bool)

    def removable_blocks(self, units: UnitSet) -> torch.Tensor | None:
        """:meth:`removable` when ``config.removal`` lets blocks go, else None (what the projector and checks take)."""
        return None if self.config.removal == "none" else self.removable(units)

    def code_parts(self) -> tuple[object, ...]:
        """The objects whose code a prune with this method runs, in order (a composite method's parts; itself by default)."""
        return (self,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"
