"""Rotating the residual stream: fuse the norms' scales into the projections, then change its basis.

An RMSNorm with a uniform scale commutes with an orthogonal change of basis of its input: the root
mean square over all ``d`` channels is the same in any orthonormal basis. So once every norm's scale
is moved into the projections that read it (:func:`fuse_input_norms`), the whole model can be
re-expressed in a basis ``Q`` of the stream, the stream ``x`` becoming ``Q^T x`` (:func:`rotate_hidden`):

- the token embedding and the lm_head (its columns are read from the stream): ``E Q``;
- every projection that reads the stream (q/k/v/gate/up): ``W Q``;
- every projection that writes it (o/down) and its bias: ``Q^T W``, ``Q^T b``.

Without slicing, the rotated model computes the same function (up to rounding) once every norm on the
stream is fused. The final norm is fused into the lm_head; where the head is tied to the embedding it
is untied first (:func:`fuse_input_norms` with ``untie``), because the embedding also feeds the
first layer, which must not see the final norm's scale. Untying costs a vocabulary-sized matrix, which a
budget must count (:meth:`~pruneframe.pipeline.hidden_budget.HiddenCostModel.with_untied_head`).
Post-norms (Gemma's sandwich layers normalise each block's output before it joins the stream) cannot
be fused at all: their diagonal scale ``s`` has no exact image in the new basis, where it becomes the
full matrix ``Q^T diag(s) Q`` (:func:`unfusable_norms` names them). :func:`rotate_hidden` gives such a
norm the diagonal of that matrix, ``s'_j = sum_i Q_ij^2 s_i``, the closest diagonal in the Frobenius
norm, and returns the share of the matrix that diagonal misses, so the approximation is reported, not
hidden. On SmolLM2-135M, keeping a tied head and approximating its final norm that way (a 14% miss)
raises the calibration loss from 3.02 to 12.6 nats before anything is cut, which is why the head is
untied instead, and why a family with post-norms is refused. Slicing the rotated stream is then
:func:`~pruneframe.architectures.hidden.fold_hidden` on its leading coordinates.

**One basis per point of the stream** (SliceGPT's own form, :class:`StreamBases`): the stream is read and
written at ``2L + 1`` points, layer ``l``'s attention input (point ``2l``), its MLP input (``2l + 1``) and
the final norm's input (``2L``). With its own basis ``Q_p`` at each point, a projection that reads point
``p`` becomes ``W Q_p``, one that writes point ``p + 1`` becomes ``Q_{p+1}^T W``, the embedding ``E Q_0``,
the head ``H Q_{2L}``, and each block's residual connection carries ``x Q_p^T Q_{p+1}`` from one basis to
the next: a ``[d, d]`` matrix per block, :class:`~pruneframe.checkpoint.modeling_pruneframe.ResidualShortcut`
(:func:`rotate_stream`). Sliced to the leading ``d'`` axes, each becomes ``d' x d'``: ``2 L d'^2``
parameters the budget counts (:meth:`~pruneframe.pipeline.hidden_budget.HiddenCostModel.with_shortcuts`)
and no family's architecture holds, so such a model saves with its modeling code and llama.cpp refuses
it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from pruneframe.architectures.hidden import head_is_tied, hidden_sites
from pruneframe.pipeline.units import UnitKind

if TYPE_CHECKING:
    from pruneframe.architectures.base import ArchitectureAdapter

__all__ = [
    "StreamBases",
    "fuse_input_norms",
    "unfusable_norms",
    "untie_head",
    "rotate_hidden",
    "rotate_stream",
    "slice_shortcuts",
    "diagonal_miss",
    "principal_basis",
]

#: Rows (or columns) rotated at a time: bounds the float64 temporaries on a large vocabulary.
_CHUNK = 8192


def _applied_scale(adapter: ArchitectureAdapter, norm: nn.Module) -> torch.Tensor:
    return norm.weight.detach().double() + float(adapter.norm_weight_offset(norm))


def _set_unit_scale(adapter: ArchitectureAdapter, norm: nn.Module) -> None:
    norm.weight.fill_(1.0 - float(adapter.norm_weight_offset(norm)))


@torch.no_grad()
def untie_head(model: nn.Module) -> bool:
    """Give a tied lm_head its own copy of the embedding (``tie_word_embeddings`` off); False when it was not tied."""
    if not head_is_tied(model):
        return False
    head = model.get_output_embeddings()
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    model.config.tie_word_embeddings = False
    text = getattr(model.config, "get_text_config", None)
    if callable(text) and text() is not model.config:
        text().tie_word_embeddings = False
    return True


def unfusable_norms(adapter: ArchitectureAdapter, model: nn.Module) -> list[str]:
    """The norms on the stream that no projection reads directly (post-norms), by module name: a rotation can only approximate them."""
    from pruneframe.architectures.hidden import norm_names

    fusable = {id(adapter.final_norm(model))}
    for layer in adapter.layer_slices(model):
        fusable |= {id(n) for kind in (UnitKind.KV, UnitKind.FFN) if (n := adapter.input_norm(layer, kind)) is not None}
    return [name for name, norm in norm_names(adapter, model).items() if id(norm) not in fusable]


@torch.no_grad()
def fuse_input_norms(adapter: ArchitectureAdapter, model: nn.Module, *, untie: bool = False) -> list[nn.Module]:
    """Move every pre-norm's scale into the input columns of the projections that read it.

    Each block's :meth:`~pruneframe.architectures.base.ArchitectureAdapter.input_norm` and the final
    norm end with a scale of one; the model computes the same function. A final norm before a tied
    lm_head is fused only with ``untie`` (the head is untied first, :func:`untie_head`), else left as it
    is. Returns the norms fused.
    """
    if untie:
        untie_head(model)
    fused: list[nn.Module] = []
    for layer in adapter.layer_slices(model):
        for kind in (UnitKind.KV, UnitKind.FFN):
            norm = adapter.input_norm(layer, kind)
            readers = list({id(s.linear): s.linear for s in layer.of(kind) if s.axis == 0}.values())
            if norm is None or getattr(norm, "weight", None) is None or not readers:
                continue
            scale = _applied_scale(adapter, norm)
            for linear in readers:
                linear.weight.copy_((linear.weight.double() * scale.to(linear.weight.device)[None, :]).to(linear.weight.dtype))
            _set_unit_scale(adapter, norm)
            fused.append(norm)
    head = model.get_output_embeddings()
    final = adapter.final_norm(model)
    if head is not None and not head_is_tied(model) and getattr(final, "weight", None) is not None:
        scale = _applied_scale(adapter, final)
        head.weight.copy_((head.weight.double() * scale.to(head.weight.device)[None, :]).to(head.weight.dtype))
        _set_unit_scale(adapter, final)
        fused.append(final)
    return fused


def diagonal_miss(scale: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The diagonal of ``Q^T diag(scale) Q`` and the share of its Frobenius norm off that diagonal (pure)."""
    s, qd = scale.double(), q.double()
    diagonal = qd.square().T @ s
    total = float(s.square().sum())  # ||Q^T diag(s) Q||_F^2 = ||s||^2 for an orthogonal Q
    missed = max(0.0, total - float(diagonal.square().sum()))
    return diagonal, (missed / total) ** 0.5 if total > 0 else 0.0


