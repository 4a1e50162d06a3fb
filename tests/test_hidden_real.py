"""Hidden channels (and the SliceGPT rotation) on real SmolLM2-135M weights: slow, run with PRUNEFRAME_SLOW=1.

The semantic check of the tiny models (tests/test_hidden_fold.py) on real weights: where no weight
writes the dropped channels, the fold with ``sqrt(d / d')`` norms computes the dense function; and a
real prune's checkpoint reloads to exactly the folded model's logits.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("PRUNEFRAME_SLOW") != "1", reason="loads a 135M-parameter model; set PRUNEFRAME_SLOW=1"),
]


def test_smollm2_hidden_fold_is_exact_and_a_minitron_checkpoint_reloads_exactly(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from pruneframe.architectures import adapter_for
    from pruneframe.architectures.hidden import fold_hidden, hidden_sites, norm_names
    from pruneframe.data import calibration_data
    from pruneframe.models.resolver import load_model
    from pruneframe.pipeline.session import PruneSession

    model, tokenizer = load_model("smollm2-135m", dtype="float32", device="cpu")
    adapter, d = adapter_for(model), model.config.hidden_size
    keep = torch.zeros(d, dtype=torch.bool)
    keep[torch.randperm(d, generator=torch.Generator().manual_seed(0))[:432]] = True
    ids = torch.tensor([tokenizer("The whale surfaced beside the ship, and the men cheered.").input_ids])
    silent = copy.deepcopy(model)
    with torch.no_grad():
        for site in hidden_sites(adapter, silent):
            if site.role in ("embedding", "output", "output_bias"):
                site.tensor.index_fill_(site.dim, (~keep).nonzero().flatten(), 0.0)
        for module in silent.modules():
            if isinstance(getattr(module, "variance_epsilon", None), float):
                module.variance_epsilon = 1e-12
        want = silent(ids).logits
    fold_hidden(adapter, silent, keep, dict.fromkeys(norm_names(adapter, silent), (d / 432) ** 0.5))
    with torch.no_grad():
        torch.testing.assert_close(silent(ids).logits, want, rtol=1e-4, atol=1e-3)

    calibration = calibration_data("embedded", tokenizer, max_tokens=8192)
    result = PruneSession(model, "minitron", {"kind": "total", "keep": 0.75}, {"num_windows": 8, "norm_windows": 4}).run(calibration, progress=False)
    assert result.model.config.hidden_size == result.report.hidden_size < d
    result.save(tmp_path / "ckpt", tokenizer=tokenizer)
    from pruneframe.checkpoint import load_pruned

    reloaded, _ = load_pruned(tmp_path / "ckpt")
    with torch.no_grad():
        expected = result.model(ids).logits
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=0, atol=1e-5)
    if result.report.removed_blocks is None and len({(w["ffn_channels"], w["kv_groups"]) for w in result.units.widths(result.mask)}) == 1:
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
        with torch.no_grad():
            torch.testing.assert_close(plain(ids).logits, expected, rtol=0, atol=1e-5)


def test_smollm2_rotation_without_slicing_keeps_the_function_once_the_head_is_untied_and_slicegpt_reloads(tmp_path: Path) -> None:
    """On real weights every norm fuses exactly once the tied head is untied; kept tied, its final norm is the one approximation."""
    from transformers import AutoModelForCausalLM

    from pruneframe.architectures import adapter_for
    from pruneframe.architectures.rotation import fuse_input_norms, rotate_hidden
    from pruneframe.data import calibration_data
    from pruneframe.models.resolver import load_model
    from pruneframe.pipeline.session import PruneSession

    model, tokenizer = load_model("smollm2-135m", dtype="float32", device="cpu")
    adapter, d = adapter_for(model), model.config.hidden_size
    ids = torch.tensor([tokenizer("The whale surfaced beside the ship, and the men cheered.").input_ids])
    rotated = copy.deepcopy(model)
    with torch.no_grad():
        want = model(ids).logits
        fuse_input_norms(adapter, rotated)
        torch.testing.assert_close(rotated(ids).logits, want, rtol=1e-4, atol=1e-3)
        q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
        tied = copy.deepcopy(rotated)
        assert set(rotate_hidden(adapter, tied, q)) == {"model.norm"}  # a tied head's final norm: the one approximation
        fuse_input_norms(adapter, rotated, untie=True)
        assert rotate_hidden(adapter, rotated, q) == {}
        torch.testing.assert_close(rotated(ids).logits, want, rtol=1e-4, atol=1e-3)

    calibration = calibration_data("embedded", tokenizer, max_tokens=8192)
    result = PruneSession(model, "slicegpt", {"kind": "total", "keep": 0.75}, {"num_windows": 8, "norm_windows": 4}).run(calibration, progress=False)
    assert result.model.config.hidden_size == result.report.hidden_size < d and bool(result.mask.all())
    result.save(tmp_path / "ckpt", tokenizer=tokenizer)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, result.model(ids).logits, rtol=0, atol=1e-5)


def test_smollm2_per_layer_rotations_keep_the_function_and_a_sliced_checkpoint_reloads(tmp_path: Path) -> None:
    """SliceGPT's own form on real weights: a basis per stream point with its shortcuts is the dense function;
    sliced, the checkpoint (modeling code and shortcut matrices) reloads to the same logits."""
    from transformers import AutoModelForCausalLM

    from pruneframe import load_pruned
    from pruneframe.architectures import adapter_for
    from pruneframe.architectures.rotation import StreamBases, fuse_input_norms, principal_basis, rotate_stream
    from pruneframe.data import calibration_data
    from pruneframe.models.resolver import load_model
    from pruneframe.pipeline.session import PruneSession
    from pruneframe.toolkit.hidden_stats import stream_point_covariances

    model, tokenizer = load_model("smollm2-135m", dtype="float32", device="cpu")
    adapter = adapter_for(model)
    ids = torch.tensor([tokenizer("The whale surfaced beside the ship, and the men cheered.").input_ids])
    calibration = calibration_data("embedded", tokenizer, max_tokens=8192)
    rotated = copy.deepcopy(model)
    with torch.no_grad():
        want = model(ids).logits
        covariances = stream_point_covariances(adapter, rotated, calibration.windows(4, 128), progress=False)
        fuse_input_norms(adapter, rotated, untie=True)
        rotate_stream(adapter, rotated, StreamBases(tuple(principal_basis(c)[1] for c in covariances)))
        torch.testing.assert_close(rotated(ids).logits, want, rtol=1e-4, atol=1e-3)

    config = {"rotation": "per-layer", "num_windows": 8, "norm_windows": 4}
    result = PruneSession(model, "slicegpt", {"kind": "total", "keep": 0.75}, config).run(calibration, progress=False)
    assert result.report.hidden_size < model.config.hidden_size and result.model.config.residual_shortcuts
    result.save(tmp_path / "ckpt", tokenizer=tokenizer)
    expected = result.model(ids).logits.detach()
    reloaded, _ = load_pruned(tmp_path / "ckpt")
    remote = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", trust_remote_code=True)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(remote(ids).logits, expected, rtol=0, atol=1e-5)
