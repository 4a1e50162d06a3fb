"""Folding: turn a mask (and scales / bias corrections) into a smaller dense model.

The result has no hooks and no extra parameters. Every linear layer that holds unit slices (see
:class:`~pruneframe.architectures.WeightSlice`; fused ones included) keeps the rows and columns of
its kept units; a unit's scale multiplies its gated slices (an FFN channel's down_proj column, a
KV group's k and v rows and their bias entries); output scales multiply down_proj / o_proj rows
(and their own biases); bias corrections become down_proj / o_proj biases; replacement down_proj / o_proj
weights (a refit of the kept columns) are sliced like the originals. The family's adapter then
updates the attributes its forward reads (head counts, widths). Its logits equal those of the dense
model run under :func:`pruneframe.toolkit.gates.gated` with the same arguments.

A layer whose mask keeps no KV group loses its attention block, one that keeps no FFN channel its MLP
block (the adapter's :meth:`~pruneframe.architectures.ArchitectureAdapter.remove_blocks`: the block's
norms go with it, its output bias, if any, stays); a layer that loses both is dropped from the model
(:meth:`~pruneframe.architectures.ArchitectureAdapter.drop_layers`), so depth pruning runs fewer layers.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from pruneframe.architectures.base import LayerSlices, WeightSlice
from pruneframe.pipeline.methods import Recalibration
from pruneframe.pipeline.units import LayerWidths, UnitKind, UnitSet

__all__ = ["fold", "fold_layer"]


def _gather(size: int, pieces: list[tuple[int, int, torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Kept indices along one axis of length ``size`` and their scales (None: all ones).

    ``pieces`` are ``(start, stop, kept indices, scale per kept index or None)`` of the slices on this
    axis; indices outside every slice are kept unscaled.
    """
    idx: list[torch.Tensor] = []
    scale: list[torch.Tensor] = []
    any_scale = False
    pos = 0
    for start, stop, kept, s in sorted(pieces, key=lambda p: p[0]):
        if start > pos:
            idx.append(torch.arange(pos, start))
            scale.append(torch.ones(start - pos))
        idx.append(kept)
        scale.append(torch.ones(kept.numel()) if s is None else s)
        any_scale = any_scale or s is not None
        pos = stop
    if pos < size:
        idx.append(torch.arange(pos, size))
        scale.append(torch.ones(size - pos))
    return torch.cat(idx), (torch.cat(scale) if any_scale else None)


def _shrink(
    linear: nn.Linear,
    rows: tuple[torch.Tensor, torch.Tensor | None] | None,
    cols: tuple[torch.Tensor, torch.Tensor | None] | None,
    *,
    weight: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
    extra_bias: torch.Tensor | None = None,
) -> nn.Linear:
    """A new linear layer with the kept rows/columns of ``linear`` (or of ``weight``) and the factors applied."""
    w = linear.weight.detach() if weight is None else weight.detach().to(linear.weight)
    b = None if linear.bias is None else linear.bias.detach()
    if rows is not None:
        index, scale = rows
        index = index.to(w.device)
        w = w[index]
        b = None if b is None else b[index]
        if scale is not None:
            w = w * scale.to(device=w.device, dtype=w.dtype)[:, None]
            b = None if b is None else b * scale.to(device=b.device, dtype=b.dtype)
    if cols is not None:
        index, scale = cols
        w = w[:, index.to(w.device)]
        if scale is not None:
            w = w * scale.to(device=w.device, dtype=w.dtype)[None, :]
    if b is not None and rows is None:
        b = b.clone()
    if out_scale is not None:
        row = out_scale.to(device=w.device, dtype=w.dtype)
        w = w * row[:, None]
        b = None if b is None else b * row
    if extra_bias is not None:
        extra = extra_bias.to(device=w.device, dtype=w.dtype)
        b = extra if b is None else b + extra
    with warnings.catch_warnings():  # a removed block's projections have no elements to initialise
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        out = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
    out.weight.requires_grad_(linear.weight.requires_grad)
    return out


def fold_layer(
    layer: LayerSlices,
    keep: dict[UnitKind, torch.Tensor],
    scales: dict[UnitKind, torch.Tensor | None],
    *,
    down_proj: torch.Tensor | None = None,
    o_proj: torch.Tensor | None = None,
    mlp_out_scale: torch.Tensor | None = None,
    attn_out_scale: torch.Tensor | None = None,
    mlp_bias: torch.Tensor | None = None,
    attn_bias: torch.Tensor | None = None,
) -> None:
    """Shrink one decoder layer in place: every sliced linear keeps the rows/columns of ``keep``.

    Args:
        layer: the layer's slices (from the adapter).
        keep: per unit kind, the kept unit indices (sorted).
        scales: per unit kind, one factor per kept unit folded into the gated slices (None: none).
        down_proj: a replacement down_proj weight (full width) sliced like the original.
        o_proj: a replacement o_proj weight (full width), likewise.
        mlp_out_scale / attn_out_scale: per-output factors of down_proj / o_proj.
        mlp_bias / attn_bias: vectors added to down_proj / o_proj outputs.
    """
    by_linear: dict[tuple[int, str], tuple[WeightSlice, list[WeightSlice]]] = {}
    for s in layer.slices:
        key = (id(s.owner), s.attr)
        by_linear.setdefault(key, (s, []))[1].append(s)
    down_key = (id(layer.slice("down_proj").owner), layer.slice("down_proj").attr)
    o_key = (id(layer.slice("o_proj").owner), layer.slice("o_proj").attr)
    for key, (first, slices) in by_linear.items():
        linear = first.linear
        pieces: dict[int, list[tuple[int, int, torch.Tensor, torch.Tensor | None]]] = {0: [], 1: []}
        for s in slices:
            kept = keep[s.kind]
            scale = scales.get(s.kind) if s.gated else None
            pieces[s.axis].append((s.start, s.stop, s.indices(kept), None if scale is None else scale.repeat_interleave(s.per_unit)))
        rows = _gather(linear.out_features, pieces[0]) if pieces[0] else None
        cols = _gather(linear.in_features, pieces[1]) if pieces[1] else None
        extra: dict[str, torch.Tensor | None] = {}
        if key == down_key:
            extra = dict(weight=down_proj, out_scale=mlp_out_scale, extra_bias=mlp_bias)
        elif key == o_key:
            extra = dict(weight=o_proj, out_scale=attn_out_scale, extra_bias=attn_bias)
        setattr(first.owner, first.attr, _shrink(linear, rows, cols, **extra))


