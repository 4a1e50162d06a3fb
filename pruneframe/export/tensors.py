"""The model's weights as GGUF tensors, in llama.cpp's names and layout.

llama.cpp's ``llama`` and ``deci`` graphs rotate adjacent pairs of each query/key head (GPT-J style),
while the Hugging Face Llama code rotates the two halves of each head; the q and k rows (and biases)
of every head are therefore reordered, per layer, with that layer's own head count. ``qwen2``,
``qwen3`` and ``gemma3`` rotate halves like the Hugging Face code, so their rows are kept. Gemma's norms
scale by ``1 + weight``, llama.cpp's by the stored weight, so ``1 + weight`` is stored. Zero padding
planned by :func:`~pruneframe.export.plan.plan_export` is appended here.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from pruneframe.export.plan import GGUFPlan, LayerPlan

__all__ = ["gguf_tensors", "rope_pairs"]

_PAIRED_ROPE = ("llama", "deci")


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


def _attention(attn: nn.Module, lp: LayerPlan, plan: GGUFPlan, prefix: str) -> Iterator[tuple[str, np.ndarray]]:
    hd, g = plan.head_dim, plan.queries_per_group
    pad_q, pad_kv = lp.kv_pad * g * hd, lp.kv_pad * hd
    for name, proj, extra in (("attn_q", attn.q_proj, pad_q), ("attn_k", attn.k_proj, pad_kv), ("attn_v", attn.v_proj, pad_kv)):
        w = _pad_rows(proj.weight.detach().float(), extra)
        b = None if proj.bias is None else _pad_rows(proj.bias.detach().float(), extra)
        if plan.arch in _PAIRED_ROPE and name != "attn_v":
            w = rope_pairs(w, hd)
            b = None if b is None else rope_pairs(b, hd)
        yield f"{prefix}.{name}.weight", _np(w)
        if b is not None:
            yield f"{prefix}.{name}.bias", _np(b)
    yield f"{prefix}.attn_output.weight", _np(_pad_cols(attn.o_proj.weight.detach().float(), pad_q))
    if attn.o_proj.bias is not None:
        yield f"{prefix}.attn_output.bias", _np(attn.o_proj.bias)
    if plan.arch in ("qwen3", "gemma3"):
        yield f"{prefix}.attn_q_norm.weight", _norm(attn.q_norm, plan)
        yield f"{prefix}.attn_k_norm.weight", _norm(attn.k_norm, plan)


def _mlp(mlp: nn.Module, lp: LayerPlan, prefix: str) -> Iterator[tuple[str, np.ndarray]]:
    for name, proj in (("ffn_gate", mlp.gate_proj), ("ffn_up", mlp.up_proj)):
        yield f"{prefix}.{name}.weight", _np(_pad_rows(proj.weight.detach().float(), lp.ffn_pad))
        if proj.bias is not None:
            yield f"{prefix}.{name}.bias", _np(_pad_rows(proj.bias.detach().float(), lp.ffn_pad))
    yield f"{prefix}.ffn_down.weight", _np(_pad_cols(mlp.down_proj.weight.detach().float(), lp.ffn_pad))
    if mlp.down_proj.bias is not None:
        yield f"{prefix}.ffn_down.bias", _np(mlp.down_proj.bias)


def _norm(norm: nn.Module, plan: GGUFPlan, hidden: int | None = None) -> np.ndarray:
    """A norm's weight as llama.cpp multiplies by it; ones for a removed block's norm (an identity), which only zero padding reads."""
    weight = getattr(norm, "weight", None)
    if weight is None:
        return _np(torch.ones(hidden))
    return _np(weight.detach().float() + 1.0) if plan.arch == "gemma3" else _np(weight)


def gguf_tensors(model: nn.Module, plan: GGUFPlan) -> Iterator[tuple[str, np.ndarray]]:
    """``(GGUF tensor name, float32 array in PyTorch's [out, in] order)`` for every tensor the file holds."""
    decoder = model.model
    yield "token_embd.weight", _np(decoder.embed_tokens.weight)
    hidden = model.config.hidden_size
    gemma = plan.arch == "gemma3"
    for lp, layer in zip(plan.layers, decoder.layers, strict=True):
        prefix = f"blk.{lp.index}"
        if lp.kv_heads > 0:
            yield f"{prefix}.attn_norm.weight", _norm(layer.input_layernorm, plan, hidden)
            yield from _attention(layer.self_attn, lp, plan, prefix)
            if gemma:
                yield f"{prefix}.post_attention_norm.weight", _norm(layer.post_attention_layernorm, plan)
        if lp.ffn > 0:
            yield f"{prefix}.ffn_norm.weight", _norm(layer.pre_feedforward_layernorm if gemma else layer.post_attention_layernorm, plan, hidden)
            yield from _mlp(layer.mlp, lp, prefix)
            if gemma:
                yield f"{prefix}.post_ffw_norm.weight", _norm(layer.post_feedforward_layernorm, plan)
    yield "output_norm.weight", _norm(decoder.norm, plan)
    if not getattr(model.config, "tie_word_embeddings", False):
        yield "output.weight", _np(model.lm_head.weight)
