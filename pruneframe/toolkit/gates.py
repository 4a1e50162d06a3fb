"""Gates: run a dense model as if units were masked and scaled, without changing its weights.

A gate vector ``z`` (one value per unit, flat unit order) multiplies:

* each FFN channel's activation, i.e. the input of down_proj (``down(act(gate(x)) * up(x) * z)``),
  by a forward pre-hook on down_proj. With ``fused_glu`` (the training loops) the SiLU MLPs the
  family's adapter marks as such (:attr:`~pruneframe.architectures.LayerSlices.glu`) compute ``silu(g) * u * z`` as one autograd function that keeps only ``g``,
  ``u`` and ``z`` for the backward pass: two activations per layer fewer than the operators one by
  one, same values and gradients bit for bit; other hooks on down_proj then see its gated input;
* each KV group's keys and values, i.e. its gated output rows (k_proj and v_proj, or their row
  ranges inside a fused qkv_proj). RoPE is linear per head, so
  scaling keys before RoPE equals scaling the post-RoPE keys. (In Qwen3 the per-head k_norm removes a
  positive key scale, exactly as it would after folding the scale into k_proj rows; a zero still
  zeroes the group.)

Output scales multiply every down_proj / o_proj output per hidden dimension, and ``bias`` terms
then add a vector to it. This is the reference that folding
must reproduce exactly, and the mechanism gate-training methods use (``z`` may carry gradients).
:func:`replaced_weights` swaps in refit down_proj / o_proj weights for the same purpose.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from pruneframe.architectures import ArchitectureAdapter, adapter_for
from pruneframe.architectures.base import WeightSlice
from pruneframe.pipeline.methods import Recalibration
from pruneframe.pipeline.units import UnitKind, UnitSet

__all__ = ["UnitGates", "gated", "gate_values", "replaced_weights"]


class _GatedSiLU(torch.autograd.Function):
    """``silu(g) * u * z`` (``z`` broadcast over the last dimension), saving only ``g``, ``u`` and ``z``.

    The backward pass recomputes ``silu(g)`` and applies the same operations autograd would to the
    three-operator graph, so results equal it exactly while two ``[tokens, channels]`` activations
    per layer are never stored.
    """

    @staticmethod
    def forward(ctx, g: torch.Tensor, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g, u, z)
        ctx.save_for_forward(g, u, z)
        return torch.nn.functional.silu(g).mul_(u).mul_(z)

    @staticmethod
    def jvp(ctx, dg: torch.Tensor | None, du: torch.Tensor | None, dz: torch.Tensor | None) -> torch.Tensor:
        """Forward-mode derivative (``torch.func.jvp``, ``forward_ad``)."""
        g, u, z = ctx.saved_tensors
        sig = torch.sigmoid(g)
        out = torch.zeros_like(g)
        if dg is not None:
            out += dg * sig * (1 + g * (1 - sig)) * u * z
        if du is not None:
            out += g * sig * du * z
        if dz is not None:
            out += g * sig * u * dz
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        g, u, z = ctx.saved_tensors
        need_g, need_u, need_z = ctx.needs_input_grad
        s = torch.nn.functional.silu(g)
        grad_g = grad_u = grad_z = None
        if need_z:
            grad_z = (s * u).mul_(grad).sum(dim=tuple(range(grad.dim() - 1)))
        if need_g or need_u:
            grad_a = grad * z
            if need_u:
                grad_u = s.mul_(grad_a)
            if need_g:
                grad_g = torch.ops.aten.silu_backward(grad_a.mul_(u), g)
        return grad_g, grad_u, grad_z


class _ForwardPatch:
    """``module.forward`` replaced by an instance attribute until :meth:`remove` (the class is untouched)."""

    def __init__(self, module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.module, self.forward = module, forward
        module.forward = forward

    def remove(self) -> None:
        if vars(self.module).get("forward") is self.forward:
            del self.module.forward


class UnitGates:
    """Forward hooks that multiply units by a settable gate vector.

    Use as a context manager; hooks are removed on exit. ``set(z)`` may be called between forwards
    (e.g. once per training step); ``z=None`` disables the multiplication. ``fused_glu``: gate
    SiLU MLPs inside one fused autograd function instead of a down_proj pre-hook (see the module
    docstring; for training, where it saves memory and time).
    """

    def __init__(self, model: nn.Module, units: UnitSet, fused_glu: bool = False) -> None:
        self.model = model
        self.units = units
        self.fused_glu = fused_glu
        self.z: torch.Tensor | None = None
        self.mlp_bias: torch.Tensor | None = None
        self.attn_bias: torch.Tensor | None = None
        self.mlp_out_scale: torch.Tensor | None = None
        self.attn_out_scale: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle | _ForwardPatch] = []
        self._sizes = [n for shape in units.layers for n in (shape.ffn_channels, shape.kv_groups)]
        self._split: tuple[torch.Tensor | None, bool, tuple[torch.Tensor, ...]] = (None, False, ())

    def set(self, z: torch.Tensor | None) -> None:
        """Set the gate vector (length ``len(units)``); ``None`` disables gating."""
        if z is not None and z.shape != (len(self.units),):
            raise ValueError(f"gate vector must have shape ({len(self.units)},), got {tuple(z.shape)}")
        self.z = z

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
        for i, layer in enumerate(self.units.layer_slices(self.model)):
            ffn, kv = 2 * i, 2 * i + 1
            if self.fused_glu and layer.glu is not None:
                self._handles.append(_ForwardPatch(layer.mlp, self._glu_forward(ffn, layer.mlp, *layer.glu)))
            else:
                self._handles.append(layer.down_proj.register_forward_pre_hook(self._ffn_hook(ffn)))
            self._handles.append(layer.down_proj.register_forward_hook(self._output_hook(i, "mlp")))
            self._handles.append(layer.o_proj.register_forward_hook(self._output_hook(i, "attn")))
            by_linear: dict[int, list[WeightSlice]] = {}
            for s in layer.slices:
                if s.gated and s.kind == UnitKind.KV and s.axis == 0:
                    by_linear.setdefault(id(s.linear), []).append(s)
            for slices in by_linear.values():
                self._handles.append(slices[0].linear.register_forward_hook(self._kv_hook(kv, slices)))
        return self

    def remove(self) -> None:
        """Remove every hook (and restore the MLP forwards)."""
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
        z, grad, parts = self._split
        if z is not self.z or grad != torch.is_grad_enabled():  # a split made without autograd carries no gradient
            parts = self.z.split(self._sizes)
            self._split = (self.z, torch.is_grad_enabled(), parts)
        return parts[index]

    def _ffn_hook(self, index: int):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if self.z is None:
                return None
            x = args[0]
            return (x * self._part(index).to(device=x.device, dtype=x.dtype),) + tuple(args[1:])

        return hook

    def _glu_forward(self, index: int, mlp: nn.Module, gate_proj: nn.Linear, up_proj: nn.Linear):
        original = mlp.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if self.z is None:
                return original(x)
            g, u = gate_proj(x), up_proj(x)
            return mlp.down_proj(_GatedSiLU.apply(g, u, self._part(index).to(device=g.device, dtype=g.dtype)))

        return forward

    def _kv_hook(self, index: int, slices: list[WeightSlice]):
        """Multiply each slice's output range by its units' gates (one range per unit of ``per_unit`` rows)."""
        whole = len(slices) == 1 and not slices[0].fused
        ranges = sorted((s.start, s.stop, s.per_unit) for s in slices)

        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if self.z is None:
                return None
            g = self._part(index).to(device=out.device, dtype=out.dtype)
            lead = out.shape[:-1]
            if whole:
                return (out.view(*lead, -1, ranges[0][2]) * g[:, None]).view(out.shape)
            pieces, pos = [], 0
            for start, stop, per_unit in ranges:
                if start > pos:
                    pieces.append(out[..., pos:start])
                pieces.append((out[..., start:stop].reshape(*lead, -1, per_unit) * g[:, None]).reshape(*lead, stop - start))
                pos = stop
            if pos < out.shape[-1]:
                pieces.append(out[..., pos:])
            return torch.cat(pieces, dim=-1)

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
def replaced_weights(
    model: nn.Module,
    down_proj: list[torch.Tensor] | None,
    adapter: ArchitectureAdapter | None = None,
    *,
    o_proj: list[torch.Tensor] | None = None,
) -> Iterator[nn.Module]:
    """Use ``down_proj[i]`` / ``o_proj[i]`` as layer i's weights inside the block (``None``: unchanged).

    ``adapter``: the model's architecture adapter (looked up when omitted).

    The original weights are restored on exit, also after an error.
    """
    if down_proj is None and o_proj is None:
        yield model
        return
    mods = (adapter or adapter_for(model)).layer_slices(model)
    saved: list[tuple[nn.Linear, torch.Tensor]] = []
    try:
        for name, replacements in (("down_proj", down_proj), ("o_proj", o_proj)):
            if replacements is None:
                continue
            if len(replacements) != len(mods):
                raise ValueError(f"{name} replacements: expected {len(mods)} layers, got {len(replacements)}")
            for m, w in zip(mods, replacements):
                linear = getattr(m, name)
                if w.shape != linear.weight.shape:
                    raise ValueError(f"{name} replacement of shape {tuple(w.shape)} for a weight of shape {tuple(linear.weight.shape)}")
                saved.append((linear, linear.weight.data))
                linear.weight.data = w.detach().to(linear.weight)
        yield model
    finally:
        for linear, w in saved:
            linear.weight.data = w


@contextmanager
def gated(model: nn.Module, units: UnitSet, mask: torch.Tensor, recalibration: Recalibration | None = None) -> Iterator[nn.Module]:
    """Run ``model`` with ``mask`` (and the recalibration) applied as gates inside the block."""
    gates = UnitGates(model, units)
    rec = recalibration or Recalibration()
    gates.set(gate_values(mask, rec))
    gates.set_bias(rec.mlp_bias, rec.attn_bias)
    gates.set_output_scales(rec.mlp_out_scale, rec.attn_out_scale)
    with gates, replaced_weights(model, rec.down_proj, units.adapter, o_proj=rec.o_proj):
        yield model
