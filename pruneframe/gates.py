"""Gates: run a dense model as if units were masked and scaled, without changing its weights.

A gate vector ``z`` (one value per unit, flat unit order) multiplies:

* each FFN channel's activation, i.e. the input of down_proj (``down(act(gate(x)) * up(x) * z)``);
* each KV group's keys and values, i.e. the outputs of k_proj and v_proj. RoPE is linear per head, so
  scaling keys before RoPE equals scaling the post-RoPE keys. (In Qwen3 the per-head k_norm removes a
  positive key scale, exactly as it would after folding the scale into k_proj rows; a zero still
  zeroes the group.)

Output scales multiply every down_proj / o_proj output per hidden dimension, and ``bias`` terms
then add a vector to it. This is the reference that folding
must reproduce exactly, and the mechanism gate-training methods use (``z`` may carry gradients).
:func:`replaced_weights` swaps in refit down_proj weights for the same purpose.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator

import torch
from torch import nn

from pruneframe.architectures.llama import layer_modules
from pruneframe.methods import Recalibration
from pruneframe.units import UnitKind, UnitSet

__all__ = ["UnitGates", "gated", "gate_values", "replaced_weights"]


class UnitGates:
    """Forward hooks that multiply units by a settable gate vector.

    Use as a context manager; hooks are removed on exit. ``set(z)`` may be called between forwards
    (e.g. once per training step); ``z=None`` disables the multiplication.
    """

    def __init__(self, model: nn.Module, units: UnitSet) -> None:
        self.model = model
        self.units = units
        self.z: torch.Tensor | None = None
        self.mlp_bias: torch.Tensor | None = None
        self.attn_bias: torch.Tensor | None = None
        self.mlp_out_scale: torch.Tensor | None = None
        self.attn_out_scale: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._sizes = [n for shape in units.layers for n in (shape.ffn_channels, shape.kv_groups)]
        self._split: tuple[torch.Tensor | None, tuple[torch.Tensor, ...]] = (None, ())

    def set(self, z: torch.Tensor | None) -> None:
        """Set the gate vector (length ``len(units)``); ``None`` disables gating."""
        if z is not None and z.shape != (len(self.units),):
            raise ValueError(f"gate vector must have shape ({len(self.units)},), got {tuple(z.shape)}")
        self.z = z
        self._split = (None, ())

    def set_bias(self, mlp_bias: torch.Tensor | None, attn_bias: torch.Tensor | None) -> None:
        """Set output biases ``[layers, hidden]`` added to down_proj / o_proj outputs (``None``: none)."""
        self.mlp_bias, self.attn_bias = mlp_bias, attn_bias

    def set_output_scales(self, mlp_out_scale: torch.Tensor | None, attn_out_scale: torch.Tensor | None) -> None:
        """Set ``[layers, hidden]`` multipliers of down_proj / o_proj outputs (``None``: none); may carry gradients."""
        self.mlp_out_scale, self.attn_out_scale = mlp_out_scale, attn_out_scale

    @contextmanager
    def disabled(self) -> Iterator["UnitGates"]:
        """Run the model ungated (no gates, biases or output scales) inside the block, e.g. as its own dense teacher."""
        saved = self.z, self.mlp_bias, self.attn_bias, self.mlp_out_scale, self.attn_out_scale
        self.z = self.mlp_bias = self.attn_bias = self.mlp_out_scale = self.attn_out_scale = None
        try:
            yield self
        finally:
            self.z, self.mlp_bias, self.attn_bias, self.mlp_out_scale, self.attn_out_scale = saved

    def install(self) -> "UnitGates":
        """Register the hooks."""
        if self._handles:
            return self
        for i, mods in enumerate(layer_modules(self.model)):
            ffn, kv = 2 * i, 2 * i + 1
            self._handles.append(mods.down_proj.register_forward_pre_hook(self._ffn_hook(ffn)))
            self._handles.append(mods.down_proj.register_forward_hook(self._output_hook(i, "mlp")))
            self._handles.append(mods.o_proj.register_forward_hook(self._output_hook(i, "attn")))
            for proj in (mods.k_proj, mods.v_proj):
                self._handles.append(proj.register_forward_hook(self._kv_hook(kv, mods.head_dim)))
        return self

    def remove(self) -> None:
        """Remove every hook."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "UnitGates":
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _part(self, index: int) -> torch.Tensor:
        """Part ``index`` of the gate vector (layer ``i``: FFN ``2i``, KV ``2i + 1``).

        The vector is split once per ``z`` rather than sliced in every hook: one split node
        in the autograd graph instead of a full-length zero-filled gradient per slice.
        """
        z, parts = self._split
        if z is not self.z:
            parts = self.z.split(self._sizes)
            self._split = (self.z, parts)
        return parts[index]

    def _ffn_hook(self, index: int):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if self.z is None:
                return None
            x = args[0]
            return (x * self._part(index).to(x.dtype),) + tuple(args[1:])

        return hook

    def _kv_hook(self, index: int, head_dim: int):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if self.z is None:
                return None
            g = self._part(index).to(out.dtype)
            shape = out.shape
            return (out.view(*shape[:-1], -1, head_dim) * g[:, None]).view(shape)

        return hook

    def _output_hook(self, layer: int, kind: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            scale, bias = getattr(self, f"{kind}_out_scale"), getattr(self, f"{kind}_bias")
            if scale is not None:
                out = out * scale[layer].to(device=out.device, dtype=out.dtype)
            if bias is not None:
                out = out + bias[layer].to(device=out.device, dtype=out.dtype)
            return out if scale is not None or bias is not None else None

        return hook


def gate_values(mask: torch.Tensor, recalibration: Recalibration | None = None) -> torch.Tensor:
    """The gate vector that reproduces ``mask`` with the recalibration's scales: ``mask * scales``."""
    z = mask.to(torch.float32)
    if recalibration is not None and recalibration.scales is not None:
        z = z * recalibration.scales.to(torch.float32)
    return z


@contextmanager
def replaced_weights(model: nn.Module, down_proj: list[torch.Tensor] | None) -> Iterator[nn.Module]:
    """Use ``down_proj[i]`` as layer i's down_proj weight inside the block (``None``: unchanged).

    The original weights are restored on exit, also after an error.
    """
    if down_proj is None:
        yield model
        return
    mods = layer_modules(model)
    if len(down_proj) != len(mods):
        raise ValueError(f"down_proj replacements: expected {len(mods)} layers, got {len(down_proj)}")
    saved = []
    try:
        for m, w in zip(mods, down_proj):
            if w.shape != m.down_proj.weight.shape:
                raise ValueError(f"down_proj replacement of shape {tuple(w.shape)} for a weight of shape {tuple(m.down_proj.weight.shape)}")
            saved.append(m.down_proj.weight.data)
            m.down_proj.weight.data = w.detach().to(m.down_proj.weight)
        yield model
    finally:
        for m, w in zip(mods, saved):
            m.down_proj.weight.data = w


@contextmanager
def gated(model: nn.Module, units: UnitSet, mask: torch.Tensor, recalibration: Recalibration | None = None) -> Iterator[nn.Module]:
    """Run ``model`` with ``mask`` (and the recalibration) applied as gates inside the block."""
    gates = UnitGates(model, units)
    rec = recalibration or Recalibration()
    gates.set(gate_values(mask, rec))
    gates.set_bias(rec.mlp_bias, rec.attn_bias)
    gates.set_output_scales(rec.mlp_out_scale, rec.attn_out_scale)
    with gates, replaced_weights(model, rec.down_proj):
        yield model
