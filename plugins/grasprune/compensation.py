"""Optional mean-bias compensation for GRASPrune's stage B (off by default).

A removed channel's average contribution is a constant; adding it back as an output bias (as FLAP
does) removes the mean shift pruning causes, so stage B's scales only fit what varies. The means
are taken on the dense model over the stage-B calibration sequences.
"""

from __future__ import annotations

import torch
from torch import nn

from pruneframe.architectures import unit_indices
from pruneframe.toolkit.collect import collect_input_moments, mean_contribution
from pruneframe.pipeline.units import UnitKind, UnitSet

__all__ = ["mean_projection_inputs", "compensation_bias"]


def mean_projection_inputs(
    model: nn.Module, windows: torch.Tensor, progress: bool = False, stream_device: torch.device | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the mean input of down_proj and of o_proj over every token of ``windows``.

    With ``stream_device`` the pass runs one decoder layer at a time there.
    """
    moments = collect_input_moments(
        model,
        windows,
        {"down_proj": lambda m: m.down_proj, "o_proj": lambda m: m.o_proj},
        batch_size=1,
        progress=progress,
        desc="grasprune means",
        streaming=stream_device is not None,
        device=stream_device,
    )
    return [m.mean().cpu() for m in moments["down_proj"]], [m.mean().cpu() for m in moments["o_proj"]]


def compensation_bias(
    model: nn.Module, units: UnitSet, mask: torch.Tensor, mlp_mean: list[torch.Tensor], attn_mean: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[layers, hidden]`` biases: each removed unit's weight columns times its mean input."""
    mods = units.layer_slices(model)
    mask = mask.bool().cpu()
    mlp_bias = torch.zeros(units.num_layers, units.hidden_size)
    attn_bias = torch.zeros(units.num_layers, units.hidden_size)
    for i, m in enumerate(mods):
        gone = torch.nonzero(~mask[units.slice(i, UnitKind.FFN)]).flatten()
        mlp_bias[i] = mean_contribution(m.down_proj.weight, mlp_mean[i], gone).float()
        gone_kv = torch.nonzero(~mask[units.slice(i, UnitKind.KV)]).flatten()
        cols = unit_indices(gone_kv, m.queries_per_group * m.head_dim)
        attn_bias[i] = mean_contribution(m.o_proj.weight, attn_mean[i], cols).float()
    return mlp_bias, attn_bias
