"""How a model is written as GGUF: the llama.cpp architecture its adapter names, and the per-layer widths the file declares.

The model's adapter describes its family (:meth:`~pruneframe.architectures.ArchitectureAdapter.gguf_spec`,
a :class:`~pruneframe.architectures.gguf.GGUFSpec`), or refuses it. Layers alike export as the family's own
llama.cpp architecture (:attr:`GGUFSpec.layout <pruneframe.architectures.gguf.GGUFSpec.layout>`). Layers
of different widths export as the family's per-layer-width architecture (:attr:`GGUFSpec.uneven
<pruneframe.architectures.gguf.GGUFSpec.uneven>`), with every FFN zero-padded to the widest layer's where
the family's own architecture pads instead (exact, but the padding is read: the speed follows the widest
layer), or are refused with the adapter's reason. Where a per-layer-width architecture would compute
something else than the checkpoint, the layout is padded with zero weights, which leaves the function
unchanged:

* a layer with attention but no FFN channel gets one zero channel (llama.cpp drops the attention
  output of a layer whose FFN width is 0);
* layer 0 without a KV group, or an attention-free layer whose ``o_proj`` has a bias (which llama.cpp
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

from pruneframe.architectures import ArchitectureAdapter, LayerWidths, adapter_for
from pruneframe.architectures.gguf import ExportRefused, GGUFLayout, GGUFSpec
from pruneframe.checkpoint.modeling_pruneframe import SHORTCUT_FIELD

__all__ = ["ExportRefused", "LayerPlan", "GGUFPlan", "plan_export", "BLOCK_SIZES", "DEFAULT_PAD_FFN_TO"]

#: Row-block size of each export type whose kernels need whole blocks along a row.
BLOCK_SIZES: dict[str, int] = {"f32": 1, "f16": 1, "bf16": 1, "q8_0": 32, "q4_0": 32}
#: The multiple FFN widths are zero-padded to when the caller names none (measured in docs/llamacpp.md).
DEFAULT_PAD_FFN_TO = 32


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
    """What :func:`plan_export` decided: the architecture, the family, the layers and the notes to print.

    Attributes:
        arch: the llama.cpp architecture written.
        family: the model class the adapter handles (``architecture_of``).
        head_dim: per-head width.
        queries_per_group: query heads per KV head.
        layers: per layer, what the file declares.
        notes: what the plan padded, and why.
        spec: the adapter's description of the family (the layout of ``arch`` is :attr:`layout`).
        adapter: the adapter that described it (the writer reaches the weights through it).
    """

    arch: str
    family: str
    head_dim: int
    queries_per_group: int
    layers: tuple[LayerPlan, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    spec: GGUFSpec | None = field(default=None, repr=False, compare=False)
    adapter: ArchitectureAdapter | None = field(default=None, repr=False, compare=False)

    @property
    def layout(self) -> GGUFLayout:
        """How the family is written as :attr:`arch` (from :attr:`spec`)."""
        if self.spec is None:
            raise ValueError("this GGUFPlan carries no GGUFSpec; make plans with plan_export")
        return self.spec.layout_for(self.arch)


def _config(model: nn.Module, key: str, default: Any = None) -> Any:
    return getattr(model.config, key, default)


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
    if getattr(model.config, SHORTCUT_FIELD, False):
        raise ExportRefused(
            f"{type(model).__name__}: its residual connections carry shortcut matrices (SliceGPT's per-layer rotations), "
            "which no llama.cpp architecture has; prune with slicegpt's rotation: single for a model llama.cpp runs"
        )
    try:
        adapter = adapter_for(model)
    except Exception as exc:  # no adapter: an unknown family
        raise ExportRefused(f"{type(model).__name__}: not a model family pruneframe knows ({exc})") from None
    family = adapter.architecture_of(model) or type(model).__name__
    spec = adapter.gguf_spec(model)
    own = spec.layout
    widths = adapter.layer_widths(model)
    head_dim = widths[0].head_dim
    g = _queries_per_group(model, widths)
    notes: list[str] = []
    block = math.lcm(BLOCK_SIZES[dtype], pad_ffn_to)
    what = f"whole {dtype} blocks" if block == BLOCK_SIZES[dtype] else f"multiples of {block}"

    def plan(arch: str, layers: tuple[LayerPlan, ...], notes: tuple[str, ...]) -> GGUFPlan:
        return GGUFPlan(arch, family, head_dim, g, layers, notes, spec=spec, adapter=adapter)

    if _uniform(widths):
        w = widths[0]
        if w.o_proj_bias and not own.output_biases:
            raise ExportRefused(f"{type(model).__name__}: an o_proj bias (FLAP's bias compensation) has no place in llama.cpp's {own.arch!r} architecture")
        if w.down_proj_bias and not own.output_biases:
            raise ExportRefused(f"{type(model).__name__}: a down_proj bias (FLAP's bias compensation) has no place in llama.cpp's {own.arch!r} architecture")
        pad = (-w.ffn) % block
        if pad:
            notes.append(f"FFN width {w.ffn} padded with {pad} zero channels to {what}")
        kv_pad = _square_attention_pad(model, own, w, g)
        if kv_pad:
            notes.append(
                f"llama.cpp's {own.arch!r} needs query heads x head size = hidden size: {kv_pad} zero KV "
                "group(s) per layer restore it (exact; attention is not smaller in llama.cpp)"
            )
        layers = tuple(LayerPlan(x.index, x.ffn + pad, x.kv_heads + kv_pad, (x.kv_heads + kv_pad) * g, ffn_pad=pad, kv_pad=kv_pad) for x in widths)
        return plan(own.arch, layers, tuple(notes))
    if own.pad_ffn_to_widest:
        return plan(own.arch, *_padded_layers(model, own, widths, g, block))
    per_layer = spec.uneven
    if per_layer is None:
        raise ExportRefused(
            f"{type(model).__name__}: layers have different widths, and {spec.uneven_refusal}; prune with "
            "scope 'uniform' to export it as llama.cpp's own " + repr(own.arch)
        )
    if not per_layer.input_biases:
        _check_input_biases(model, adapter.layer_slices(model), per_layer)
    layers = []
    for w in widths:
        ffn_pad = kv_pad = 0
        if w.ffn == 0 and (w.kv_heads > 0 or w.index == 0 or w.o_proj_bias):
            ffn_pad = block  # llama.cpp drops the attention output of a layer without FFN
            notes.append(f"layer {w.index}: attention without FFN; {ffn_pad} zero FFN channel(s) added")
        elif w.ffn % block:
            ffn_pad = (-w.ffn) % block
        if w.kv_heads == 0 and (w.index == 0 or w.o_proj_bias):
            kv_pad = 1
            why = "layer 0 must keep a head" if w.index == 0 else f"{per_layer.arch} ignores o_proj's bias without attention"
            notes.append(f"layer {w.index}: no KV group left; one zero KV group added ({why})")
            if w.ffn == 0 and not ffn_pad:
                ffn_pad = block
        if w.down_proj_bias and w.ffn == 0 and ffn_pad == 0:
            ffn_pad = block
        layers.append(LayerPlan(w.index, w.ffn + ffn_pad, w.kv_heads + kv_pad, (w.kv_heads + kv_pad) * g, ffn_pad=ffn_pad, kv_pad=kv_pad))
    if any(x.ffn_pad and x.ffn - x.ffn_pad > 0 for x in layers):
        notes.append(f"FFN widths padded with zero channels to {what}")
    return plan(per_layer.arch, tuple(layers), tuple(notes))


def _padded_layers(model: nn.Module, layout: GGUFLayout, widths: list[LayerWidths], g: int, block: int) -> tuple[tuple[LayerPlan, ...], tuple[str, ...]]:
    """Every layer's FFN zero-padded to the widest layer's (exact; the padding costs its reads in llama.cpp): the layers and the note.

    The layout reads one FFN width and one head count for every layer; attention must be the same
    everywhere, and no block may be removed (whole layers may: they are gone from the model).
    """
    name, arch = type(model).__name__, layout.arch
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
    return layers, notes


def _square_attention_pad(model: nn.Module, layout: GGUFLayout, w: LayerWidths, g: int) -> int:
    """Zero KV groups that make the query projection square, for a layout that loads it as ``[hidden, hidden]``."""
    if not layout.square_attention or w.q_heads * w.head_dim == w.hidden:
        return 0
    full = w.hidden // (w.head_dim * g)
    if full * g * w.head_dim != w.hidden or full < w.kv_heads:
        raise ExportRefused(
            f"{type(model).__name__}: {w.q_heads} query heads of {w.head_dim} do not fill the hidden "
            f"size {w.hidden}, which llama.cpp's {layout.arch!r} requires, and zero heads cannot make up for it"
        )
    return full - w.kv_heads


def _queries_per_group(model: nn.Module, widths: list[LayerWidths]) -> int:
    """Query heads per KV head (the config's ratio: pruning removes whole groups, so it never changes)."""
    heads = int(_config(model, "num_attention_heads"))
    kv = int(_config(model, "num_key_value_heads", None) or heads)
    return heads // kv


def _check_input_biases(model: nn.Module, slices: list[Any], layout: GGUFLayout) -> None:
    """Refuse a model with q/k/v or gate/up biases, which ``layout`` does not read."""
    for ls in slices:
        for s in ls.slices:
            if s.name in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj") and s.linear.bias is not None:
                raise ExportRefused(
                    f"{type(model).__name__}: layer {ls.index} has a {s.name} bias, which llama.cpp's "
                    f"{layout.arch!r} architecture (the one for uneven widths) does not read"
                )
