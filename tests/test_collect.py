"""The core input-statistics collector: accumulators agree, hooks are removed, batching is irrelevant."""

from __future__ import annotations

import pytest
import torch
from tiny import on_ranks, tiny_model, tokens

from pruneframe.architectures import layer_slices as layer_modules
from pruneframe.toolkit.collect import Moments, SecondMoments, collect_input_moments, collect_layer_inputs

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


DOWN = {"down_proj": lambda m: m.down_proj}


def _statistics(windows: torch.Tensor) -> dict:
    """Moments and second moments of down_proj's input, and the Wanda-sp and FLAP masks, on this rank."""
    import pruneframe

    model = tiny_model()
    diag = collect_input_moments(model, windows, DOWN, batch_size=1, progress=False)["down_proj"]
    full = collect_layer_inputs(model, windows, DOWN, SecondMoments.empty, progress=False)["down_proj"]
    masks = {
        name: pruneframe.prune(tiny_model(), name, 0.5, calibration=windows, config={"num_windows": 3, "seq_len": 10, "batch_size": 1}, progress=False).mask
        for name in ("wanda-sp", "flap")
    }
    return {
        "count": [m.count for m in diag],
        "total": [m.total for m in diag],
        "total_sq": [m.total_sq for m in diag],
        "full_count": [f.count for f in full],
        "full": [f.total for f in full],
        "masks": masks,
    }


@pytest.mark.ranks
def test_ranks_share_the_windows_and_merge_to_the_single_process_statistics(tmp_path) -> None:
    windows = tokens(3, 10)  # 3 windows on 2 ranks: 2 and 1
    single = _statistics(windows)
    for got in on_ranks(2, tmp_path, _statistics, windows):
        assert got["count"] == single["count"] == [windows.numel()] * len(single["count"])  # all tokens, every rank
        assert got["full_count"] == single["full_count"]
        for key in ("total", "total_sq", "full"):
            for a, b in zip(got[key], single[key], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        for name, mask in got["masks"].items():
            assert torch.equal(mask, single["masks"][name]), name


@pytest.mark.parametrize("max_elements", [1, 7, 1 << 22])
def test_column_sums_of_equals_the_whole_weight_reduction(max_elements: int) -> None:
    """Block by block, the column sums are those of the whole float64 weight, each block seeing its own columns."""
    from pruneframe.toolkit.collect import column_sums_of

    weight = torch.randn(5, 11, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    w = weight.double()
    scale = torch.arange(11, dtype=torch.float64)
    torch.testing.assert_close(column_sums_of(weight, lambda b, _: b.square(), max_elements=max_elements), w.square().sum(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        column_sums_of(weight, lambda b, cols: b.abs() * scale[cols][None, :], max_elements=max_elements), (w.abs() * scale[None, :]).sum(0), rtol=1e-12, atol=0
    )
