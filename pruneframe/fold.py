"""Folding: turn a mask (and scales / bias corrections) into a smaller dense model.

The result has no hooks and no extra parameters: FFN channels are sliced out of gate/up rows and
down columns; KV groups are removed from q/k/v rows and o columns together; FFN scales multiply
down_proj columns; KV-group scales multiply the group's k_proj and v_proj rows (and their biases);
output scales multiply down_proj / o_proj rows (and their own biases); bias corrections become
down_proj / o_proj biases; replacement down_proj weights (a refit of the kept
columns) are sliced like the originals. Its logits equal those of the dense model run
under :func:`pruneframe.gates.gated` with the same arguments.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from pruneframe.architectures.llama import layer_modules
from pruneframe.methods import Recalibration
from pruneframe.units import UnitKind, UnitSet

__all__ = ["fold", "head_rows"]


def head_rows(groups: torch.Tensor, rows_per_group: int) -> torch.Tensor:
    """Row indices of whole blocks: for each kept group ``g``, ``g*rows .. (g+1)*rows - 1``."""
    return (groups[:, None] * rows_per_group + torch.arange(rows_per_group)[None, :]).reshape(-1)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    out.weight.requires_grad_(like.weight.requires_grad)
    return out


def _rows(linear: nn.Linear, rows: torch.Tensor, scale: torch.Tensor | None = None) -> nn.Linear:
    w = linear.weight.detach()[rows]
    b = None if linear.bias is None else linear.bias.detach()[rows]
    if scale is not None:
        w = w * scale[:, None].to(w.dtype)
        b = None if b is None else b * scale.to(b.dtype)
    return _linear(w, b, linear)


def _cols(
    linear: nn.Linear,
    cols: torch.Tensor,
    scale: torch.Tensor | None = None,
    extra_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None,
) -> nn.Linear:
    source = linear.weight.detach() if weight is None else weight.detach().to(linear.weight)
    w = source[:, cols]
    if scale is not None:
        w = w * scale[None, :].to(w.dtype)
    b = None if linear.bias is None else linear.bias.detach().clone()
    if row_scale is not None:
        row = row_scale.to(device=w.device, dtype=w.dtype)
        w = w * row[:, None]
        b = None if b is None else b * row
    if extra_bias is not None:
        extra = extra_bias.to(device=w.device, dtype=w.dtype)
        b = extra if b is None else b + extra
    return _linear(w, b, linear)


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
        inplace: modify ``model`` instead of a deep copy (saves memory on large models).

    Raises:
        ValueError: on a mask of the wrong length or a layer left without any KV group.
    """
    mask = mask.bool().cpu()
    if mask.shape != (len(units),):
        raise ValueError(f"mask must have shape ({len(units)},), got {tuple(mask.shape)}")
    rec = recalibration or Recalibration()
    scales = None if rec.scales is None else rec.scales.detach().float().cpu()
    target = model if inplace else copy.deepcopy(model)
    for i, mods in enumerate(layer_modules(target)):
        ffn_sl, kv_sl = units.slice(i, UnitKind.FFN), units.slice(i, UnitKind.KV)
        keep_ffn = torch.nonzero(mask[ffn_sl]).flatten()
        keep_kv = torch.nonzero(mask[kv_sl]).flatten()
        if keep_kv.numel() == 0:
            raise ValueError(f"layer {i} would keep no KV group; raise the per-layer minimum to at least 1")
        ffn_scale = None if scales is None else scales[ffn_sl][keep_ffn]
        kv_scale = None if scales is None else scales[kv_sl][keep_kv]
        mlp_bias = None if rec.mlp_bias is None else rec.mlp_bias[i].detach()
        attn_bias = None if rec.attn_bias is None else rec.attn_bias[i].detach()

        mlp = mods.mlp
        mlp.gate_proj = _rows(mods.gate_proj, keep_ffn)
        mlp.up_proj = _rows(mods.up_proj, keep_ffn)
        down = None if rec.down_proj is None else rec.down_proj[i]
        mlp_out = None if rec.mlp_out_scale is None else rec.mlp_out_scale[i].detach()
        attn_out = None if rec.attn_out_scale is None else rec.attn_out_scale[i].detach()
        mlp.down_proj = _cols(mods.down_proj, keep_ffn, ffn_scale, mlp_bias, weight=down, row_scale=mlp_out)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = int(keep_ffn.numel())

        hd, g = mods.head_dim, mods.queries_per_group
        q_rows = head_rows(keep_kv, g * hd)
        kv_rows = head_rows(keep_kv, hd)
        kv_row_scale = None if kv_scale is None else kv_scale.repeat_interleave(hd)
        attn = mods.attention
        attn.q_proj = _rows(mods.q_proj, q_rows)
        attn.k_proj = _rows(mods.k_proj, kv_rows, kv_row_scale)
        attn.v_proj = _rows(mods.v_proj, kv_rows, kv_row_scale)
        attn.o_proj = _cols(mods.o_proj, q_rows, extra_bias=attn_bias, row_scale=attn_out)
        for name, value in (("num_heads", g * keep_kv.numel()), ("num_key_value_heads", keep_kv.numel())):
            if hasattr(attn, name):
                setattr(attn, name, int(value))
    return target


def layer_widths(model: nn.Module) -> list[dict[str, int | bool]]:
    """Per layer of a (folded) model: FFN width, KV heads, query heads and output-bias flags."""
    out = []
    for mods in layer_modules(model):
        out.append(
            {
                "intermediate_size": mods.down_proj.in_features,
                "num_key_value_heads": mods.kv_groups,
                "num_attention_heads": mods.q_proj.out_features // mods.head_dim,
                "down_proj_bias": mods.down_proj.bias is not None,
                "o_proj_bias": mods.o_proj.bias is not None,
            }
        )
    return out
