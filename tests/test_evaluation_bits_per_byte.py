"""Bits per byte beside perplexity: the NLL of the predicted tokens over the UTF-8 bytes of text they cover, checked by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny import plain_llama, tiny_tokenizer
from tokenizers.processors import TemplateProcessing

from pruneframe.data import resolve_text, token_windows
from pruneframe.evaluation import EvalContext, PerplexityEvaluator, perplexity
from pruneframe.evaluation.covered_bytes import bits_per_byte, token_byte_ends, window_bytes

ASCII = "the lazy dog sleeps while the quick brown fox jumps over it. " * 40
UNICODE = "the quick fox — naïve café, 日本語 and 😀 jumps over the lazy dog. " * 30


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> symbol table (the ByteLevel pre-tokenizer's), inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[chr(b)] = b
        else:
            symbols[chr(256 + extra)] = b
            extra += 1
    return symbols


def _token_bytes(tokenizer, ids: torch.Tensor) -> int:
    """UTF-8 bytes the byte-level tokens ``ids`` stand for, counted from their symbols."""
    table = _byte_decoder()
    return sum(len(t) if t in tokenizer.all_special_tokens else sum(1 for c in t if c in table) for t in tokenizer.convert_ids_to_tokens(ids.tolist()))


def _with_bos(name: str):
    tokenizer = tiny_tokenizer(name)
    tokenizer.add_special_tokens({"bos_token": "<bos>"})
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tokenizer.bos_token_id)])
    return tokenizer


@pytest.mark.parametrize("bos", [False, True])
def test_bits_per_byte_is_the_nll_over_the_bytes_counted_by_hand(bos: bool, tmp_path: Path) -> None:
    model = plain_llama()
    tokenizer = _with_bos("tiny-bpb-bos") if bos else tiny_tokenizer("tiny-bpb")
    path = tmp_path / "eval.txt"
    path.write_text(ASCII)
    evaluator = PerplexityEvaluator({"data": str(path), "seq_len": 16, "num_windows": 4, "offset_windows": 1})
    row = evaluator.evaluate(model, tokenizer, EvalContext(progress=False))["sources"]["eval"]
    windows = token_windows(resolve_text(str(path)), tokenizer, 16, 4, 1, bos=tokenizer.bos_token_id if bos else None)
    predicted = windows[:, 1:]  # with a BOS every text token is predicted, without one all but the window's first
    by_hand = [_token_bytes(tokenizer, w) for w in predicted]
    assert by_hand == [len(tokenizer.decode(w).encode("utf-8")) for w in predicted]
    assert row["window_bytes"] == by_hand and row["bytes"] == sum(by_hand)
    assert row["bits_per_byte"] == pytest.approx(row["mean_nll"] * row["tokens"] / math.log(2) / sum(by_hand), rel=1e-12)
    assert row["ppl"] == perplexity(model, windows, progress=False).ppl  # the existing numbers are untouched


def test_window_bytes_add_up_to_the_text_they_span_with_multibyte_characters() -> None:
    tokenizer = _with_bos("tiny-bpb-unicode")
    ids, ends = token_byte_ends(UNICODE, tokenizer)
    assert ends[-1] == len(UNICODE.encode("utf-8")) and (ends[1:] >= ends[:-1]).all()
    windows = token_windows(UNICODE, tokenizer, 16, bos=tokenizer.bos_token_id)  # every full window, from the start
    covered = window_bytes(UNICODE, tokenizer, windows, 0, tokenizer.bos_token_id)
    assert sum(covered) == ends[windows.numel() - windows.shape[0] - 1]  # the bytes up to the last predicted token's end
    counted = [_token_bytes(tokenizer, w[1:]) for w in windows]
    assert sum(counted) == sum(covered)
    # A character cut into byte tokens counts with its first byte's window, so windows differ by less than a character.
    assert all(abs(a - b) <= 3 for a, b in zip(covered, counted)) and covered != counted


def test_refusals_and_tokenizers_without_offsets() -> None:
    tokenizer = tiny_tokenizer("tiny-bpb-refusals")
    windows = token_windows(ASCII, tokenizer, 16, 2)
    with pytest.raises(ValueError, match="are not the text's tokens 16..47"):
        window_bytes(ASCII, tokenizer, windows, 1, None)

    class Slow:
        is_fast = False

    assert window_bytes(ASCII, Slow(), windows, 0, None) is None
    assert math.isnan(bits_per_byte([1.0], 0)) and bits_per_byte([math.log(2), math.log(2)], 2) == pytest.approx(1.0)
