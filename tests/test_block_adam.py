"""BlockAdam: Adam with one second moment per block of gate scores."""

from __future__ import annotations

import pytest
import torch

from pruneframe_grasprune.optim import BlockAdam


def _run(opt_factory, grads: list[torch.Tensor]) -> torch.Tensor:
    x = torch.zeros(grads[0].shape, dtype=torch.float64, requires_grad=True)
    opt = opt_factory([x])
    for g in grads:
        x.grad = g.clone()
        opt.step()
    return x.detach()


def test_one_block_per_coordinate_is_adam() -> None:
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(7, generator=g, dtype=torch.float64) for _ in range(5)]
    want = _run(lambda p: torch.optim.Adam(p, lr=0.1, betas=(0.9, 0.99), eps=1e-8), grads)
    got = _run(lambda p: BlockAdam(p, torch.arange(7), lr=0.1, betas=(0.9, 0.99), eps=1e-8), grads)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_shared_block_keeps_relative_magnitudes() -> None:
    """A constant gradient: Adam moves every coordinate by lr; a shared block moves them in proportion."""
    grad = torch.tensor([1.0, 0.1, -2.0, 4.0, 0.5], dtype=torch.float64)
    blocks = torch.tensor([0, 0, 0, 1, 1])
    got = _run(lambda p: BlockAdam(p, blocks, lr=0.1, eps=0.0), [grad] * 3)
    rms = torch.tensor([(1 + 0.01 + 4) / 3, (16 + 0.25) / 2], dtype=torch.float64).sqrt()
    torch.testing.assert_close(got, -3 * 0.1 * grad / rms[blocks], atol=1e-12, rtol=1e-10)
    adam = _run(lambda p: torch.optim.Adam(p, lr=0.1, eps=0.0), [grad] * 3)
    torch.testing.assert_close(adam, -0.3 * grad.sign(), atol=1e-12, rtol=1e-10)


def test_rejects_shapes_it_cannot_serve() -> None:
    with pytest.raises(ValueError, match="one 1-D tensor"):
        BlockAdam([torch.zeros(3, requires_grad=True)], torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="one 1-D tensor"):
        BlockAdam([torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)], torch.zeros(3, dtype=torch.long))
