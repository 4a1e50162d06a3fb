"""Gates: run a dense model as if units were masked and scaled, without changing its weights.

A gate vector ``z`` (one value per unit, flat unit order) multiplies:

* each FFN channel's activation, i.e. the input of down_proj (``down(act(gate(x)) * up(x) * z)``);
* each KV group's keys and values, i.e. the outputs of k_proj and v_proj. RoPE is linear per head, so
  scaling keys before RoPE equals scaling the post-RoPE keys. (In Qwen3 the per-head k_norm removes a
  positive key scale, exactly as it would after folding the scale into k_proj rows; a zero still
  zeroes the group.)

``bias`` terms add a vector to every down_proj / o_proj output. This is the reference that folding
must reproduce exactly, and the mechanism gate-training methods use (``z`` may carry gradients).
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator

import torch
from torch import nn

from pruneframe.architectures.llama import layer_modules
from pruneframe.methods import Recalibration
from pruneframe.units import UnitKind, UnitSet

__all__ = ["UnitGates", "gated", "gate_values"]


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
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._slices = [(units.slice(i, UnitKind.FFN), units.slice(i, UnitKind.KV)) for i in range(units.num_layers)]

    def set(self, z: torch.Tensor | None) -> None:
        """Set the gate vector (length ``len(units)``); ``None`` disables gating."""
        if z is not None and z.shape != (len(self.units),):
            raise ValueError(f"gate vector must have shape ({len(self.units)},), got {tuple(z.shape)}")
        self.z = z

    def set_bias(self, mlp_bias: torch.Tensor | None, attn_bias: torch.Tensor | None) -> None:
        """Set output biases ``[layers, hidden]`` added to down_proj / o_proj outputs (``None``: none)."""
        self.mlp_bias, self.attn_bias = mlp_bias, attn_bias

    @contextmanager
    def disabled(self) -> Iterator["UnitGates"]:
        """Run the model ungated (no gates, no biases) inside the block, e.g. as its own dense teacher."""
        saved = self.z, self.mlp_bias, self.attn_bias
        self.z = self.mlp_bias = self.attn_bias = None
        try:
            yield self
        finally:
            self.z, self.mlp_bias, self.attn_bias = saved

    def install(self) -> "UnitGates":
        """Register the hooks."""
        if self._handles:
            return self
        for i, mods in enumerate(layer_modules(self.model)):
            ffn, kv = self._slices[i]
            self._handles.append(mods.down_proj.register_forward_pre_hook(self._ffn_hook(ffn)))
            self._handles.append(mods.down_proj.register_forward_hook(self._bias_hook(i, "mlp_bias")))
            self._handles.append(mods.o_proj.register_forward_hook(self._bias_hook(i, "attn_bias")))
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

    def _ffn_hook(self, sl: slice):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if self.z is None:
                return None
            x = args[0]
            return (x * self.z[sl].to(x.dtype),) + tuple(args[1:])

        return hook

    def _kv_hook(self, sl: slice, head_dim: int):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if self.z is None:
                return None
            g = self.z[sl].to(out.dtype)
            shape = out.shape
            return (out.view(*shape[:-1], -1, head_dim) * g[:, None]).view(shape)

        return hook

    def _bias_hook(self, layer: int, attr: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            bias = getattr(self, attr)
            if bias is None:
                return None
            return out + bias[layer].to(device=out.device, dtype=out.dtype)

        return hook


def gate_values(mask: torch.Tensor, recalibration: Recalibration | None = None) -> torch.Tensor:
    """The gate vector that reproduces ``mask`` with the recalibration's scales: ``mask * scales``."""
    z = mask.to(torch.float32)
    if recalibration is not None and recalibration.scales is not None:
        z = z * recalibration.scales.to(torch.float32)
    return z


@contextmanager
def gated(model: nn.Module, units: UnitSet, mask: torch.Tensor, recalibration: Recalibration | None = None) -> Iterator[nn.Module]:
    """Run ``model`` with ``mask`` (and the recalibration) applied as gates inside the block."""
    gates = UnitGates(model, units)
    rec = recalibration or Recalibration()
    gates.set(gate_values(mask, rec))
    gates.set_bias(rec.mlp_bias, rec.attn_bias)
    with gates:
        yield model