@torch.no_grad()
def _right_multiply(t: torch.Tensor, q: torch.Tensor) -> None:
    """``t <- t @ q`` in place, ``_CHUNK`` rows at a time, in float64."""
    for start in range(0, t.shape[0], _CHUNK):
        rows = t[start : start + _CHUNK]
        rows.copy_((rows.double() @ q).to(t.dtype))


@torch.no_grad()
def _left_multiply_transposed(t: torch.Tensor, q: torch.Tensor) -> None:
    """``t <- q^T @ t`` in place (``t`` 1-D or 2-D with the stream on axis 0), ``_CHUNK`` columns at a time."""
    if t.dim() == 1:
        t.copy_((q.T @ t.double()).to(t.dtype))
        return
    for start in range(0, t.shape[1], _CHUNK):
        cols = t[:, start : start + _CHUNK]
        cols.copy_((q.T @ cols.double()).to(t.dtype))


def _checked(q: torch.Tensor, d: int, what: str) -> torch.Tensor:
    if q.shape != (d, d):
        raise ValueError(f"{what}: a rotation of a {d}-wide stream must be [{d}, {d}], got {list(q.shape)}")
    qd = q.detach().double().cpu()
    if not torch.allclose(qd.T @ qd, torch.eye(d, dtype=torch.float64), atol=1e-6):
        raise ValueError(f"{what}: the rotation is not orthogonal (Q^T Q differs from the identity by more than 1e-6)")
    return qd


@torch.no_grad()
def rotate_hidden(adapter: ArchitectureAdapter, model: nn.Module, q: torch.Tensor) -> dict[str, float]:
    """Re-express ``model`` in the orthonormal basis ``q`` (``[d, d]``, columns the new axes) of its stream.

    Call :func:`fuse_input_norms` first: a norm whose applied scale is not uniform keeps only the
    diagonal of its rotated scale. Returns, per such norm (by module name), the share of the rotated
    scale that diagonal misses (:func:`diagonal_miss`); empty when the rotation is exact.

    Raises:
        ValueError: ``q`` is not ``[d, d]`` or not orthogonal (to 1e-6).
    """
    qd = _checked(q, int(model.config.hidden_size), "rotate_hidden")
    names = {id(module): name for name, module in model.named_modules()}
    missed: dict[str, float] = {}
    for site in hidden_sites(adapter, model):
        t = site.tensor.data
        qt = qd.to(t.device)
        if site.role in ("embedding", "head", "input"):
            _right_multiply(t, qt)
        elif site.role in ("output", "output_bias"):
            _left_multiply_transposed(t, qt)
        else:  # a norm
            scale = t.double() + site.norm_offset
            if float(scale.max() - scale.min()) <= 1e-12 * float(scale.abs().max()):
                continue  # uniform: commutes with the rotation
            diagonal, miss = diagonal_miss(scale.cpu(), qd)
            t.copy_((diagonal.to(t.device) - site.norm_offset).to(t.dtype))
            missed[names[id(site.owner)]] = miss
    return missed


