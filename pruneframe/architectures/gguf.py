"""How a family is written as a GGUF file for llama.cpp: what an adapter tells the exporter.

:meth:`ArchitectureAdapter.gguf_spec <pruneframe.architectures.ArchitectureAdapter.gguf_spec>` answers
for one model as it is now, with a :class:`GGUFSpec` (the llama.cpp architecture its layers are
written as, the one for layers of different widths, and how its modules become tensors and
metadata) or with :class:`ExportRefused` saying which adapter refuses and why. :mod:`pruneframe.export`
plans the widths and the zero padding, lays the tensors out and writes the file from the spec alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["ExportRefused", "GGUFNorm", "GGUFLayout", "GGUFSpec", "HEAD_NORMS", "global_rope", "refuse_scaled_rope"]


class ExportRefused(ValueError):
    """The model cannot be written as a GGUF file that llama.cpp runs exactly; the message names what and why."""


@dataclass(frozen=True)
class GGUFNorm:
    """One norm as a GGUF tensor: ``blk.N.<tensor>.weight`` holds the weight of the module ``<module>``.

    Attributes:
        tensor: llama.cpp's name of the norm within a block (``attn_norm``, ``ffn_norm``, ...).
        module: the norm's attribute name on the decoder layer (on the attention module for head norms).
    """

    tensor: str
    module: str


#: Per-head q/k norms (``q_norm`` / ``k_norm`` on the attention module) as llama.cpp names them.
HEAD_NORMS: tuple[GGUFNorm, ...] = (GGUFNorm("attn_q_norm", "q_norm"), GGUFNorm("attn_k_norm", "k_norm"))


@dataclass(frozen=True)
class GGUFLayout:
    """One llama.cpp architecture, and how a family's decoder is written into it.

    The projections are written as llama.cpp's ``attn_q``/``attn_k``/``attn_v``/``attn_output`` and
    ``ffn_gate``/``ffn_up``/``ffn_down`` from the adapter's weight slices; the norms as listed here.

    Attributes:
        arch: llama.cpp's architecture name (``general.architecture``, the prefix of its metadata keys).
        per_layer_widths: the architecture reads FFN widths and head counts per layer (arrays in the
            header), so layers of different widths are written as they are. llama.cpp's per-layer graph
            drops the attention output of a layer without FFN channels, needs a KV head in layer 0, and
            ignores an attention-free layer's ``o_proj`` bias: the plan pads those cases with zeros.
        pad_ffn_to_widest: the architecture reads one FFN width for every layer, and layers whose FFN
            widths differ are written zero-padded to the widest layer's (attention must then be alike
            in every layer, and no block removed).
        paired_rope: llama.cpp rotates adjacent pairs of each query/key head, so each head's q and k rows
            are reordered from transformers' halves (:func:`pruneframe.export.tensors.rope_pairs`).
        input_biases: llama.cpp reads q/k/v and gate/up biases.
        output_biases: llama.cpp reads ``o_proj`` and ``down_proj`` biases.
        square_attention: llama.cpp loads the query projection as ``[hidden, hidden]``; zero KV groups
            restore that shape after heads were pruned.
        norm_offset: added to every norm weight (for a family whose norms scale by ``offset + weight``).
        attention_norms: the layer's norms written before the attention projections.
        head_norms: norms on the attention module written after its projections (:data:`HEAD_NORMS`).
        attention_post_norms: the layer's norms written after the attention block.
        ffn_norms: the layer's norms written before the MLP projections.
        ffn_post_norms: the layer's norms written after the MLP block.
        metadata: writes the family's own header keys, ``metadata(writer, config)`` with the
            ``gguf.GGUFWriter`` after the common keys; None when there are none.
    """

    arch: str
    per_layer_widths: bool = False
    pad_ffn_to_widest: bool = False
    paired_rope: bool = False
    input_biases: bool = True
    output_biases: bool = True
    square_attention: bool = False
    norm_offset: float = 0.0
    attention_norms: tuple[GGUFNorm, ...] = (GGUFNorm("attn_norm", "input_layernorm"),)
    head_norms: tuple[GGUFNorm, ...] = ()
    attention_post_norms: tuple[GGUFNorm, ...] = ()
    ffn_norms: tuple[GGUFNorm, ...] = (GGUFNorm("ffn_norm", "post_attention_layernorm"),)
    ffn_post_norms: tuple[GGUFNorm, ...] = ()
    metadata: Callable[[Any, Any], None] | None = None


@dataclass(frozen=True)
class GGUFSpec:
    """An adapter's answer for one model: the llama.cpp layouts it may be written in.

    Attributes:
        layout: the family's own architecture, for layers that are alike (and, with
            :attr:`GGUFLayout.pad_ffn_to_widest`, for layers whose FFN widths differ).
        uneven: the architecture for layers of different widths (one with
            :attr:`GGUFLayout.per_layer_widths`), or None.
        uneven_refusal: why layers of different widths cannot be written, when there is no ``uneven``
            layout and ``layout`` does not pad (the exporter says so with this reason).
    """

    layout: GGUFLayout
    uneven: GGUFLayout | None = None
    uneven_refusal: str = "llama.cpp has no architecture with per-layer widths for this family"

    def layout_for(self, arch: str) -> GGUFLayout:
        """The layout whose llama.cpp architecture is ``arch``."""
        for layout in (self.layout, self.uneven):
            if layout is not None and layout.arch == arch:
                return layout
        known = [x.arch for x in (self.layout, self.uneven) if x is not None]
        raise ValueError(f"llama.cpp architecture {arch!r} is not one this family is written as ({', '.join(known)})")


def global_rope(config: Any) -> dict[str, Any]:
    """The RoPE settings of the global attention layers: ``rope_parameters``, or its ``full_attention`` entry where it has one per layer type."""
    params = getattr(config, "rope_parameters", None) or {}
    if not isinstance(params, dict):
        return {}
    return params.get("full_attention", params) if isinstance(params.get("full_attention"), dict) else params


def refuse_scaled_rope(model: nn.Module) -> None:
    """Raise :class:`ExportRefused` when ``model.config.rope_scaling`` asks for scaled RoPE (not exported yet)."""
    scaling = getattr(model.config, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else "default"
    if kind not in ("default", None):
        raise ExportRefused(f"{type(model).__name__}: rope_scaling of type {kind!r} is not exported yet (only unscaled RoPE)")