def fold(
    model: nn.Module,
    units: UnitSet,
    mask: torch.Tensor,
    recalibration: Recalibration | None = None,
    *,
    inplace: bool = False,
) -> nn.Module:
    """Return the smaller dense model that ``mask`` and ``recalibration`` describe.

    Args:
        model: a model whose units are ``units`` (from discovery on this very model).
        mask: bool keep-mask, one entry per unit.
        recalibration: optional scales and bias corrections.
        inplace: modify ``model`` instead of a deep copy (saves memory on large models). Layers are
            shrunk one at a time, so old and new weights of more than one layer never coexist.

    Raises:
        ValueError: on a mask of the wrong length.
    """
    mask = mask.bool().cpu()
    if mask.shape != (len(units),):
        raise ValueError(f"mask must have shape ({len(units)},), got {tuple(mask.shape)}")
    adapter = units.require_adapter()
    rec = recalibration or Recalibration()
    scales = None if rec.scales is None else rec.scales.detach().float().cpu()
    target = model if inplace else copy.deepcopy(model)
    layers: list[LayerSlices | None] = list(adapter.layer_slices(target))
    empty_layers: list[int] = []
    for i in range(len(layers)):
        # A LayerSlices holds its layer's input linears (mlp_in, attn_in, glu): drop each layer's entry
        # once folded, so the replaced weights of more than one layer are never alive together.
        layer, layers[i] = layers[i], None
        assert layer is not None
        keep = {kind: torch.nonzero(mask[units.slice(i, kind)]).flatten() for kind in (UnitKind.FFN, UnitKind.KV)}
        kept_scales = {kind: None if scales is None else scales[units.slice(i, kind)][keep[kind]] for kind in (UnitKind.FFN, UnitKind.KV)}

        def per_layer(value: torch.Tensor | list | None) -> torch.Tensor | None:
            return None if value is None else value[i].detach()

        fold_layer(
            layer,
            keep,
            kept_scales,
            down_proj=None if rec.down_proj is None else rec.down_proj[i],
            o_proj=None if rec.o_proj is None else rec.o_proj[i],
            mlp_out_scale=per_layer(rec.mlp_out_scale),
            attn_out_scale=per_layer(rec.attn_out_scale),
            mlp_bias=per_layer(rec.mlp_bias),
            attn_bias=per_layer(rec.attn_bias),
        )
        down, o = layer.down_proj, layer.o_proj
        n_kv = int(keep[UnitKind.KV].numel())
        widths = LayerWidths(
            index=i,
            ffn=int(keep[UnitKind.FFN].numel()),
            q_heads=n_kv * layer.queries_per_group,
            kv_heads=n_kv,
            head_dim=layer.head_dim,
            hidden=int(o.out_features),
            down_proj_bias=down.bias is not None,
            o_proj_bias=o.bias is not None,
        )
        adapter.set_widths(layer, widths, target.config)
        no_attention, no_mlp = n_kv == 0, widths.ffn == 0
        if no_attention or no_mlp:
            _bias_through_post_norms(layer, no_attention, no_mlp)
            adapter.remove_blocks(layer, attention=no_attention, mlp=no_mlp)
            if no_attention and no_mlp and o.bias is None and down.bias is None:
                empty_layers.append(i)
    if empty_layers:
        adapter.drop_layers(target, empty_layers)
    return target


def _bias_through_post_norms(layer: LayerSlices, attention: bool, mlp: bool) -> None:
    """A removed block's output is its constant output bias; a post-norm (sandwich layout) that goes
    with the block is applied to that constant here, so the bias alone carries the block's output."""
    from pruneframe.checkpoint.modeling_pruneframe import block_norm_names  # lazy: checkpoint imports the pipeline

    if not hasattr(layer.layer, "pre_feedforward_layernorm"):
        return  # pre-norm layouts: nothing follows a block's output projection
    attn_norms, mlp_norms = block_norm_names(layer.layer)
    for removed, norms, linear in ((attention, attn_norms, layer.o_proj), (mlp, mlp_norms, layer.down_proj)):
        post = [n for n in norms if n.startswith("post_")]
        if removed and linear.bias is not None and post:
            with torch.no_grad():
                bias = linear.bias.detach()
                for name in post:
                    bias = getattr(layer.layer, name)(bias[None, None, :])[0, 0]
                linear.bias.copy_(bias)