def principal_basis(covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and the orthonormal eigenvectors (columns, same order) of a covariance (pure)."""
    sym = (covariance.double() + covariance.double().T) / 2
    values, vectors = torch.linalg.eigh(sym)
    return values.flip(0), vectors.flip(1)


@dataclass(frozen=True)
class StreamBases:
    """An orthonormal basis ``[d, d]`` (columns the axes, most important first) at every point of the stream.

    Attributes:
        bases: ``2L + 1`` bases: layer ``l``'s attention input at ``2l``, its MLP input at ``2l + 1``,
            the final norm's input at ``2L``.
    """

    bases: tuple[torch.Tensor, ...]

    @property
    def num_layers(self) -> int:
        """``L``, the decoder layers the bases cover."""
        return (len(self.bases) - 1) // 2


@torch.no_grad()
def rotate_stream(adapter: ArchitectureAdapter, model: nn.Module, bases: StreamBases) -> None:
    """Re-express ``model`` with its own basis at every point of the stream, residual shortcuts included (see the module docstring).

    Call :func:`fuse_input_norms` (with ``untie``) first: every norm on the stream must then apply a
    uniform scale. The model computes the same function (up to rounding); each decoder layer gains
    ``attn_shortcut`` and ``mlp_shortcut`` (``Q_p^T Q_{p+1}``) and ``config.residual_shortcuts`` is set.

    Raises:
        ValueError: a basis is malformed, the bases do not match the layers, the head is still tied, or a
            norm on the stream still applies a non-uniform scale.
    """
    from pruneframe.checkpoint.modeling_pruneframe import SHORTCUT_FIELD, attach_residual_shortcuts  # lazy: the shipped modeling code

    d = int(model.config.hidden_size)
    layers = adapter.layer_slices(model)
    if bases.num_layers != len(layers) or len(bases.bases) != 2 * len(layers) + 1:
        raise ValueError(f"{len(bases.bases)} stream bases for {len(layers)} layers (expected {2 * len(layers) + 1})")
    if head_is_tied(model):
        raise ValueError("a tied lm_head reads the embedding's basis, not the last one; untie it first (fuse_input_norms(untie=True))")
    qs = [_checked(q, d, f"stream point {p}") for p, q in enumerate(bases.bases)]
    for site in hidden_sites(adapter, model):
        if site.role == "norm":
            scale = site.tensor.double() + site.norm_offset
            if float(scale.max() - scale.min()) > 1e-12 * float(scale.abs().max()):
                raise ValueError(f"a norm on the stream ({type(site.owner).__name__}) still applies a per-channel scale; fuse it first")

    def right(t: torch.Tensor, p: int) -> None:
        _right_multiply(t.data, qs[p].to(t.device))

    def left(t: torch.Tensor | None, p: int) -> None:
        if t is not None:
            _left_multiply_transposed(t.data, qs[p].to(t.device))

    right(model.get_input_embeddings().weight, 0)
    right(model.get_output_embeddings().weight, 2 * len(layers))
    done: set[int] = set()
    for index, layer in enumerate(layers):
        for s in layer.slices:
            if id(s.linear) in done:
                continue
            done.add(id(s.linear))
            point = 2 * index + (s.kind == UnitKind.FFN)
            if s.axis == 0:  # reads the stream at the block's input
                right(s.linear.weight, point)
            else:  # writes it at the next point
                left(s.linear.weight, point + 1)
                left(s.linear.bias, point + 1)
    attach_residual_shortcuts([(layer.layer, layer.o_proj, layer.down_proj) for layer in layers], d)
    for index, layer in enumerate(layers):
        for shortcut, p in ((layer.layer.attn_shortcut, 2 * index), (layer.layer.mlp_shortcut, 2 * index + 1)):
            shortcut.weight.copy_((qs[p].T @ qs[p + 1]).to(shortcut.weight.device, shortcut.weight.dtype))
    setattr(model.config, SHORTCUT_FIELD, True)


@torch.no_grad()
def slice_shortcuts(model: nn.Module, width: int) -> int:
    """Cut every residual shortcut of ``model`` to its leading ``width x width`` block; returns how many there were."""
    from pruneframe.checkpoint.modeling_pruneframe import ResidualShortcut  # lazy: the shipped modeling code

    count = 0
    for module in model.modules():
        if isinstance(module, ResidualShortcut):
            module.weight = nn.Parameter(module.weight.data[:width, :width].clone(), requires_grad=module.weight.requires_grad)
            count += 1
    return count
