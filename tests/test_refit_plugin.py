"""The ``refit`` recalibration: sequential ridge least squares of the kept o_proj and down_proj columns.

The least-squares math itself is property-tested in tests/test_refit.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pruneframe import load_pruned
from pruneframe.architectures import discover
from pruneframe.pipeline.methods import Recalibration
from pruneframe.pipeline.session import PruneSession
from pruneframe.testing import FAMILIES, tiny_model, tokens
from pruneframe.toolkit.gates import gated
from pruneframe.toolkit.refit import sequential_refit

REFIT = {"recalibration": {"num_windows": 4, "seq_len": 16, "batch_size": 2}}


def _last_hidden(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_on_the_calibration_tokens_the_refit_model_is_closer_to_dense_than_the_unrefit_mask(seed: int) -> None:
    model = tiny_model("llama-gqa")
    units = discover(model)
    ids = tokens(4, 24)
    mask = torch.rand(len(units), generator=torch.Generator().manual_seed(seed)) < 0.6
    dense = _last_hidden(model, ids)
    o_proj, down_proj = sequential_refit(model, units, mask, ids, damping=1e-3, batch_size=2)
    with gated(model, units, mask):
        plain = (_last_hidden(model, ids) - dense).square().sum()
    with gated(model, units, mask, Recalibration(o_proj=o_proj, down_proj=down_proj)):
        refit = (_last_hidden(model, ids) - dense).square().sum()
    assert float(refit) <= float(plain)


def test_with_every_unit_kept_the_refit_is_the_dense_weights() -> None:
    model = tiny_model("qwen2")
    units = discover(model)
    o_proj, down_proj = sequential_refit(model, units, torch.ones(len(units), dtype=torch.bool), tokens(4, 16), batch_size=2)
    for ls, o, d in zip(units.layer_slices(model), o_proj, down_proj, strict=True):
        torch.testing.assert_close(o, ls.o_proj.weight, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(d, ls.down_proj.weight, rtol=1e-4, atol=1e-5)


def test_the_dense_model_is_left_unchanged() -> None:
    model = tiny_model("llama-gqa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    units = discover(model)
    sequential_refit(model, units, torch.rand(len(units), generator=torch.Generator().manual_seed(1)) < 0.5, tokens(2, 16))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("family", FAMILIES)
def test_any_scorer_with_refit_folds_to_the_gated_model_and_reloads_exactly(family: str, tmp_path: Path) -> None:
    model = tiny_model(family)
    result = PruneSession(model, "magnitude+refit", 0.6, REFIT).run(tokens(8, 32), progress=False)
    assert_folds_to_the_gated_model_and_reloads(model, result, tmp_path)


def assert_folds_to_the_gated_model_and_reloads(model: torch.nn.Module, result, tmp_path: Path) -> None:  # noqa: ANN001 - a PruneResult
    """The folded model computes the dense model gated by the mask and recalibration; its checkpoint reloads to it (1e-5)."""
    ids = tokens(2, 12)
    with torch.no_grad(), gated(model, result.units, result.mask, result.recalibration):
        reference = model(ids).logits
    with torch.no_grad():
        folded = result.model(ids).logits
    torch.testing.assert_close(folded, reference, rtol=0, atol=1e-5)
    assert result.report.kept_params == sum(p.numel() for p in result.model.parameters())
    result.save(tmp_path / "ckpt")
    reloaded, _ = load_pruned(tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, folded, rtol=0, atol=1e-5)


def test_refit_composes_with_block_removal(tmp_path: Path) -> None:
    model = tiny_model("llama-gqa")
    result = PruneSession(model, "flap+refit@mixed", 0.4, {"num_windows": 4, "seq_len": 16, **REFIT}).run(tokens(8, 32), progress=False)
    ids = tokens(2, 12)
    with torch.no_grad(), gated(model, result.units, result.mask, result.recalibration):
        reference = model(ids).logits
    with torch.no_grad():
        torch.testing.assert_close(result.model(ids).logits, reference, rtol=0, atol=1e-5)
    assert result.report.method_stats["refit"]["tokens"] == 4 * 16
