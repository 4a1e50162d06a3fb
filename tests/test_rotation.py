"""Rotating the residual stream (norm fusion, change of basis) and SliceGPT built on it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from pruneframe import load_pruned
from pruneframe.architectures import adapter_for
from pruneframe.architectures.hidden import head_is_tied, hidden_cost_model
from pruneframe.architectures.rotation import diagonal_miss, fuse_input_norms, principal_basis, rotate_hidden, unfusable_norms
from pruneframe.pipeline.session import PruneSession
from pruneframe.testing import FAMILIES, tiny_model, tokens
from pruneframe.toolkit.hidden_stats import stream_covariance

FAST = {"num_windows": 4, "seq_len": 16, "batch_size": 2, "norm_windows": 2, "norm_seq_len": 16}


def _orthogonal(d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=g))
    return q


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _unfusable(model: torch.nn.Module) -> set[str]:
    """Norms a rotation can only approximate: the final norm before a tied head, and post-norms."""
    names = {"model.norm"} if head_is_tied(model) else set()
    for i, layer in enumerate(model.model.layers):
        names |= {f"model.layers.{i}.{n}" for n in ("post_feedforward_layernorm",) if hasattr(layer, n)}
        if hasattr(layer, "pre_feedforward_layernorm"):  # sandwich: post_attention_layernorm follows attention
            names.add(f"model.layers.{i}.post_attention_layernorm")
    return names


@pytest.mark.parametrize("untie", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_fusion_keeps_the_function_and_rotation_is_exact_where_every_norm_fused(family: str, untie: bool) -> None:
    model, ids = tiny_model(family), tokens(2, 12)
    adapter = adapter_for(model)
    tied = head_is_tied(model)
    dense = _logits(model, ids)
    fuse_input_norms(adapter, model, untie=untie)
    torch.testing.assert_close(_logits(model, ids), dense, rtol=0, atol=1e-5)
    assert head_is_tied(model) == (tied and not untie) and model.config.tie_word_embeddings == head_is_tied(model)
    missed = rotate_hidden(adapter, model, _orthogonal(model.config.hidden_size))
    expected = _unfusable(model) if not untie else _unfusable(model) - {"model.norm"}
    assert set(missed) == expected and set(unfusable_norms(adapter, model)) == _unfusable(model) - {"model.norm"}
    if not missed:
        torch.testing.assert_close(_logits(model, ids), dense, rtol=0, atol=1e-5)
    else:
        assert all(0 < share < 1 for share in missed.values())


def test_rotating_by_the_identity_changes_nothing_even_without_fusion() -> None:
    model, ids = tiny_model("gemma3"), tokens(2, 12)
    dense = _logits(model, ids)
    assert rotate_hidden(adapter_for(model), model, torch.eye(48, dtype=torch.float64)).keys() == _unfusable(model) | {
        f"model.layers.{i}.{n}" for i in range(3) for n in ("input_layernorm", "pre_feedforward_layernorm")
    }
    torch.testing.assert_close(_logits(model, ids), dense, rtol=0, atol=1e-5)


def test_a_rotation_that_is_not_orthogonal_or_square_is_refused() -> None:
    model = tiny_model("llama-gqa")
    with pytest.raises(ValueError, match="must be \\[48, 48\\]"):
        rotate_hidden(adapter_for(model), model, torch.eye(47))
    with pytest.raises(ValueError, match="not orthogonal"):
        rotate_hidden(adapter_for(model), model, 2 * torch.eye(48))


@settings(max_examples=60, deadline=None)
@given(d=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_diagonal_miss_matches_the_rotated_matrix(d: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(d, dtype=torch.float64, generator=g) * 3
    q = _orthogonal(d, seed)
    full = q.T @ torch.diag(scale) @ q
    diagonal, miss = diagonal_miss(scale, q)
    torch.testing.assert_close(diagonal, torch.diagonal(full))
    off = full - torch.diag(torch.diagonal(full))
    assert miss == pytest.approx(float(off.norm() / full.norm()), abs=1e-9)
    assert diagonal_miss(torch.full((d,), 1.7, dtype=torch.float64), q)[1] == pytest.approx(0.0, abs=1e-6)
    assert diagonal_miss(scale, torch.eye(d, dtype=torch.float64))[1] == pytest.approx(0.0, abs=1e-9)


def test_principal_basis_is_orthonormal_descending_and_reconstructs_the_covariance() -> None:
    x = torch.randn(200, 6, dtype=torch.float64) * torch.tensor([5.0, 1, 3, 0.1, 2, 0.5], dtype=torch.float64)
    cov = x.T @ x / 200
    values, vectors = principal_basis(cov)
    assert bool((values[:-1] >= values[1:]).all())
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(vectors @ torch.diag(values) @ vectors.T, cov)


def test_stream_covariance_is_the_second_moment_of_unit_rms_tokens() -> None:
    model = tiny_model("llama-gqa")
    cov = stream_covariance(adapter_for(model), model, tokens(3, 16), batch_size=2, progress=False)
    assert cov.shape == (48, 48) and cov.dtype == torch.float64
    torch.testing.assert_close(cov, cov.T)
    assert float(torch.trace(cov)) == pytest.approx(48.0, rel=1e-9)  # every token rescaled to mean square 1
    assert float(torch.linalg.eigvalsh(cov).min()) > -1e-9


@pytest.mark.parametrize("family", ["llama-gqa", "qwen3", "phi3", "llama-mha-bias"])
def test_slicegpt_keeping_every_channel_is_the_dense_model(family: str) -> None:
    """Untied families: a tied one cannot keep every channel within the dense count once its head is untied."""
    model, ids = tiny_model(family), tokens(2, 12)
    dense = _logits(model, ids)
    result = PruneSession(model, "slicegpt", 1.0, {**FAST, "hidden_keep": 1.0}).run(tokens(8, 32), progress=False)
    assert result.report.hidden_size == 48 and result.report.method_stats["rotation"]["norms_approximated"] == {}
    torch.testing.assert_close(_logits(result.model, ids), dense, rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gemma3"])
def test_slicegpt_meets_the_total_budget_exactly_with_every_unit_kept_and_reloads(family: str, tmp_path: Path) -> None:
    """A tied head comes back untied, and its matrix is part of what the budget counts."""
    model = tiny_model(family)
    dense = sum(p.numel() for p in model.parameters())
    tied = head_is_tied(model)
    session = PruneSession(model, "slicegpt", {"kind": "total", "keep": 0.7}, FAST)
    if tied:
        assert session.plan.costs.per_channel > hidden_cost_model(adapter_for(model), model).per_channel
    result = session.run(tokens(8, 32), progress=False)
    target = math.floor(0.7 * dense)
    report, folded = result.report, result.model
    assert bool(result.mask.all()) and report.hidden_size == folded.config.hidden_size < 48
    assert report.kept_params == sum(p.numel() for p in folded.parameters()) <= target
    assert session.plan.costs.total(report.hidden_size + session.plan.round_to, result.mask) > target
    assert not head_is_tied(folded) and report.method_stats["rotation"]["norms_approximated"] == {}
    ids = tokens(2, 12)
    expected = _logits(folded, ids)
    result.save(tmp_path / "ckpt")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()  # the family's own architecture
    torch.testing.assert_close(_logits(plain, ids), expected, rtol=0, atol=1e-5)
    reloaded, _ = load_pruned(tmp_path / "ckpt")
    torch.testing.assert_close(_logits(reloaded, ids), expected, rtol=0, atol=1e-5)


def test_slicegpt_config_is_typed() -> None:
    from pruneframe_baselines.slicegpt import SliceGPTConfig

    assert SliceGPTConfig().hidden_keep == "budget" and SliceGPTConfig(hidden_keep=0.7).hidden_keep == 0.7
    for bad in ({"hidden_keep": "half"}, {"hidden_keep": 0}, {"rotation": "pooled"}, {"num_windows": 0}, {"slicing": 0.3}):
        with pytest.raises(ValidationError):
            SliceGPTConfig(**bad)


def test_a_pipeline_of_a_hidden_method_delegates_its_hidden_scores_and_rotation() -> None:
    model = tiny_model("llama-gqa")
    result = PruneSession(model, "slicegpt+refit", {"kind": "total", "keep": 0.7}, {**FAST, "recalibration": {"num_windows": 2, "seq_len": 16}}).run(
        tokens(8, 32), progress=False
    )
    assert result.report.hidden_size < 48 and result.report.method_stats["rotation"]["norms_fused"] == 7
    assert result.report.kept_params == sum(p.numel() for p in result.model.parameters())


def test_slicegpt_refuses_a_family_with_post_norms_naming_them() -> None:
    with pytest.raises(ValueError, match="slicegpt.*rotates the residual stream.*model.layers.0.post_attention_layernorm"):
        PruneSession(tiny_model("gemma3"), "slicegpt", {"kind": "total", "keep": 0.7}, FAST)
