"""Which llama.cpp architecture a model exports as, and the per-layer widths the GGUF file declares.

Uniform widths export as the family's own llama.cpp architecture (``llama`` for Llama and Mistral,
``qwen2``, ``qwen3``, ``gemma3``). llama.cpp has no per-layer-width Gemma, so a Gemma 3 whose FFN widths
differ is written as ``gemma3`` with every FFN zero-padded to the widest layer's (exact, but the padding
is read: the speed follows the widest layer). Uneven Llama-family widths export as ``deci``, llama.cpp's architecture with
per-layer query-head counts, KV-head counts and FFN widths. Where ``deci`` would compute something
else than the checkpoint, the layout is padded with zero weights, which leaves the function unchanged:

* a layer with attention but no FFN channel gets one zero channel (``deci`` drops the attention
  output of a layer whose FFN width is 0);
* layer 0 without a KV group, or an attention-free layer whose ``o_proj`` has a bias (which ``deci``
  ignores there), gets one zero KV group;
* FFN widths are padded to a multiple of ``pad_ffn_to``, 32 unless told otherwise: block-quantized types
  (``q8_0``, ``q4_0``) need whole 32-weight blocks along a row, and llama.cpp's f16 kernels decode
  unaligned widths up to about 10% slower (docs/llamacpp.md); ``pad_ffn_to=1`` leaves float widths as
  they are.

Anything else llama.cpp cannot express raises :class:`ExportRefused` naming what and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pruneframe.architectures import LayerWidths, adapter_for

__all__ = ["ExportRefused", "LayerPlan", "GGUFPlan", "plan_export", "BLOCK_SIZES", "DEFAULT_PAD_FFN_TO"]

#: Row-block size of each export type whose kernels need whole blocks along a row.
BLOCK_SIZES: dict[str, int] = {"f32": 1, "f16": 1, "bf16": 1, "q8_0": 32, "q4_0": 32}
#: The multiple FFN widths are zero-padded to when the caller names none (measured in docs/llamacpp.md).
DEFAULT_PAD_FFN_TO = 32

#: transformers class -> (llama.cpp architecture for uniform widths, whether ``deci`` can hold uneven ones).
_FAMILIES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
    "Qwen3ForCausalLM": ("qwen3", False),
    "Gemma3ForCausalLM": ("gemma3", False),
}
#: Architectures whose llama.cpp graph has no output-projection biases.
_NO_BIAS = ("qwen2", "qwen3", "gemma3")
#: Architectures without a per-layer-width counterpart in llama.cpp whose uneven FFN widths are zero-padded to the widest layer's.
PADDED_FFN_ARCHS = ("gemma3",)


class ExportRefused(ValueError):
    """The model cannot be written as a GGUF file that llama.cpp runs exactly; the message names what and why."""


@dataclass(frozen=True)
class LayerPlan:
    """One decoder layer as the GGUF file declares it.

    Attributes:
        index: layer index.
        ffn: FFN channels written (the model's, plus ``ffn_pad`` zero channels).
        kv_heads: KV heads written (the model's, plus ``kv_pad`` zero groups).
        q_heads: query heads written.
        ffn_pad: zero FFN channels appended after the model's own.
        kv_pad: zero KV groups appended after the model's own.
    """

    index: int
    ffn: int
    kv_heads: int
    q_heads: int
    ffn_pad: int = 0
    kv_pad: int = 0


@dataclass(frozen=True)
class GGUFPlan:
    """What :func:`plan_export` decided: the architecture, the family, the layers and the notes to print."""

    arch: str
    family: str
    head_dim: int
    queries_per_group: int
    layers: tuple[LayerPlan, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)


def _config(model: nn.Module, key: str, default: Any = None) -> Any:
    return getattr(model.config, key, default)


def _check_common(model: nn.Module, family: str) -> None:
    """Refuse settings no target architecture reproduces."""
    name = type(model).__name__
    scaling = _config(model, "rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else "default"
    if kind not in ("default", None):
        raise ExportRefused(f"{name}: rope_scaling of type {kind!r} is not exported yet (only unscaled RoPE)")
    if family == "MistralForCausalLM" and _config(model, "sliding_window"):
        raise ExportRefused(f"{name}: sliding-window attention ({_config(model, 'sliding_window')} tokens) has no llama.cpp 'llama' equivalent")
    if family == "Qwen2ForCausalLM" and _config(model, "use_sliding_window", False):
        raise ExportRefused(f"{name}: use_sliding_window=True has no llama.cpp 'qwen2' equivalent")
    if family == "Gemma3ForCausalLM":
        _check_gemma3(model)
        return
    act = _config(model, "hidden_act", "silu")
    if act != "silu":
        raise ExportRefused(f"{name}: hidden_act {act!r}; llama.cpp's {family} graph uses silu")
    if _config(model, "partial_rotary_factor", 1.0) not in (None, 1.0):
        raise ExportRefused(f"{name}: partial rotary embeddings are not exported yet")


def _check_gemma3(model: nn.Module) -> None:
    """Refuse Gemma 3 settings llama.cpp's ``gemma3`` graph does not reproduce."""
    name = type(model).__name__
    act = _config(model, "hidden_activation", None) or _config(model, "hidden_act", None)
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ExportRefused(f"{name}: hidden_activation {act!r}; llama.cpp's gemma3 graph uses tanh-approximated GELU")
    head_dim = int(_config(model, "head_dim"))
    if _config(model, "query_pre_attn_scalar", head_dim) != head_dim:
        scalar = _config(model, "query_pre_attn_scalar")
        raise ExportRefused(f"{name}: query_pre_attn_scalar {scalar} != head_dim {head_dim}; llama.cpp scales queries by head_dim")
    if _config(model, "attn_logit_softcapping", None) is not None:
        raise ExportRefused(f"{name}: attention logit soft-capping has no llama.cpp gemma3 equivalent")
    if _config(model, "use_bidirectional_attention", False):
        raise ExportRefused(f"{name}: bidirectional attention has no llama.cpp gemma3 equivalent")
    params = _config(model, "rope_parameters", None) or {}
    local = params.get("sliding_attention", {}) if isinstance(params, dict) else {}
    if local.get("rope_theta", _config(model, "rope_local_base_freq", 10000.0)) != 10000.0 or local.get("rope_type", "default") != "default":
        raise ExportRefused(f"{name}: sliding layers' RoPE {local}; llama.cpp's gemma3 fixes base 10000, unscaled")
    full = params.get("full_attention", {}) if isinstance(params, dict) else {}
    if full.get("rope_type", "default") not in ("default", "linear"):
        raise ExportRefused(f"{name}: global layers' RoPE of type {full.get('rope_type')!r} is not exported yet (default and linear are)")


def _uniform(widths: list[LayerWidths]) -> bool:
    return all(w.same_shape(widths[0]) for w in widths) and widths[0].ffn > 0 and widths[0].kv_heads > 0


def plan_export(model: nn.Module, dtype: str = "f16", pad_ffn_to: int | None = None) -> GGUFPlan:
    """Decide how ``model`` (a dense or pruned Hugging Face causal LM) is written; raise :class:`ExportRefused` if it cannot be.

    Args:
        model: the model, as loaded (dense, or a pruned checkpoint with uniform or uneven widths).
        dtype: the export type (``f32``, ``f16``, ``bf16``, ``q8_0`` or ``q4_0``): block-quantized types get
            FFN widths padded to a whole number of blocks whatever ``pad_ffn_to`` says.
        pad_ffn_to: zero-pad every FFN width to a multiple of this (exact; ``None``: :data:`DEFAULT_PAD_FFN_TO`;
            1 leaves float widths as they are).
    """
    if pad_ffn_to is None:
        pad_ffn_to = DEFAULT_PAD_FFN_TO
    if dtype not in BLOCK_SIZES:
        raise ExportRefused(f"dtype {dtype!r}: expected one of {', '.join(BLOCK_SIZES)}")
    if pad_ffn_to < 1:
        raise ExportRefused(f"pad_ffn_to {pad_ffn_to}: expected a positive number of channels")
    try:
        adapter = adapter_for(model)
    except Exception as exc:  # no adapter: an unknown family
        raise ExportRefused(f"{type(model).__name__}: not a model family pruneframe knows ({exc})") from None
    family = adapter.architecture_of(model) or type(model).__name__
    if family not in _FAMILIES:
        known = ", ".join(sorted(_FAMILIES))
        raise ExportRefused(f"{type(model).__name__}: GGUF export covers {known}; {family} is not exported yet")
    _check_common(model, family)
    own_arch, deci_ok = _FAMILIES[family]
    widths = adapter.layer_widths(model)
    slices = adapter.layer_slices(model)
    head_dim = widths[0].head_dim
    g = _queries_per_group(model, widths)
    notes: list[str] = []
    block = math.lcm(BLOCK_SIZES[dtype], pad_ffn_to)
    what = f"whole {dtype} blocks" if block == BLOCK_SIZES[dtype] else f"multiples of {block}"
    if _uniform(widths):
        w = widths[0]
        if w.o_proj_bias and own_arch in _NO_BIAS:
            raise ExportRefused(f"{type(model).__name__}: an o_proj bias (FLAP's bias compensation) has no place in llama.cpp's {own_arch!r} architecture")
        if w.down_proj_bias and own_arch in _NO_BIAS:
            raise ExportRefused(f"{type(model).__name__}: a down_proj bias (FLAP's bias compensation) has no place in llama.cpp's {own_arch!r} architecture")
        pad = (-w.ffn) % block
        if pad:
            notes.append(f"FFN width {w.ffn} padded with {pad} zero channels to {what}")
        kv_pad = _square_attention_pad(model, own_arch, w, g)
        if kv_pad:
            notes.append(
                f"llama.cpp's {own_arch!r} needs query heads x head size = hidden size: {kv_pad} zero KV "
                "group(s) per layer restore it (exact; attention is not smaller in llama.cpp)"
            )
        layers = tuple(LayerPlan(x.index, x.ffn + pad, x.kv_heads + kv_pad, (x.kv_heads + kv_pad) * g, ffn_pad=pad, kv_pad=kv_pad) for x in widths)
        return GGUFPlan(own_arch, family, head_dim, g, layers, tuple(notes))
    if own_arch in PADDED_FFN_ARCHS:
        return _padded_plan(model, own_arch, family, widths, g, block)
    if not deci_ok:
        raise ExportRefused(
            f"{type(model).__name__}: layers have different widths, and llama.cpp holds per-layer widths only in "
            f"its 'deci' architecture, which lacks what {family} needs ("
            + ("q/k/v biases" if family == "Qwen2ForCausalLM" else "per-head q/k norms")
            + "); prune with "
            "scope 'uniform' to export it as llama.cpp's own " + repr(own_arch)
        )
    _check_deci_biases(model, slices)
    layers = []
    for w in widths:
        ffn_pad = kv_pad = 0
        if w.ffn == 0 and (w.kv_heads > 0 or w.index == 0 or w.o_proj_bias):
            ffn_pad = block  # deci drops the attention output of a layer without FFN
            notes.append(f"layer {w.index}: attention without FFN; {ffn_pad} zero FFN channel(s) added")
        elif w.ffn % block:
            ffn_pad = (-w.ffn) % block
        if w.kv_heads == 0 and (w.index == 0 or w.o_proj_bias):
            kv_pad = 1
            why = "layer 0 must keep a head" if w.index == 0 else "deci ignores o_proj's bias without attention"
            notes.append(f"layer {w.index}: no KV group left; one zero KV group added ({why})")
            if w.ffn == 0 and not ffn_pad:
                ffn_pad = block
        if w.down_proj_bias and w.ffn == 0 and ffn_pad == 0:
            ffn_pad = block
        layers.append(LayerPlan(w.index, w.ffn + ffn_pad, w.kv_heads + kv_pad, (w.kv_heads + kv_pad) * g, ffn_pad=ffn_pad, kv_pad=kv_pad))
    if any(x.ffn_pad and x.ffn - x.ffn_pad > 0 for x in layers):
        notes.append(f"FFN widths padded with zero channels to {what}")
    return GGUFPlan("deci", family, head_dim, g, tuple(layers), tuple(notes))


def _padded_plan(model: nn.Module, arch: str, family: str, widths: list[LayerWidths], g: int, block: int) -> GGUFPlan:
    """``arch`` with every layer's FFN zero-padded to the widest layer's (exact; the padding costs its reads in llama.cpp).

    llama.cpp's ``gemma3`` reads one FFN width and one head count for every layer; attention must be the
    same everywhere, and no block may be removed (whole layers may: they are gone from the model).
    """
    name = type(model).__name__
    if any(w.kv_heads == 0 or w.ffn == 0 for w in widths):
        raise ExportRefused(
            f"{name}: a removed attention or MLP block has no place in llama.cpp's {arch!r}, which needs both in every layer (remove whole layers instead)"
        )
    if len({(w.q_heads, w.kv_heads) for w in widths}) > 1:
        raise ExportRefused(f"{name}: attention differs between layers; llama.cpp's {arch!r} has one head count for every layer (prune FFN channels only)")
    if any(w.o_proj_bias or w.down_proj_bias for w in widths):
        raise ExportRefused(f"{name}: output biases (FLAP's bias compensation) have no place in llama.cpp's {arch!r}")
    widest = max(w.ffn for w in widths)
    widest += (-widest) % block
    layers = tuple(LayerPlan(w.index, widest, w.kv_heads, w.kv_heads * g, ffn_pad=widest - w.ffn) for w in widths)
    kept, written = sum(w.ffn for w in widths), widest * len(widths)
    notes = (
        f"llama.cpp's {arch!r} reads one FFN width for every layer: each layer is padded with zero channels to "
        f"{widest} ({written - kept} zero channels, {100 * (written - kept) / written:.0f}% of the FFN written; exact, "
        "but llama.cpp reads them)",
    )
    return GGUFPlan(arch, family, widths[0].head_dim, g, layers, notes)


def _square_attention_pad(model: nn.Module, arch: str, w: LayerWidths, g: int) -> int:
    """Zero KV groups that make ``qwen2``'s query projection square (its loader takes ``[hidden, hidden]``)."""
    if arch != "qwen2" or w.q_heads * w.head_dim == w.hidden:
        return 0
    full = w.hidden // (w.head_dim * g)
    if full * g * w.head_dim != w.hidden or full < w.kv_heads:
        raise ExportRefused(
            f"{type(model).__name__}: {w.q_heads} query heads of {w.head_dim} do not fill the hidden "
            f"size {w.hidden}, which llama.cpp's 'qwen2' requires, and zero heads cannot make up for it"
        )
    return full - w.kv_heads


def _queries_per_group(model: nn.Module, widths: list[LayerWidths]) -> int:
    """Query heads per KV head (the config's ratio: pruning removes whole groups, so it never changes)."""
    heads = int(_config(model, "num_attention_heads"))
    kv = int(_config(model, "num_key_value_heads", None) or heads)
    return heads // kv


def _check_deci_biases(model: nn.Module, slices: list[Any]) -> None:
    """``deci`` reads no q/k/v or gate/up biases: refuse a model that has them."""
    for ls in slices:
        for s in ls.slices:
            if s.name in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj") and s.linear.bias is not None:
                raise ExportRefused(
                    f"{type(model).__name__}: layer {ls.index} has a {s.name} bias, which llama.cpp's "
                    "'deci' architecture (the one for uneven widths) does not read"
                )
