"""Gemma 3 270M on its real weights (the ``gemma3-270m`` embedded model): slow, run with PRUNEFRAME_SLOW=1."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("PRUNEFRAME_SLOW") != "1", reason="loads a 268M-parameter model; set PRUNEFRAME_SLOW=1"),
]


def test_gemma3_270m_loads_with_its_published_size_and_perplexity() -> None:
    from pruneframe.architectures import discover
    from pruneframe.data import resolve_text
    from pruneframe.data.windows import token_windows
    from pruneframe.evaluation.perplexity import perplexity
    from pruneframe.models.resolver import load_model

    model, tokenizer = load_model("gemma3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 268_098_176
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (18, 640, 2048)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size) == (4, 1, 256, 262_144)
    units = discover(model)
    assert units.total_params == 268_098_176 and units.prunable_params + units.nonprunable_params == 268_098_176
    # one 512-token window of the WikiText-2 test split, fp32: <bos> and the first 511 tokens (Gemma is
    # trained with <bos> first; the same window without it scores about 32)
    body = token_windows(resolve_text("wikitext-2", "test"), tokenizer, 511, 1, 0)
    windows = torch.cat([torch.full((1, 1), tokenizer.bos_token_id), body], dim=1)
    ppl = perplexity(model, windows, progress=False).ppl
    assert 13.5 < ppl < 15.5, ppl
