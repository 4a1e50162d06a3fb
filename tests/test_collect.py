"""The core input-statistics collector: accumulators agree, hooks are removed, batching is irrelevant."""

from __future__ import annotations

import torch
from tiny import tiny_model, tokens

from pruneframe.architectures.llama import layer_modules
from pruneframe.collect import Moments, SecondMoments, collect_input_moments, collect_layer_inputs

TARGETS = {"down_proj": lambda m: m.down_proj, "o_proj": lambda m: m.o_proj}


def test_second_moments_diagonal_equals_diagonal_moments_and_hooks_are_removed() -> None:
    model, windows = tiny_model(), tokens(3, 10)
    diag = collect_input_moments(model, windows, TARGETS, progress=False)
    full = collect_layer_inputs(model, windows, TARGETS, SecondMoments.empty, batch_size=1, progress=False)
    for name in TARGETS:
        for d, f in zip(diag[name], full[name], strict=True):
            assert d.count == f.count == windows.numel()
            torch.testing.assert_close(f.total.diagonal(), d.total_sq, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(f.total, f.total.T)
    assert all(not m.down_proj._forward_pre_hooks and not m.o_proj._forward_pre_hooks for m in layer_modules(model))


def test_batch_size_does_not_change_the_moments() -> None:
    model, windows = tiny_model(), tokens(4, 8)
    one = collect_input_moments(model, windows, TARGETS, batch_size=1, progress=False)
    two = collect_input_moments(model, windows, TARGETS, batch_size=3, progress=False)
    for a, b in zip(one["down_proj"], two["down_proj"], strict=True):
        torch.testing.assert_close(a.mean(), b.mean(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.variance(), b.variance(), rtol=1e-4, atol=1e-6)


def test_moments_by_hand() -> None:
    m = Moments.empty(2)
    m.add(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    assert m.count == 2
    torch.testing.assert_close(m.mean(), torch.tensor([2.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(m.variance(), torch.tensor([2.0, 8.0], dtype=torch.float64))
    s = SecondMoments.empty(2)
    s.add(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    torch.testing.assert_close(s.total, torch.tensor([[10.0, 20.0], [20.0, 40.0]], dtype=torch.float64))
