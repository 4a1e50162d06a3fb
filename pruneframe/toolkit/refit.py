"""Closed-form least-squares refit of the kept down_proj columns after FFN channels are removed.

With ``a`` a token's full FFN activation (the input of down_proj) and ``W`` the dense down_proj
weight, the dense output is ``W a``. Removing channels leaves ``W_k a_k``; the refit chooses new kept
columns ``W'`` minimising the summed squared error over calibration tokens, ridge-damped towards the
original columns:

    W' = (W H[:, k] + lam W_k) (H[k, k] + lam I)^-1,    H = sum over tokens of a a^T,

so the removed channels' output is predicted from the kept ones (their correlation), not just dropped.
``lam = damping * mean(diag(H[k, k]))``. The activations are taken from the *pruned* model (mask
applied upstream), so each layer is refit on the inputs it will actually see.

:func:`sequential_refit` does this for both projections that read units, one decoder layer at a time:
o_proj over the kept heads, then down_proj over the kept FFN channels, each on the activations the
already pruned *and refit* layers before it produce, so an error made upstream is seen, and partly
undone, downstream instead of compounding. Per layer it runs the calibration hidden states through
the layer three times (to o_proj's input with the layer dense; to down_proj's input with the layer's
heads cut and its o_proj refit; through the whole pruned, refit layer for the next one) and holds one
Gram matrix at a time.
"""

from __future__ import annotations

import torch
from torch import nn

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

from pruneframe.pipeline.methods import Recalibration
from pruneframe.pipeline.units import UnitKind, UnitSet
from pruneframe.toolkit.collect import SecondMoments, batches, collect_layer_inputs
from pruneframe.toolkit.gates import UnitGates, gated
from pruneframe.toolkit.streaming import LayerCall, capture_layer_calls, on_device
from pruneframe.util.devices import model_device

__all__ = ["ridge_refit_columns", "ffn_input_moments", "refit_down_proj", "sequential_refit"]


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
    keep = keep.bool().to(weight.device)
    out = weight.detach().clone()
    if not keep.any():
        return out
    w = weight.detach().double()
    h = moments.to(weight.device).double()
    h_kk = h[keep][:, keep]
    lam = damping * float(h_kk.diagonal().mean().clamp_min(1e-12))
    rhs = w @ h[:, keep] + lam * w[:, keep]
    system = h_kk + lam * torch.eye(h_kk.shape[0], dtype=h.dtype, device=h.device)
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


class _Reached(Exception):
    """Raised by a hook once the input it records has been seen: the rest of the layer is not needed."""


@contextmanager
def _swapped(linear: nn.Linear, weight: torch.Tensor) -> Iterator[None]:
    saved = linear.weight.data
    linear.weight.data = weight.to(saved)
    try:
        yield
    finally:
        linear.weight.data = saved


def _input_gram(linear: nn.Linear, run: Callable[[], None]) -> torch.Tensor:
    """``sum x x^T`` of ``linear``'s input over one ``run`` (stopped at ``linear``), summed over ranks."""
    acc = SecondMoments.empty(linear.in_features)

    def record(_module: nn.Module, args: tuple) -> None:
        acc.add(args[0])
        raise _Reached

    handle = linear.register_forward_pre_hook(record)
    try:
        run()
    finally:
        handle.remove()
    acc.merge_ranks()
    return acc.total


def _kept_columns(linear: nn.Linear, columns: torch.Tensor) -> torch.Tensor:
    keep = torch.zeros(linear.in_features, dtype=torch.bool)
    keep[columns.cpu()] = True
    return keep


@torch.no_grad()
def sequential_refit(
    model: nn.Module,
    units: UnitSet,
    mask: torch.Tensor,
    windows: torch.Tensor,
    *,
    damping: float = 0.01,
    batch_size: int = 4,
    device: torch.device | None = None,
    progress: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the refit o_proj and down_proj weights for ``mask`` (full shapes; see the module docstring).

    Args:
        model: the dense model (left unchanged).
        units: its units; ``mask`` is one bool per unit.
        windows: ``[num, seq_len]`` calibration token ids.
        damping: ridge strength relative to the mean kept diagonal of each Gram matrix.
        batch_size: windows per layer call.
        device: where each layer runs (it is moved there and back: a layer-streamed pass); ``None``:
            where the model is.
        progress: show a bar over the layers.
    """
    mask = mask.bool().cpu()
    adapter = units.require_adapter()
    device = torch.device(device) if device is not None else model_device(model)
    layers = adapter.decoder_layers(model)
    slices = units.layer_slices(model)
    embed_device = model.get_input_embeddings().weight.device
    captured = [capture_layer_calls(model, layers, b.to(embed_device), device) for b in batches(windows, batch_size)]
    hidden = [h for h, _ in captured]
    calls: list[list[LayerCall]] = [c for _, c in captured]
    del captured
    o_new: list[torch.Tensor] = []
    down_new: list[torch.Tensor] = []
    gates = UnitGates(model, units)

    def through(i: int, layer: nn.Module) -> None:
        for b in range(len(hidden)):
            try:
                calls[b][i](layer, hidden[b])
            except _Reached:
                pass

    with gates:
        for i, layer in enumerate(tqdm(layers, desc="refit layers", disable=not progress, leave=False)):
            ls = slices[i]
            ffn, kv = units.slice(i, UnitKind.FFN), units.slice(i, UnitKind.KV)
            o_keep = _kept_columns(ls.o_proj, ls.slice("o_proj").indices(torch.nonzero(mask[kv]).flatten()))
            down_keep = _kept_columns(ls.down_proj, ls.slice("down_proj").indices(torch.nonzero(mask[ffn]).flatten()))
            z = mask.float()
            with on_device(layer, device):
                z[ffn], z[kv] = 1.0, 1.0  # this layer dense: o_proj's full input
                gates.set(z.to(device))
                gram = _input_gram(ls.o_proj, lambda: through(i, layer))
                o_w = ridge_refit_columns(ls.o_proj.weight.detach(), gram, o_keep, damping)
                with _swapped(ls.o_proj, o_w):
                    z[kv] = mask[kv].float()  # its heads cut, o_proj refit: down_proj's full input
                    gates.set(z.to(device))
                    gram = _input_gram(ls.down_proj, lambda: through(i, layer))
                    down_w = ridge_refit_columns(ls.down_proj.weight.detach(), gram, down_keep, damping)
                    del gram
                    with _swapped(ls.down_proj, down_w):
                        gates.set(mask.float().to(device))
                        hidden = [calls[b][i](layer, hidden[b]) for b in range(len(hidden))]
            o_new.append(o_w.to(ls.o_proj.weight.device))  # the layer is home again: where its weights live
            down_new.append(down_w.to(ls.down_proj.weight.device))
    return o_new, down_new
