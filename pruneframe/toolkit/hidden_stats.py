"""Statistics of the residual stream for cutting hidden channels: what each norm reads, per channel.

:func:`norm_input_energy` runs calibration windows through the model and records, for every norm on
the hidden dimension, the mean square of its input per channel; :func:`norm_factors` turns those
energies into the per-norm corrections :func:`~pruneframe.architectures.hidden.fold_hidden` applies;
:func:`stream_covariance` records the second moment of the stream the pre-norms read, whose principal
axes a rotation of the residual stream (SliceGPT) keeps; :func:`stream_point_covariances` records one
per point of the stream, for a basis at each.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from pruneframe.architectures.base import ArchitectureAdapter
from pruneframe.architectures.hidden import norm_correction, norm_names
from pruneframe.pipeline.units import UnitKind
from pruneframe.util.blockwise import float64_blocks
from pruneframe.toolkit.collect import Moments, batches
from pruneframe.toolkit.distributed import summed

__all__ = ["norm_input_energy", "norm_factors", "stream_covariance", "stream_point_covariances"]


def _run_decoder(model: nn.Module, windows: torch.Tensor, batch_size: int, progress: bool, desc: str) -> None:
    """Every window through ``model``'s decoder (hooks record what they need), without a cache."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        total = -(-len(windows) // batch_size)
        for batch in tqdm(batches(windows, batch_size), total=total, desc=desc, disable=not progress, leave=False):
            model.get_decoder()(input_ids=batch.to(device), use_cache=False)


def norm_input_energy(
    adapter: ArchitectureAdapter, model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Per norm on the hidden dimension (by module name), the mean square of its input per channel (float64)."""
    norms = norm_names(adapter, model)
    moments = {name: Moments.empty(int(model.config.hidden_size)) for name in norms}
    handles = []
    for name, module in norms.items():
        handles.append(module.register_forward_pre_hook(lambda _m, args, acc=moments[name]: acc.add(args[0])))
    try:
        _run_decoder(model, windows, batch_size, progress, "norm energies")
    finally:
        for handle in handles:
            handle.remove()
    return {name: m.mean_square().cpu() for name, m in moments.items()}


def norm_factors(energies: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, float]:
    """Per norm, ``sqrt(f * d / d')`` for the kept channels ``keep`` (:func:`~pruneframe.architectures.hidden.norm_correction`)."""
    return {name: norm_correction(energy, keep) for name, energy in energies.items()}


class _Gram:
    """Running ``sum x^T x`` over tokens ``x`` (float64), each rescaled to unit root mean square with ``unit_rms``."""

    def __init__(self, features: int, unit_rms: bool = True) -> None:
        self.count = 0
        self.unit_rms = unit_rms
        self.gram = torch.zeros(features, features, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1])
        device = flat.device if flat.device.type in ("cpu", "cuda") else torch.device("cpu")
        self.gram = self.gram.to(device)
        self.count += flat.shape[0]
        for _, block in float64_blocks(flat, 0, device=device):
            if self.unit_rms:
                block = block * torch.rsqrt(block.square().mean(-1, keepdim=True).clamp_min(1e-30))
            self.gram += block.T @ block


def stream_covariance(adapter: ArchitectureAdapter, model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4, progress: bool = True) -> torch.Tensor:
    """The second moment of the residual stream as the layers read it, ``[d, d]`` float64 on the CPU.

    Recorded at the input of every block's pre-norm and of the final norm, each token's vector rescaled
    to unit root mean square first (a norm's output depends only on that direction, and the stream grows
    with depth, so raw vectors would let the last layers decide the axes alone); every site and token
    counts once. Summed over ``torchrun`` ranks.
    """
    norms = [adapter.final_norm(model)]
    for layer in adapter.layer_slices(model):
        norms += [n for kind in (UnitKind.KV, UnitKind.FFN) if (n := adapter.input_norm(layer, kind)) is not None]
    acc = _Gram(int(model.config.hidden_size))
    handles = [norm.register_forward_pre_hook(lambda _m, args: acc.add(args[0])) for norm in norms]
    try:
        _run_decoder(model, windows, batch_size, progress, "stream covariance")
    finally:
        for handle in handles:
            handle.remove()
    count = float(summed(torch.tensor(float(acc.count), dtype=torch.float64)))
    return (summed(acc.gram) / max(count, 1.0)).cpu()


def stream_point_covariances(
    adapter: ArchitectureAdapter, model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4, progress: bool = True
) -> list[torch.Tensor]:
    """The raw second moment ``E[x^T x]`` of the stream at each of its ``2L + 1`` points, ``[d, d]`` float64 on the CPU.

    Point ``2l`` is layer ``l``'s attention input, ``2l + 1`` its MLP input (the inputs of their
    pre-norms), ``2L`` the final norm's input (the order of
    :class:`~pruneframe.architectures.rotation.StreamBases`). Raw vectors, as SliceGPT takes each
    layer's inputs: the residual connections carry them unnormalised. Holds ``2L + 1`` matrices of
    ``d x d`` (float64) where the activations live; summed over ``torchrun`` ranks.

    Raises:
        ValueError: a layer lacks the pre-norm of one of its blocks (a point would go unrecorded).
    """
    norms = []
    for layer in adapter.layer_slices(model):
        for kind in (UnitKind.KV, UnitKind.FFN):
            norm = adapter.input_norm(layer, kind)
            if norm is None:
                raise ValueError(f"layer {layer.index} has no {kind.name} pre-norm: its stream point cannot be recorded")
            norms.append(norm)
    norms.append(adapter.final_norm(model))
    accs = [_Gram(int(model.config.hidden_size), unit_rms=False) for _ in norms]
    handles = [norm.register_forward_pre_hook(lambda _m, args, acc=acc: acc.add(args[0])) for norm, acc in zip(norms, accs)]
    try:
        _run_decoder(model, windows, batch_size, progress, "stream covariances")
    finally:
        for handle in handles:
            handle.remove()
    return [(summed(acc.gram) / max(float(summed(torch.tensor(float(acc.count), dtype=torch.float64))), 1.0)).cpu() for acc in accs]
