"""Where a model's hidden channels live, what they cost, and how a hidden mask is folded into the weights.

A hidden channel is one coordinate of the residual stream in every tensor that reads or writes it:
the token embedding's column, every norm's weight entry, the input column of every projection that
reads the stream (q/k/v/gate/up, fused or not), the output row (and bias entry) of every projection
that writes it (o/down), and the lm_head column (tied or not). :func:`hidden_sites` lists them from an
adapter's :class:`~pruneframe.architectures.base.LayerSlices`, so every family whose slices are right
gets its hidden sites for free; :func:`hidden_cost_model` turns them into the affine parameter count
of :mod:`pruneframe.pipeline.hidden_budget`; :func:`fold_hidden` slices every site to the kept channels
and sets ``config.hidden_size``, so a uniform result is the family's own architecture.

RMSNorm divides by the root mean square over the channels it sees. With ``d'`` of ``d`` channels kept
and a share ``f`` of its input's energy on them, the mean square becomes ``f * d / d'`` times the dense
one on the kept channels; :func:`fold_hidden` multiplies each norm's scale by the factor it is given
(:func:`norm_correction` computes ``sqrt(f * d / d')`` from measured energies), so the correction is
explicit, never implicit. A norm stored as an offset from one (Gemma's ``1 + w``) is corrected on the
scale it applies, not on the stored number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from pruneframe.pipeline.hidden_budget import HiddenCostModel
from pruneframe.pipeline.units import UnitKind

if TYPE_CHECKING:
    from pruneframe.architectures.base import ArchitectureAdapter

__all__ = ["HiddenRole", "HiddenSite", "head_is_tied", "hidden_sites", "hidden_refusal", "hidden_cost_model", "norm_correction", "norm_names", "fold_hidden"]

HiddenRole = Literal["embedding", "head", "norm", "input", "output", "output_bias"]
#: Roles whose entries no per-layer unit owns: every kept hidden channel carries them.
SHARED_ROLES: tuple[HiddenRole, ...] = ("embedding", "head", "norm", "output_bias")


@dataclass(frozen=True)
class HiddenSite:
    """One tensor that spans the hidden dimension, and along which axis.

    Attributes:
        owner: the module holding the tensor (looked up again at fold time).
        attr: the parameter's name on ``owner`` (``weight`` or ``bias``).
        dim: the axis that indexes hidden channels.
        role: what the tensor is (:data:`HiddenRole`).
        norm_offset: for a norm, the constant its forward adds to the stored weight (Gemma: 1.0).
    """

    owner: nn.Module
    attr: str
    dim: int
    role: HiddenRole
    norm_offset: float = 0.0

    @property
    def tensor(self) -> torch.Tensor:
        """The parameter as the module holds it now."""
        return getattr(self.owner, self.attr)

    @property
    def per_channel(self) -> int:
        """Entries one hidden channel owns in this tensor."""
        t = self.tensor
        return t.numel() // t.shape[self.dim]


def head_is_tied(model: nn.Module) -> bool:
    """Whether ``model``'s lm_head is the token embedding's own tensor."""
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def hidden_sites(adapter: ArchitectureAdapter, model: nn.Module) -> list[HiddenSite]:
    """Every tensor of ``model`` that spans its hidden dimension, each once (tied weights once).

    Norms are the final norm and every block norm of width ``hidden_size`` (per-head q/k norms are
    not on the stream).
    """
    d = int(model.config.hidden_size)
    sites: list[HiddenSite] = []
    seen: set[tuple[int, str]] = set()

    def add(owner: nn.Module, attr: str, dim: int, role: HiddenRole, offset: float = 0.0) -> None:
        tensor = getattr(owner, attr, None)
        if tensor is None or (id(tensor), attr) in seen:
            return
        if tensor.shape[dim] != d:
            raise ValueError(f"{type(owner).__name__}.{attr} has {tensor.shape[dim]} entries along axis {dim}, not the hidden size {d}")
        seen.add((id(tensor), attr))
        sites.append(HiddenSite(owner, attr, dim, role, offset))

    add(model.get_input_embeddings(), "weight", 1, "embedding")
    head = model.get_output_embeddings()
    if head is not None:
        add(head, "weight", 1, "head")
    norms = [adapter.final_norm(model)]
    for layer in adapter.layer_slices(model):
        for kind in (UnitKind.KV, UnitKind.FFN):
            norms += adapter.block_norms(layer, kind)
        for s in layer.slices:
            if s.axis == 0:  # unit rows: the projection reads the stream along its input columns
                add(s.linear, "weight", 1, "input")
            else:  # unit columns: the projection writes the stream along its output rows
                add(s.linear, "weight", 0, "output")
                add(s.linear, "bias", 0, "output_bias")
    for norm in norms:
        weight = getattr(norm, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 1 and weight.numel() == d:
            add(norm, "weight", 0, "norm", float(adapter.norm_weight_offset(norm)))
    return sites


def hidden_refusal(adapter: ArchitectureAdapter, model: nn.Module) -> str | None:
    """Why ``model``'s hidden dimension cannot be cut exactly, or None.

    An adapter may give reasons of its own through a ``hidden_refusal(model)`` method. An embedding
    scaled by a constant other than ``sqrt(hidden_size)`` is refused: the family recomputes the scale
    from ``hidden_size`` on reload, and :func:`fold_hidden` compensates exactly that rule.
    """
    own = getattr(adapter, "hidden_refusal", None)
    if callable(own) and (why := own(model)):
        return str(why)
    scale = getattr(model.get_input_embeddings(), "embed_scale", None)
    if scale is None:
        return None
    # the scale the forward multiplies by, within its dtype's rounding (a bf16 buffer holds sqrt(640) as 25.25)
    value = float(scale)
    rounding = torch.finfo(scale.dtype).eps if isinstance(scale, torch.Tensor) and scale.is_floating_point() else 0.0
    if abs(value - float(model.config.hidden_size) ** 0.5) > max(1e-3, rounding) * value:
        return f"its embedding is scaled by {value:g}, not sqrt(hidden_size), so a smaller hidden size cannot be compensated"
    return None


def hidden_cost_model(adapter: ArchitectureAdapter, model: nn.Module) -> HiddenCostModel:
    """The affine parameter count of ``model`` in its hidden width, over the units ``adapter.discover`` lists.

    A unit's weights per hidden channel are what its slices own along the stream; its other entries
    (its own biases) do not depend on the width.
    """
    from pruneframe.architectures.base import count_parameters  # lazy: base is the adapters' module, this one sits beside it

    d = int(model.config.hidden_size)
    per_channel = sum(site.per_channel for site in hidden_sites(adapter, model) if site.role in SHARED_ROLES)
    a: list[torch.Tensor] = []
    b: list[torch.Tensor] = []
    for layer in adapter.layer_slices(model):
        for kind in (UnitKind.FFN, UnitKind.KV):
            slices = layer.of(kind)
            units = slices[0].units if slices else 0
            weights = sum(s.params_per_unit for s in slices)
            if weights % d:
                raise ValueError(f"layer {layer.index}: {kind.name} units own {weights} weights, not a multiple of the hidden size {d}")
            a.append(torch.full((units,), weights // d, dtype=torch.long))
            b.append(torch.full((units,), sum(s.cost_per_unit - s.params_per_unit for s in slices), dtype=torch.long))
    empty = torch.zeros(0, dtype=torch.long)
    return HiddenCostModel.from_counts(count_parameters(model), d, per_channel, torch.cat(a) if a else empty, torch.cat(b) if b else empty)


def norm_correction(energy: torch.Tensor, keep: torch.Tensor) -> float:
    """``sqrt(f * d / d')``: the factor that restores a norm's scale when only the ``keep`` channels remain.

    Args:
        energy: per hidden channel, the mean square of the norm's input on calibration text.
        keep: bool mask of the kept hidden channels.
    """
    total = float(energy.double().sum())
    kept = int(keep.sum())
    if total <= 0 or kept == 0:
        return 1.0
    share = float(energy.double()[keep.bool()].sum()) / total
    return (share * keep.numel() / kept) ** 0.5


def _rescale_embedding(adapter: ArchitectureAdapter, model: nn.Module, d: int, kept: int, tied: bool) -> None:
    """Keep ``embed * embed_scale`` where the family scales its embedding by ``sqrt(hidden_size)``.

    The reloaded family sets the scale to ``sqrt(kept)``; the weights take the factor ``c = sqrt(d / kept)``
    instead, and a tied lm_head, which would see it too, is compensated by dividing the final norm's
    applied scale by ``c``: its logits are unchanged.
    """
    embedding = model.get_input_embeddings()
    scale = getattr(embedding, "embed_scale", None)
    if scale is None:
        return
    c = (d / kept) ** 0.5
    new = float(kept) ** 0.5
    embedding.weight.mul_(c)
    if isinstance(scale, torch.Tensor):
        scale.fill_(new)
    if hasattr(embedding, "scalar_embed_scale"):
        embedding.scalar_embed_scale = new
    if tied:
        norm = adapter.final_norm(model)
        offset = float(adapter.norm_weight_offset(norm))
        norm.weight.copy_(((norm.weight.double() + offset) / c - offset).to(norm.weight.dtype))


def norm_names(adapter: ArchitectureAdapter, model: nn.Module) -> dict[str, nn.Module]:
    """The norms on the hidden dimension by their names in ``model.named_modules()``, in site order."""
    names = {id(module): name for name, module in model.named_modules()}
    return {names[id(site.owner)]: site.owner for site in hidden_sites(adapter, model) if site.role == "norm"}


@torch.no_grad()
def fold_hidden(adapter: ArchitectureAdapter, model: nn.Module, keep: torch.Tensor, norm_factors: dict[str, float] | None = None) -> None:
    """Cut ``model`` in place to the hidden channels ``keep`` marks; ``config.hidden_size`` follows.

    Args:
        adapter: the model's adapter.
        model: the model (its current per-layer widths are kept as they are).
        keep: bool mask over the hidden channels.
        norm_factors: per norm module (its name in ``model.named_modules()``), the factor its applied
            scale is multiplied by (:func:`norm_correction`); a norm not named keeps its scale.
    """
    keep = keep.bool().cpu()
    d = int(model.config.hidden_size)
    if keep.numel() != d or not bool(keep.any()):
        raise ValueError(f"a hidden mask needs {d} entries and at least one kept channel")
    if (why := hidden_refusal(adapter, model)) is not None:
        raise NotImplementedError(f"{type(adapter).__name__} cannot cut the hidden dimension of this model: {why}")
    head_dim = adapter.head_dim(model)
    sites = hidden_sites(adapter, model)
    tied = head_is_tied(model)
    index = keep.nonzero().flatten()
    names = {id(module): name for name, module in model.named_modules()}
    factors = norm_factors or {}
    unknown = set(factors) - {names[id(site.owner)] for site in sites if site.role == "norm"}
    if unknown:
        raise ValueError(f"norm factors name modules that are not norms on the hidden dimension: {sorted(unknown)}")
    for site in sites:
        old = site.tensor
        new = old.index_select(site.dim, index.to(old.device)).clone()
        if site.role == "norm" and names[id(site.owner)] in factors:
            factor = factors[names[id(site.owner)]]
            new = ((new.double() + site.norm_offset) * factor - site.norm_offset).to(old.dtype)
        setattr(site.owner, site.attr, nn.Parameter(new, requires_grad=old.requires_grad))
        if isinstance(site.owner, nn.Linear):
            site.owner.in_features, site.owner.out_features = site.owner.weight.shape[1], site.owner.weight.shape[0]
        elif isinstance(site.owner, nn.Embedding):
            site.owner.embedding_dim = site.owner.weight.shape[1]
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
        model.get_output_embeddings().in_features = int(keep.sum())
    _rescale_embedding(adapter, model, d, int(keep.sum()), tied)
    if getattr(model.config, "head_dim", None) is None:  # families that derive it from hidden_size would change it
        model.config.head_dim = head_dim
    model.config.hidden_size = int(keep.sum())
