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
Gram matrix at a time. That pass, with the rule applied to each projection left to the caller, is
:func:`sequential_solve` (SlimGPT's OBS pruning uses it with a rule that also chooses the kept units).
"""

from __future__ import annotations

import torch
from torch import nn

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

from pruneframe.architectures import WeightSlice
from pruneframe.pipeline.methods import Recalibration
from pruneframe.pipeline.units import UnitKind, UnitSet
from pruneframe.toolkit.collect import SecondMoments, batches, collect_layer_inputs
from pruneframe.toolkit.gates import UnitGates, gated
from pruneframe.toolkit.streaming import LayerCall, capture_layer_calls, on_device
from pruneframe.util.devices import model_device

__all__ = ["LayerSolver", "ridge_refit_columns", "ffn_input_moments", "refit_down_proj", "sequential_refit", "sequential_solve"]


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


#: ``(layer index, the projection's unit slice, its weight, the Gram matrix of its input) -> (replacement
#: weight, kept units of the slice)``: what :func:`sequential_solve` asks of a caller for each projection.
LayerSolver = Callable[[int, WeightSlice, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def sequential_solve(
    model: nn.Module,
    units: UnitSet,
    windows: torch.Tensor,
    solve: LayerSolver,
    *,
    batch_size: int = 4,
    device: torch.device | None = None,
    progress: bool = False,
    desc: str = "layers",
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Per layer, replacement o_proj and down_proj weights chosen by ``solve`` on the pruned upstream's inputs.

    For every decoder layer in order: the Gram matrix ``sum x x^T`` of o_proj's input (the layer's own
    units dense) goes to ``solve``, which returns o_proj's replacement and the KV groups it keeps; then
    that of down_proj's input (the layer's KV groups cut as chosen, the new o_proj in place), likewise
    for the FFN channels; then the calibration hidden states run through the whole pruned layer with
    both replacements, which gives the next layer's inputs. The model is left unchanged.

    Args:
        model: the dense model.
        units: its units.
        windows: ``[num, seq_len]`` calibration token ids.
        solve: the per-projection rule (:data:`LayerSolver`); its weight argument is the current weight
            on the compute device, the Gram matrix float64 on the CPU.
        batch_size: windows per layer call.
        device: where each layer runs (it is moved there and back: a layer-streamed pass); ``None``:
            where the model is.
        progress: show a bar over the layers, labelled ``desc``.

    Returns:
        The o_proj weights, the down_proj weights (full shapes, where each layer's weights live) and
        the keep-mask ``solve`` chose (one bool per unit).
    """
    adapter = units.require_adapter()
    device = torch.device(device) if device is not None else model_device(model)
    layers = adapter.decoder_layers(model)
    slices = units.layer_slices(model)
    embed_device = model.get_input_embeddings().weight.device
    captured = [capture_layer_calls(model, layers, b.to(embed_device), device) for b in batches(windows, batch_size)]
    hidden = [h for h, _ in captured]
    calls: list[list[LayerCall]] = [c for _, c in captured]
    del captured
    mask = torch.ones(len(units), dtype=torch.bool)
    o_new: list[torch.Tensor] = []
    down_new: list[torch.Tensor] = []
    gates = UnitGates(model, units)

    def through(i: int, layer: nn.Module) -> None:
        for b in range(len(hidden)):
            try:
                calls[b][i](layer, hidden[b])
            except _Reached:
                pass

    def kept(part: WeightSlice, keep: torch.Tensor) -> torch.Tensor:
        keep = keep.bool().cpu()
        if keep.shape != (part.units,):
            raise ValueError(f"a solver returned {tuple(keep.shape)} kept units for {part.name}, which has {part.units}")
        return keep

    with gates:
        for i, layer in enumerate(tqdm(layers, desc=desc, disable=not progress, leave=False)):
            ls = slices[i]
            ffn, kv = units.slice(i, UnitKind.FFN), units.slice(i, UnitKind.KV)
            z = torch.ones(len(units))  # only layer i runs below: the other layers' gates do not matter
            with on_device(layer, device):
                gates.set(z.to(device))  # this layer dense: o_proj's full input
                gram = _input_gram(ls.o_proj, lambda: through(i, layer))
                o_w, keep = solve(i, ls.slice("o_proj"), ls.o_proj.weight.detach(), gram)
                mask[kv] = kept(ls.slice("o_proj"), keep)
                with _swapped(ls.o_proj, o_w):
                    z[kv] = mask[kv].float()  # its heads cut, o_proj replaced: down_proj's full input
                    gates.set(z.to(device))
                    gram = _input_gram(ls.down_proj, lambda: through(i, layer))
                    down_w, keep = solve(i, ls.slice("down_proj"), ls.down_proj.weight.detach(), gram)
                    mask[ffn] = kept(ls.slice("down_proj"), keep)
                    del gram
                    with _swapped(ls.down_proj, down_w):
                        z[ffn] = mask[ffn].float()
                        gates.set(z.to(device))
                        hidden = [calls[b][i](layer, hidden[b]) for b in range(len(hidden))]
            o_new.append(o_w.to(ls.o_proj.weight.device))  # the layer is home again: where its weights live
            down_new.append(down_w.to(ls.down_proj.weight.device))
    return o_new, down_new, mask


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

    def solve(i: int, part: WeightSlice, weight: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = mask[units.slice(i, part.kind)]
        columns = _kept_columns(part.linear, part.indices(torch.nonzero(keep).flatten()))
        return ridge_refit_columns(weight, gram, columns, damping), keep

    o_new, down_new, _ = sequential_solve(model, units, windows, solve, batch_size=batch_size, device=device, progress=progress, desc="refit layers")
    return o_new, down_new
