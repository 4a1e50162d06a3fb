"""What each token of a BPE vocabulary stands for: its bytes, its script class and the rank of the merge that makes it.

A token's *class* is read off the text its bytes decode to (bytes that do not form whole UTF-8
characters are left out):

* the script of its first letter, as the first word of that character's Unicode name (``LATIN``,
  ``CYRILLIC``, ``GREEK``, ``ARABIC``, ``CJK``, ``HIRAGANA``, ``HANGUL``, ``DEVANAGARI``, ...);
* else ``DIGIT`` when it holds a digit, else the kind of its first other visible character
  (``PUNCTUATION``, ``SYMBOL``, ``MARK``, ``OTHER``), else ``SPACE`` for whitespace only;
* ``BYTES`` for a token that holds no whole character (a piece of a multi-byte character, a byte
  token ``<0xE6>``), and ``SPECIAL`` for an added token (``<|endoftext|>``).
"""

from __future__ import annotations

import functools
import re
import unicodedata

import torch

from pruneframe.vocabulary.bpe import BpeVocabulary

__all__ = ["SPECIAL_CLASS", "byte_level_decoder", "merge_ranks", "token_bytes", "token_class", "token_classes"]

#: The class of an added token.
SPECIAL_CLASS = "SPECIAL"

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_KINDS = {"P": "PUNCTUATION", "S": "SYMBOL", "M": "MARK"}


@functools.cache
def byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character that stands for each byte, mapped back to the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def token_bytes(vocab: BpeVocabulary) -> list[bytes]:
    """Per token id, the bytes of text it stands for (an added token: its content in UTF-8)."""
    added = {int(a["id"]) for a in vocab.added}
    out: list[bytes] = []
    decoder = byte_level_decoder()
    for i, token in enumerate(vocab.tokens):
        if i in added:
            out.append(token.encode("utf-8"))
        elif vocab.kind == "byte-level":
            out.append(bytes(decoder[c] for c in token) if all(c in decoder for c in token) else token.encode("utf-8"))
        elif match := _BYTE_TOKEN.fullmatch(token):
            out.append(bytes([int(match.group(1), 16)]))
        else:
            out.append(token.replace("\u2581", " ").encode("utf-8"))
    return out


def token_class(data: bytes) -> str:
    """The class of a token whose text is ``data`` (see the module docstring; ``SPECIAL`` is assigned by the caller)."""
    text = data.decode("utf-8", errors="ignore")
    for ch in text:
        if unicodedata.category(ch).startswith("L"):
            name = unicodedata.name(ch, "")
            return name.split(" ", 1)[0] if name else "LETTER"
    if any(unicodedata.category(ch).startswith("N") for ch in text):
        return "DIGIT"
    for ch in text:
        if not ch.isspace():
            return _KINDS.get(unicodedata.category(ch)[0], "OTHER")
    return "SPACE" if text else "BYTES"


def token_classes(vocab: BpeVocabulary) -> list[str]:
    """Per token id, its class (added tokens are ``SPECIAL``)."""
    added = {int(a["id"]) for a in vocab.added}
    return [SPECIAL_CLASS if i in added else token_class(data) for i, data in enumerate(token_bytes(vocab))]


def merge_ranks(vocab: BpeVocabulary) -> torch.Tensor:
    """Per token id, 1 + the index of the first merge that makes it, or 0 for a token no merge makes (int64)."""
    results = vocab.merges[:, 2]
    none = results.numel() + 1
    ranks = torch.full((len(vocab),), none, dtype=torch.int64)
    ranks.scatter_reduce_(0, results, torch.arange(1, none, dtype=torch.int64), "amin")
    return torch.where(ranks == none, 0, ranks)
