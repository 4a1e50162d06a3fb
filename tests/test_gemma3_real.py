"""Gemma 3 270M on its real weights (the ``gemma3-270m`` embedded model): slow, run with PRUNEFRAME_SLOW=1."""

from __future__ import annotations

import importlib.util
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


@pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="needs xllamacpp (pip install 'pruneframe[deploy]')")
def test_gemma3_270m_exports_to_llamacpp_and_tokenizes_alike(tmp_path) -> None:
    """The real Gemma 3 as ``gemma3`` in f16: --verify passes, and llama.cpp reads long prose as as many tokens as transformers."""
    from pruneframe.data import resolve_text
    from pruneframe.export import export_gguf
    from pruneframe.export.llamacpp import LlamaCppModel
    from pruneframe.export.verify import verify_gguf
    from pruneframe.models.resolver import load_model

    model, tokenizer = load_model("gemma3-270m", dtype="float32", device="cpu")
    result = export_gguf(model, tmp_path / "gemma3.gguf", dtype="f16", tokenizer=tokenizer)
    assert result.plan.arch == "gemma3"
    check = verify_gguf(result.path, model, tokenizer, "f16")
    assert check.passed(), check.failures()
    text = resolve_text("moby-dick", "test").text[:12_000]
    runner = LlamaCppModel(result.path, n_ctx=8192)
    try:
        for start in range(0, len(text), 3000):
            chunk = text[start : start + 3000]
            assert runner.count_prompt_tokens(chunk) == len(tokenizer(chunk)["input_ids"])
    finally:
        runner.close()
