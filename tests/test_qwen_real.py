"""Qwen2.5-Coder 0.5B on its real weights (``qwen2.5-coder-0.5b``): slow, run with PRUNEFRAME_SLOW=1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("PRUNEFRAME_SLOW") != "1", reason="loads a 494M-parameter model; set PRUNEFRAME_SLOW=1"),
]


def test_qwen_0_5b_prunes_unevenly_folds_exactly_and_reloads_bit_identically(tmp_path: Path) -> None:
    """llm-pruner at keep 0.5 on the real weights (q/k/v biases): folded == gated dense, reload identical."""
    from transformers import AutoModelForCausalLM

    import pruneframe
    from pruneframe.checkpoint import load_pruned
    from pruneframe.data import calibration_data
    from pruneframe.toolkit.gates import gated
    from pruneframe.models.resolver import load_model

    model, tokenizer = load_model("qwen2.5-coder-0.5b")
    cfg = model.config
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (24, 896, 4864)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (14, 2)
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    calibration = calibration_data("embedded", tokenizer, max_tokens=4096)
    result = pruneframe.prune(model, method="llm-pruner", budget=0.5, calibration=calibration, progress=False)
    widths = {w["ffn_channels"] for w in result.units.widths(result.mask)}
    assert len(widths) > 1, "expected uneven FFN widths"
    ids = calibration.tokens[:32].unsqueeze(0)
    with torch.no_grad(), gated(model, result.units, result.mask, result.recalibration):
        want = model(ids).logits
    with torch.no_grad():
        got = result.model(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    saved = result.save(tmp_path / "qwen-keep0.5", tokenizer=tokenizer)
    loaded, _ = load_pruned(saved)
    remote = AutoModelForCausalLM.from_pretrained(saved, trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, got)
        torch.testing.assert_close(remote(ids).logits, got, atol=1e-5, rtol=0)
    assert sum(p.numel() for p in loaded.parameters()) == result.report.kept_params
