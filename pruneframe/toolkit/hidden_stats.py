"""Statistics of the residual stream for cutting hidden channels: what each norm reads, per channel.

:func:`norm_input_energy` runs calibration windows through the model and records, for every norm on
the hidden dimension, the mean square of its input per channel; :func:`norm_factors` turns those
energies into the per-norm corrections :func:`~pruneframe.architectures.hidden.fold_hidden` applies.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from pruneframe.architectures.base import ArchitectureAdapter
from pruneframe.architectures.hidden import norm_correction, norm_names
from pruneframe.toolkit.collect import Moments, batches

__all__ = ["norm_input_energy", "norm_factors"]


def norm_input_energy(
    adapter: ArchitectureAdapter, model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Per norm on the hidden dimension (by module name), the mean square of its input per channel (float64)."""
    norms = norm_names(adapter, model)
    moments = {name: Moments.empty(int(model.config.hidden_size)) for name in norms}
    handles = []
    for name, module in norms.items():
        handles.append(module.register_forward_pre_hook(lambda _m, args, acc=moments[name]: acc.add(args[0])))
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            total = -(-len(windows) // batch_size)
            for batch in tqdm(batches(windows, batch_size), total=total, desc="norm energies", disable=not progress, leave=False):
                model.get_decoder()(input_ids=batch.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {name: m.mean_square().cpu() for name, m in moments.items()}


def norm_factors(energies: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, float]:
    """Per norm, ``sqrt(f * d / d')`` for the kept channels ``keep`` (:func:`~pruneframe.architectures.hidden.norm_correction`)."""
    return {name: norm_correction(energy, keep) for name, energy in energies.items()}
