"""``vocab`` with the real SmolLM2 tokenizer on a tiny model of its vocabulary: slow, run with PRUNEFRAME_SLOW=1.

The prune meets its total budget, the checkpoint's tokenizer round-trips text in several scripts, and
llama.cpp (when ``xllamacpp`` is installed) reads the texts as the same ids and gives every kept token
the same bytes as transformers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from test_vocabulary_tokenizer import corpus
from transformers import AutoTokenizer
from vocab_files import TEXTS

from pruneframe.checkpoint import load_pruned
from pruneframe.data.embedded import embedded_text
from pruneframe.export import export_gguf
from pruneframe.export.llamacpp import LlamaCppModel, available
from pruneframe.export.verify_tokens import TOKENIZER_TEXTS, piece_issues, tokenization_issues
from pruneframe.models.smollm2 import cache_root
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.pipeline.session import PruneSession
from pruneframe.testing import tiny_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("PRUNEFRAME_SLOW") != "1", reason="reads the real SmolLM2 tokenizer; set PRUNEFRAME_SLOW=1"),
]


def test_vocab_on_the_smollm2_tokenizer_saves_exports_and_agrees_with_llamacpp(tmp_path: Path) -> None:
    folder = cache_root() / "models" / "smollm2-135m"
    if not (folder / "tokenizer.json").is_file():
        pytest.skip(f"smollm2-135m is not built in {folder}")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = tiny_model("llama-gqa", vocab_size=len(tokenizer), tie_word_embeddings=True)
    calibration = CalibrationData(torch.tensor(tokenizer(embedded_text("test"))["input_ids"]), name="embedded")
    session = PruneSession(model, "vocab", 0.5, budget_kind="total", tokenizer=tokenizer)
    result = session.run(calibration, progress=False)
    record = result.report.vocabulary
    assert result.report.kept_params <= session.vocab_plan.target_total < result.report.kept_params + record.row_cost
    assert record.tokens < len(tokenizer) // 2
    ckpt = result.save(tmp_path / "ckpt")
    _, saved = load_pruned(ckpt)
    for text in (*TEXTS, *TOKENIZER_TEXTS, *corpus()[:5]):
        assert saved.decode(saved(text, add_special_tokens=False)["input_ids"]) == text
    if not available():
        return
    out = export_gguf(load_pruned(ckpt)[0], tmp_path / "m.gguf", dtype="f32", tokenizer=saved).path
    runner = LlamaCppModel(out, n_ctx=512)
    try:
        assert tokenization_issues(runner, saved, (*TEXTS, *TOKENIZER_TEXTS)) == []
        assert piece_issues(runner, saved) == []
    finally:
        runner.close()
