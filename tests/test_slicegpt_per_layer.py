"""SliceGPT's per-layer rotations: a basis at every point of the stream and residual shortcut matrices.

The rotation alone keeps the function; sliced, the shortcuts are counted in the exact budget, saved
through the checkpoint's modeling code, reloaded exactly (pruneframe's loader and transformers'
``trust_remote_code``), and refused by the llama.cpp export with exit 2.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pruneframe import load_pruned
from pruneframe.architectures import adapter_for
from pruneframe.architectures.rotation import StreamBases, fuse_input_norms, principal_basis, rotate_stream, slice_shortcuts
from pruneframe.checkpoint.modeling_pruneframe import ResidualShortcut
from pruneframe.export import ExportRefused, plan_export
from pruneframe.pipeline.session import PruneSession
from pruneframe.testing import FAMILIES, tiny_model, tokens
from pruneframe.toolkit.hidden_stats import stream_point_covariances

FAST = {"num_windows": 4, "seq_len": 16, "batch_size": 2, "norm_windows": 2, "norm_seq_len": 16, "rotation": "per-layer"}
PRE_NORM = [f for f in FAMILIES if f != "gemma3"]


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _pca_bases(model: torch.nn.Module) -> StreamBases:
    covariances = stream_point_covariances(adapter_for(model), model, tokens(4, 16), batch_size=2, progress=False)
    return StreamBases(tuple(principal_basis(c)[1] for c in covariances))


@pytest.mark.parametrize("family", PRE_NORM)
def test_a_basis_per_stream_point_with_its_shortcuts_keeps_the_function(family: str) -> None:
    model, ids = tiny_model(family), tokens(2, 12)
    adapter, layers = adapter_for(model), model.config.num_hidden_layers
    dense = _logits(model, ids)
    bases = _pca_bases(model)
    assert len(bases.bases) == 2 * layers + 1 and bases.num_layers == layers
    fuse_input_norms(adapter, model, untie=True)
    rotate_stream(adapter, model, bases)
    torch.testing.assert_close(_logits(model, ids), dense, rtol=0, atol=1e-5)
    shortcuts = [m for m in model.modules() if isinstance(m, ResidualShortcut)]
    assert len(shortcuts) == 2 * layers and model.config.residual_shortcuts is True
    # each shortcut carries the stream from one basis to the next
    first = model.model.layers[0]
    torch.testing.assert_close(first.attn_shortcut.weight.double(), (bases.bases[0].T @ bases.bases[1]).float().double(), rtol=0, atol=1e-6)
    # a deep copy runs its own shortcuts, not the original's
    twin = copy.deepcopy(model)
    with torch.no_grad():
        first.attn_shortcut.weight.zero_()
    torch.testing.assert_close(_logits(twin, ids), dense, rtol=0, atol=1e-5)


def test_the_stream_points_are_the_block_and_final_norm_inputs() -> None:
    """Point 0 is what the first layer reads: the token embeddings themselves (raw, not rescaled)."""
    model = tiny_model("llama-gqa")
    windows = tokens(4, 16)
    covariances = stream_point_covariances(adapter_for(model), model, windows, batch_size=2, progress=False)
    embedded = model.get_input_embeddings()(windows).detach().double().reshape(-1, model.config.hidden_size)
    torch.testing.assert_close(covariances[0], embedded.T @ embedded / embedded.shape[0])
    assert all(c.shape == (48, 48) and torch.allclose(c, c.T) for c in covariances)


def test_rotate_stream_refuses_what_it_cannot_rotate_exactly() -> None:
    tied = tiny_model("qwen2")
    fuse_input_norms(adapter_for(tied), tied)  # the final norm stays: the head is tied
    with pytest.raises(ValueError, match="tied lm_head"):
        rotate_stream(adapter_for(tied), tied, _pca_bases(tied))
    model = tiny_model("llama-gqa")
    adapter = adapter_for(model)
    bases = _pca_bases(model)
    with pytest.raises(ValueError, match="per-channel scale; fuse it first"):
        rotate_stream(adapter, model, bases)
    fuse_input_norms(adapter, model, untie=True)
    with pytest.raises(ValueError, match="6 stream bases for 3 layers"):
        rotate_stream(adapter, model, StreamBases(bases.bases[:6]))
    with pytest.raises(ValueError, match="stream point 2: .*not orthogonal"):
        rotate_stream(adapter, model, StreamBases((*bases.bases[:2], 2 * bases.bases[2], *bases.bases[3:])))


@pytest.mark.parametrize("family", ["llama-gqa", "qwen2", "phi3"])
def test_per_layer_slicegpt_counts_its_shortcuts_in_the_exact_budget_and_reloads(family: str, tmp_path: Path) -> None:
    model = tiny_model(family)
    dense = sum(p.numel() for p in model.parameters())
    layers = model.config.num_hidden_layers
    session = PruneSession(model, "slicegpt", {"kind": "total", "keep": 0.7}, FAST)
    assert session.plan.costs.shortcuts == 2 * layers
    result = session.run(tokens(8, 32), progress=False)
    target, h = math.floor(0.7 * dense), result.report.hidden_size
    folded = result.model
    shortcut_params = sum(m.weight.numel() for m in folded.modules() if isinstance(m, ResidualShortcut))
    assert shortcut_params == 2 * layers * h * h and h == folded.config.hidden_size < 48
    assert result.report.kept_params == sum(p.numel() for p in folded.parameters()) == session.plan.costs.total(h, result.mask) <= target
    assert session.plan.costs.total(h + session.plan.round_to, result.mask) > target  # the next hidden block does not fit
    # without the shortcuts' count, the single rotation keeps a wider stream at the same budget
    single = PruneSession(tiny_model(family), "slicegpt", {"kind": "total", "keep": 0.7}, {**FAST, "rotation": "single"}).run(tokens(8, 32), progress=False)
    assert single.report.hidden_size > h

    ids = tokens(2, 12)
    expected = _logits(folded, ids)
    result.save(tmp_path / "ckpt")
    reloaded, _ = load_pruned(tmp_path / "ckpt")
    torch.testing.assert_close(_logits(reloaded, ids), expected, rtol=0, atol=1e-5)
    remote = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", trust_remote_code=True).eval()
    torch.testing.assert_close(_logits(remote, ids), expected, rtol=0, atol=1e-5)
    assert folded.generate(ids[:1, :4], max_new_tokens=4, do_sample=False).shape == (1, 8)


def test_slice_shortcuts_keeps_the_leading_block() -> None:
    model = tiny_model("llama-gqa")
    fuse_input_norms(adapter_for(model), model, untie=True)
    rotate_stream(adapter_for(model), model, _pca_bases(model))
    full = model.model.layers[1].mlp_shortcut.weight.detach().clone()
    assert slice_shortcuts(model, 16) == 6
    torch.testing.assert_close(model.model.layers[1].mlp_shortcut.weight.detach(), full[:16, :16], rtol=0, atol=0)


def test_llama_cpp_export_plan_refuses_a_model_with_shortcuts_naming_why() -> None:
    """The CLI's exit 2 for such a checkpoint: tests/test_export_gguf.py."""
    result = PruneSession(tiny_model("llama-gqa"), "slicegpt", {"kind": "total", "keep": 0.7}, FAST).run(tokens(8, 32), progress=False)
    with pytest.raises(ExportRefused, match="shortcut matrices.*rotation: single"):
        plan_export(result.model)
