"""Closed-form least-squares refit of the kept down_proj columns after FFN channels are removed.

With ``a`` a token's full FFN activation (the input of down_proj) and ``W`` the dense down_proj
weight, the dense output is ``W a``. Removing channels leaves ``W_k a_k``; the refit chooses new kept
columns ``W'`` minimising the summed squared error over calibration tokens, ridge-damped towards the
original columns:

    W' = (W H[:, k] + lam W_k) (H[k, k] + lam I)^-1,    H = sum over tokens of a a^T,

so the removed channels' output is predicted from the kept ones (their correlation), not just dropped.
``lam = damping * mean(diag(H[k, k]))``. The activations are taken from the *pruned* model (mask
applied upstream), so each layer is refit on the inputs it will actually see.
"""

from __future__ import annotations

import torch
from torch import nn

from pruneframe.toolkit.collect import SecondMoments, collect_layer_inputs
from pruneframe.toolkit.gates import gated
from pruneframe.pipeline.methods import Recalibration
from pruneframe.pipeline.units import UnitKind, UnitSet

__all__ = ["ridge_refit_columns", "ffn_input_moments", "refit_down_proj"]


def ridge_refit_columns(weight: torch.Tensor, moments: torch.Tensor, keep: torch.Tensor, damping: float = 0.01) -> torch.Tensor:
    """``weight`` with its kept columns replaced by the ridge least-squares refit (pure function).

    Args:
        weight: ``[out, n]`` dense weight.
        moments: ``[n, n]`` second moments ``sum a a^T`` of the inputs (symmetric, PSD).
        keep: bool ``[n]``, the kept input channels.
        damping: ridge strength relative to the mean kept diagonal; must be > 0.

    Returns a new ``[out, n]`` tensor (dtype of ``weight``); dropped columns are copied unchanged.
    """
    if damping <= 0:
        raise ValueError(f"damping must be > 0, got {damping}")
    n = weight.shape[1]
    if moments.shape != (n, n) or keep.shape != (n,):
        raise ValueError(f"shapes: weight {tuple(weight.shape)}, moments {tuple(moments.shape)}, keep {tuple(keep.shape)}")
    keep = keep.bool()
    out = weight.detach().clone()
    if not keep.any():
        return out
    w = weight.detach().double()
    h = moments.double()
    h_kk = h[keep][:, keep]
    lam = damping * float(h_kk.diagonal().mean().clamp_min(1e-12))
    rhs = w @ h[:, keep] + lam * w[:, keep]
    system = h_kk + lam * torch.eye(h_kk.shape[0], dtype=h.dtype)
    factor = torch.linalg.cholesky(system)
    out[:, keep] = torch.cholesky_solve(rhs.T, factor).T.to(out.dtype)
    return out


def ffn_input_moments(
    model: nn.Module,
    units: UnitSet,
    mask: torch.Tensor,
    windows: torch.Tensor,
    progress: bool = False,
    bias: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    stream_device: torch.device | None = None,
) -> list[torch.Tensor]:
    """Per layer, ``sum a a^T`` (float64) of down_proj's ungated input with ``mask`` applied as gates.

    Args:
        windows: ``[num, seq_len]`` token ids, one forward each.
        bias: optional ``(mlp_bias, attn_bias)`` set on the gates while collecting.
        stream_device: run the pass one decoder layer at a time there (None: the model runs where it is).
    """
    device = next(model.parameters()).device
    with gated(model, units, mask.to(device), Recalibration(mlp_bias=bias[0], attn_bias=bias[1])):
        stats = collect_layer_inputs(
            model,
            windows,
            {"down_proj": lambda m: m.down_proj},
            SecondMoments.empty,
            batch_size=1,
            progress=progress,
            desc="refit moments",
            adapter=units.adapter,
            streaming=stream_device is not None,
            device=stream_device,
        )
    return [acc.total for acc in stats["down_proj"]]


def refit_down_proj(model: nn.Module, units: UnitSet, mask: torch.Tensor, moments: list[torch.Tensor], damping: float = 0.01) -> list[torch.Tensor]:
    """Per layer, the refit down_proj weight for ``mask`` (see :func:`ridge_refit_columns`)."""
    mask = mask.bool().cpu()
    out = []
    for i, m in enumerate(units.layer_slices(model)):
        keep = mask[units.slice(i, UnitKind.FFN)]
        w = m.down_proj.weight.detach()
        out.append(ridge_refit_columns(w.cpu(), moments[i], keep, damping).to(w.device))
    return out
