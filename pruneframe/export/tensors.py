"""The model's weights as GGUF tensors, in llama.cpp's names and layout.

The projections are reached through the model's adapter (its weight slices), the norms by the names
the family's :class:`~pruneframe.architectures.gguf.GGUFLayout` lists. A layout whose llama.cpp graph
rotates adjacent pairs of each query/key head (``paired_rope``), where transformers rotates the two
halves of each head, gets the q and k rows (and biases) of every head reordered, per layer, with that
layer's own head count; other layouts keep the rows. A layout's ``norm_offset`` is added to every norm
weight. Zero padding planned by :func:`~pruneframe.export.plan.plan_export` is appended here.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from pruneframe.architectures import LayerSlices
from pruneframe.architectures.gguf import GGUFLayout, GGUFNorm
from pruneframe.export.plan import GGUFPlan, LayerPlan

__all__ = ["gguf_tensors", "rope_pairs"]


def rope_pairs(rows: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Reorder each head's rows from halves (HF: ``i`` pairs with ``i + d/2``) to adjacent pairs (``2i``, ``2i+1``)."""
    heads = rows.shape[0] // head_dim
    tail = rows.shape[1:]
    return rows.reshape(heads, 2, head_dim // 2, *tail).transpose(1, 2).reshape(rows.shape)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()


def _pad_rows(t: torch.Tensor, extra: int) -> torch.Tensor:
    return torch.cat([t, t.new_zeros(extra, *t.shape[1:])]) if extra else t


def _pad_cols(t: torch.Tensor, extra: int) -> torch.Tensor:
    return torch.cat([t, t.new_zeros(t.shape[0], extra)], dim=1) if extra else t


def _attention(ls: LayerSlices, lp: LayerPlan, plan: GGUFPlan, prefix: str) -> Iterator[tuple[str, np.ndarray]]:
    layout = plan.layout
    hd, g = plan.head_dim, plan.queries_per_group
    pad_q, pad_kv = lp.kv_pad * g * hd, lp.kv_pad * hd
    for name, proj, extra in (("attn_q", "q_proj", pad_q), ("attn_k", "k_proj", pad_kv), ("attn_v", "v_proj", pad_kv)):
        rows = ls.slice(proj)
        w = _pad_rows(rows.weight.detach().float(), extra)
        b = None if rows.bias is None else _pad_rows(rows.bias.detach().float(), extra)
        if layout.paired_rope and name != "attn_v":
            w = rope_pairs(w, hd)
            b = None if b is None else rope_pairs(b, hd)
        yield f"{prefix}.{name}.weight", _np(w)
        if b is not None:
            yield f"{prefix}.{name}.bias", _np(b)
    o = ls.slice("o_proj")
    yield f"{prefix}.attn_output.weight", _np(_pad_cols(o.weight.detach().float(), pad_q))
    if o.linear.bias is not None:
        yield f"{prefix}.attn_output.bias", _np(o.linear.bias)
    yield from _norms(ls.attention, layout.head_norms, layout, prefix, hd)


def _mlp(ls: LayerSlices, lp: LayerPlan, prefix: str) -> Iterator[tuple[str, np.ndarray]]:
    for name, proj in (("ffn_gate", "gate_proj"), ("ffn_up", "up_proj")):
        rows = ls.slice(proj)
        yield f"{prefix}.{name}.weight", _np(_pad_rows(rows.weight.detach().float(), lp.ffn_pad))
        if rows.bias is not None:
            yield f"{prefix}.{name}.bias", _np(_pad_rows(rows.bias.detach().float(), lp.ffn_pad))
    down = ls.slice("down_proj")
    yield f"{prefix}.ffn_down.weight", _np(_pad_cols(down.weight.detach().float(), lp.ffn_pad))
    if down.linear.bias is not None:
        yield f"{prefix}.ffn_down.bias", _np(down.linear.bias)


def _norm(norm: nn.Module, layout: GGUFLayout, size: int) -> np.ndarray:
    """A norm's weight as llama.cpp multiplies by it; ``size`` ones for a removed block's norm (an identity), which only zero padding reads."""
    weight = getattr(norm, "weight", None)
    if weight is None:
        return _np(torch.ones(size))
    return _np(weight.detach().float() + layout.norm_offset) if layout.norm_offset else _np(weight)


def _norms(owner: nn.Module, norms: tuple[GGUFNorm, ...], layout: GGUFLayout, prefix: str, size: int) -> Iterator[tuple[str, np.ndarray]]:
    for norm in norms:
        yield f"{prefix}.{norm.tensor}.weight", _norm(getattr(owner, norm.module), layout, size)


def gguf_tensors(model: nn.Module, plan: GGUFPlan) -> Iterator[tuple[str, np.ndarray]]:
    """``(GGUF tensor name, float32 array in PyTorch's [out, in] order)`` for every tensor the file holds."""
    layout, adapter = plan.layout, plan.adapter
    if adapter is None:
        raise ValueError("this GGUFPlan carries no adapter; make plans with plan_export")
    yield "token_embd.weight", _np(model.get_input_embeddings().weight)
    hidden = model.config.hidden_size
    for lp, ls in zip(plan.layers, adapter.layer_slices(model), strict=True):
        prefix = f"blk.{lp.index}"
        if lp.kv_heads > 0:
            yield from _norms(ls.layer, layout.attention_norms, layout, prefix, hidden)
            yield from _attention(ls, lp, plan, prefix)
            yield from _norms(ls.layer, layout.attention_post_norms, layout, prefix, hidden)
        if lp.ffn > 0:
            yield from _norms(ls.layer, layout.ffn_norms, layout, prefix, hidden)
            yield from _mlp(ls, lp, prefix)
            yield from _norms(ls.layer, layout.ffn_post_norms, layout, prefix, hidden)
    yield "output_norm.weight", _norm(adapter.final_norm(model), layout, hidden)
    if not getattr(model.config, "tie_word_embeddings", False):
        yield "output.weight", _np(model.get_output_embeddings().weight)
