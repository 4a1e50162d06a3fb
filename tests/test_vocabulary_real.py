"""Vocabulary trimming on the embedded models' real tokenizers and weights: slow, run with PRUNEFRAME_SLOW=1.

SmolLM2-135M (byte-level BPE), Gemma 3 270M (BPE with byte fallback, some 515,000 merges over 262,144
tokens) and, when built, Qwen2.5-Coder 0.5B: at several kept fractions every corpus text round-trips
byte for byte, kept text tokenizes as before with the ids renumbered, the rebuilt tokenizer reloads
with ``AutoTokenizer``, and the sliced model's logits are the original's at the kept columns.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from test_vocabulary_tokenizer import chunks, corpus
from transformers import AutoModelForCausalLM, AutoTokenizer

from pruneframe.data.embedded import embedded_text
from pruneframe.data.windows import prepended_bos
from pruneframe.models.smollm2 import cache_root
from pruneframe.vocabulary import closure, project_vocabulary, read_bpe, row_cost, slice_vocabulary, trim_tokenizer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("PRUNEFRAME_SLOW") != "1", reason="reads real tokenizers of up to 262k tokens; set PRUNEFRAME_SLOW=1"),
]

MODELS = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"]
FRACTIONS = [0.02, 0.1, 0.4]


def _folder(name: str) -> Path:
    folder = cache_root() / "models" / name
    if not (folder / "tokenizer.json").is_file():
        pytest.skip(f"{name} is not built in {folder}")
    return folder


@pytest.mark.parametrize("name", MODELS)
def test_real_tokenizer_trims_round_trips_and_keeps_kept_text(name: str, tmp_path: Path) -> None:
    started = time.perf_counter()
    folder = _folder(name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocab = read_bpe(tokenizer)
    texts = corpus()
    ids = [i for text in [*texts, embedded_text("test")] for i in tokenizer(text, add_special_tokens=False).input_ids]
    scores = torch.bincount(torch.tensor(ids), minlength=len(vocab)).double()
    floor = int(closure(vocab.forced, vocab.merges).sum())
    for fraction in FRACTIONS:
        budget = floor + round(fraction * (len(vocab) - floor))
        keep = project_vocabulary(scores, torch.ones(len(vocab), dtype=torch.int64), vocab.merges, budget, vocab.forced)
        assert int(keep.sum()) == budget
        trimmed = trim_tokenizer(tokenizer, keep, vocab)
        new = trimmed.tokenizer
        assert len(new) == budget and (prepended_bos(new) is None) == (prepended_bos(tokenizer) is None)
        same = 0
        for text in texts:
            assert new.decode(new(text, add_special_tokens=False).input_ids) == text
            for piece in chunks(text):
                old = torch.tensor(tokenizer(piece, add_special_tokens=False).input_ids)
                if bool(keep[old].all()):
                    assert new(piece, add_special_tokens=False).input_ids == trimmed.remap(old).tolist(), piece
                    same += 1
        assert same > 100, f"{name} at {fraction}: only {same} pieces with every token kept"
    new.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    joined = "\n".join(texts)
    assert reloaded(joined).input_ids == new(joined).input_ids
    print(f"{name}: {len(vocab)} tokens, {vocab.merges.shape[0]} merges, forced closure {floor}; {time.perf_counter() - started:.1f} s")


@pytest.mark.parametrize("name", MODELS[:2])
def test_real_model_sliced_logits_are_the_kept_columns(name: str) -> None:
    folder = _folder(name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    vocab = read_bpe(tokenizer, keep=[model.generation_config.eos_token_id] if isinstance(model.generation_config.eos_token_id, int) else [])
    text = corpus()[0][:400]
    ids = tokenizer(text, add_special_tokens=False).input_ids
    scores = torch.bincount(torch.tensor(ids), minlength=len(vocab)).double()
    cost = row_cost(model)
    floor = int(closure(vocab.forced | (scores > 0), vocab.merges).sum())
    keep = project_vocabulary(scores, torch.full((len(vocab),), cost), vocab.merges, (floor + 2000) * cost, vocab.forced)
    trimmed = trim_tokenizer(tokenizer, keep, vocab)
    old = torch.tensor([tokenizer(text).input_ids])
    with torch.no_grad():
        want = model(input_ids=old).logits[..., trimmed.old_ids]
        sliced = slice_vocabulary(model, trimmed.old_ids)
        got = sliced(input_ids=torch.tensor([trimmed.tokenizer(text).input_ids])).logits
    assert torch.equal(torch.tensor([trimmed.tokenizer(text).input_ids]), trimmed.remap(old))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
