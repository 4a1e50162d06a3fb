"""Bytes of text each perplexity window's predicted tokens cover, for bits per byte.

Bits per byte, ``sum(NLL in nats) / ln 2 / bytes``, does not depend on how finely a tokenizer cuts the
text, so it compares models whose vocabularies differ (a trimmed vocabulary cuts the same text into
more tokens, each easier to predict).

Token ``i`` of a text covers the text from where token ``i - 1`` ends to where it ends (the first
token from the start of the text), as the tokenizer's character offsets say; a window covers the
UTF-8 bytes of its predicted tokens. Whitespace a tokenizer drops, or one it folds into the next
token, thus counts with the token after it, and summed over consecutive windows the bytes are exactly
those of the text they span. One case is split approximately: a multi-byte character cut into
several byte tokens (byte-level BPE) counts in full with the first of them, so where such a character
straddles two windows, the window holding its first byte gets all of its bytes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["bits_per_byte", "token_byte_ends", "window_bytes"]

_CACHE_SIZE = 8
_cache: OrderedDict[tuple[str, ...], tuple[torch.Tensor, np.ndarray]] = OrderedDict()


def bits_per_byte(nll_nats: float | Sequence[float], num_bytes: int) -> float:
    """``sum(nll_nats) / ln 2 / num_bytes`` (the NLL sum in float64 via ``math.fsum``); ``nan`` for no bytes."""
    total = math.fsum(nll_nats) if isinstance(nll_nats, Sequence) else float(nll_nats)
    return total / math.log(2) / num_bytes if num_bytes > 0 else math.nan


def _utf8_offsets(text: str) -> np.ndarray:
    """``out[c]``: the UTF-8 byte offset of character ``c`` of ``text`` (``out[len(text)]``: its byte length)."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)
    return np.concatenate([[0], np.cumsum(widths, dtype=np.int64)])


def _key(text_fingerprint: str, tokenizer: Any) -> tuple[str, ...] | None:
    name = str(getattr(tokenizer, "name_or_path", "") or "")
    return (text_fingerprint, type(tokenizer).__name__, name, str(len(tokenizer))) if name else None


def token_byte_ends(text: str, tokenizer: Any, text_fingerprint: str | None = None) -> tuple[torch.Tensor, np.ndarray] | None:
    """The token ids of ``text`` (no special tokens added) and, per token, the UTF-8 byte offset where it ends.

    Ends never decrease (a token whose offsets end before an earlier one's ends there too). None
    when the tokenizer gives no character offsets (a slow tokenizer). Cached by
    ``text_fingerprint`` and the tokenizer's name and size, when both are given.
    """
    if not getattr(tokenizer, "is_fast", False):
        return None
    key = _key(text_fingerprint, tokenizer) if text_fingerprint else None
    if key is not None and key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = torch.tensor(encoded["input_ids"], dtype=torch.long)
    char_ends = np.maximum.accumulate(np.array([end for _, end in encoded["offset_mapping"]], dtype=np.int64)) if len(ids) else np.zeros(0, np.int64)
    found = (ids, _utf8_offsets(text)[char_ends])
    if key is not None:
        _cache[key] = found
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return found


def window_bytes(
    text: str, tokenizer: Any, windows: torch.Tensor, offset_windows: int, bos: int | None, text_fingerprint: str | None = None
) -> list[int] | None:
    """The UTF-8 bytes each window's predicted tokens cover (see the module docstring).

    ``windows`` are :func:`pruneframe.data.windows.token_windows`'s for ``text`` with ``offset_windows``
    and ``bos``: without a BOS, window ``w`` is text tokens ``[(o + w) L, (o + w + 1) L)`` and predicts
    all but its first; with one, it is the BOS and text tokens ``[(o + w)(L - 1), (o + w + 1)(L - 1))``,
    all predicted. None when the tokenizer gives no offsets.

    Raises:
        ValueError: the windows are not those tokens (they were cut from another text or tokenization).
    """
    found = token_byte_ends(text, tokenizer, text_fingerprint)
    if found is None:
        return None
    ids, ends = found
    count, seq_len = windows.shape
    width = seq_len - 1 if bos is not None else seq_len
    start = offset_windows * width
    body = windows[:, 1:] if bos is not None else windows
    if start + count * width > ids.numel() or not torch.equal(ids[start : start + count * width].view(count, width), body.cpu()):
        raise ValueError(f"window_bytes: the {count} windows are not the text's tokens {start}..{start + count * width - 1}")
    ends = np.concatenate([[0], ends])  # ends[i + 1]: where token i ends; ends[0]: the start of the text
    first = np.arange(count, dtype=np.int64) * width + start + (0 if bos is not None else 1)  # first predicted token
    last = np.arange(1, count + 1, dtype=np.int64) * width + start - 1
    return (ends[last + 1] - ends[first]).tolist()
