"""Least-squares refit of kept down_proj columns: the math (property-tested) and its collection."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import tiny_model, tokens

from pruneframe.architectures import discover, layer_slices as layer_modules
from pruneframe.toolkit.gates import gated
from pruneframe.toolkit.refit import ffn_input_moments, ridge_refit_columns
from pruneframe.pipeline.units import UnitKind


def _problem(seed: int, out: int, n: int, tokens_: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, n, generator=g, dtype=torch.float64)
    mix = torch.randn(n, n, generator=g, dtype=torch.float64)  # correlated activations
    a = torch.randn(tokens_, n, generator=g, dtype=torch.float64) @ mix
    return w, a, a.T @ a


def _error(w: torch.Tensor, w_new: torch.Tensor, a: torch.Tensor, keep: torch.Tensor) -> float:
    return float(((a @ w.T) - (a[:, keep] @ w_new[:, keep].T)).pow(2).sum())


@settings(deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 12), drop=st.integers(1, 11), damping=st.floats(1e-4, 10.0))
def test_refit_never_increases_the_reconstruction_error(seed: int, n: int, drop: int, damping: float) -> None:
    """The ridge objective at its minimiser is <= at the original columns, so the error can only drop."""
    w, a, h = _problem(seed, out=5, n=n, tokens_=3 * n)
    keep = torch.ones(n, dtype=torch.bool)
    keep[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(drop, n - 1)]] = False
    refit = ridge_refit_columns(w, h, keep, damping)
    assert _error(w, refit, a, keep) <= _error(w, w, a, keep) * (1 + 1e-9) + 1e-9
    torch.testing.assert_close(refit[:, ~keep], w[:, ~keep], atol=0, rtol=0)


def test_refit_recovers_dropped_channels_that_are_combinations_of_kept_ones() -> None:
    g = torch.Generator().manual_seed(0)
    kept = torch.randn(200, 4, generator=g, dtype=torch.float64)
    a = torch.cat([kept, kept @ torch.randn(4, 2, generator=g, dtype=torch.float64)], dim=1)
    w = torch.randn(3, 6, generator=g, dtype=torch.float64)
    keep = torch.tensor([True] * 4 + [False] * 2)
    refit = ridge_refit_columns(w, a.T @ a, keep, damping=1e-9)
    assert _error(w, w, a, keep) > 1.0
    assert _error(w, refit, a, keep) < 1e-6 * _error(w, w, a, keep)


def test_refit_with_everything_kept_is_the_identity_and_bad_inputs_are_named() -> None:
    w, _, h = _problem(1, out=4, n=6, tokens_=30)
    keep = torch.ones(6, dtype=torch.bool)
    torch.testing.assert_close(ridge_refit_columns(w, h, keep, 0.01), w)
    with pytest.raises(ValueError, match="damping"):
        ridge_refit_columns(w, h, keep, 0.0)
    with pytest.raises(ValueError, match="shapes"):
        ridge_refit_columns(w, h[:5, :5], keep, 0.01)


def test_moments_are_of_the_ungated_activation_under_the_mask() -> None:
    """Collected moments equal those recomputed by hand from down_proj's input before the gate."""
    model = tiny_model("llama-gqa")
    units = discover(model)
    mask = torch.ones(len(units), dtype=torch.bool)
    mask[units.slice(0, UnitKind.FFN).start] = False  # layer 0 loses a channel: changes layer 1's input
    ids = tokens(2, 8)
    moments = ffn_input_moments(model, units, mask, ids)
    mods = layer_modules(model)
    seen: list[torch.Tensor] = []
    handle = mods[1].down_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()), prepend=True)
    try:
        with torch.no_grad(), gated(model, units, mask):
            for row in ids:
                model(input_ids=row[None])
    finally:
        handle.remove()
    a = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]).double()
    torch.testing.assert_close(moments[1], a.T @ a, rtol=1e-5, atol=1e-6)
    # the masked channel of layer 0 still appears in layer 0's moments (ungated), and no hooks remain
    assert moments[0][0, 0] > 0
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
