"""A BPE tokenizer's vocabulary read as units: its tokens, its merges as ids, and the tokens always kept.

Two kinds of BPE are read: *byte-level* (GPT-2 style: a ``ByteLevel`` pre-tokenizer maps every byte
to one of 256 symbols, as SmolLM2, Qwen2.5 and Llama 3 do) and *byte fallback* (SentencePiece style:
a character outside the vocabulary becomes ``<0xXX>`` byte tokens, as Gemma does). Every text stays
encodable as long as the 256 byte symbols (or byte tokens) are kept, and decodes as before when a
symbol the decoder rewrites (the ``▁`` a byte-fallback decoder turns back into a space) stays a token
too, so those are *required*, with the tokenizer's named special tokens (BOS, EOS, UNK, PAD, ...),
the model's unknown token and the tokens the post-processor inserts. The *forced* set adds the added
tokens the chat template names (``<|im_start|>``, ``<start_of_turn>``: an added token whose text
occurs in a chat template), every other special added token unless asked not to (Gemma lists some
6,200 ``<unusedN>`` specials), and any ids the caller names (a generation config's EOS ids, say).
Any other tokenizer model (WordPiece, Unigram, WordLevel) is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, pre_tokenizers

__all__ = ["BpeKind", "BpeVocabulary", "backend_of", "merge_result", "read_bpe"]

BpeKind = Literal["byte-level", "byte-fallback"]

_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


@dataclass(frozen=True)
class BpeVocabulary:
    """A BPE tokenizer's vocabulary as units.

    Attributes:
        tokens: every token's text as the model stores it, by id (ids are dense ``0..V-1``).
        merges: int64 ``[M, 3]`` of ``(left, right, result)`` ids, in the tokenizer's merge order.
        kind: ``"byte-level"`` or ``"byte-fallback"``.
        required: bool ``[V]``: tokens without which some text is not encodable, or a named special token.
        forced: bool ``[V]``: ``required`` plus the chat template's added tokens, the other special added
            tokens (unless left out) and the ids the caller named.
        added: the added tokens' settings as ``tokenizer.json`` stores them (``id``, ``content``,
            ``special``, ``single_word``, ``lstrip``, ``rstrip``, ``normalized``), by id.
        model_settings: the BPE model's settings besides its vocabulary and merges (``unk_token``,
            ``byte_fallback``, ``fuse_unk``, ``ignore_merges``, ...), as ``tokenizer.json`` stores them.
        post_processor: the post-processor as ``tokenizer.json`` stores it (None without one).
    """

    tokens: tuple[str, ...]
    merges: torch.Tensor
    kind: BpeKind
    required: torch.Tensor
    forced: torch.Tensor
    added: tuple[dict[str, Any], ...]
    model_settings: dict[str, Any]
    post_processor: dict[str, Any] | None

    def __len__(self) -> int:
        """The number of tokens."""
        return len(self.tokens)


def backend_of(tokenizer: Any) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` of a transformers fast tokenizer (or ``tokenizer`` itself); ValueError for a slow one."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise ValueError(f"vocabulary: {type(tokenizer).__name__} has no tokenizers.Tokenizer backend (a fast tokenizer is needed)")
    return backend


def _merge_pairs(model: dict[str, Any]) -> list[tuple[str, str]]:
    """The merges of a BPE model's JSON, in either format (``[a, b]`` pairs, or ``"a b"`` strings)."""
    pairs: list[tuple[str, str]] = []
    for merge in model.get("merges") or []:
        if isinstance(merge, str):
            left, right = merge.split(" ", 1)
            pairs.append((left, right))
        else:
            pairs.append((merge[0], merge[1]))
    return pairs


def merge_result(left: str, right: str, prefix: str | None) -> str:
    """The token a merge of ``left`` and ``right`` makes (a continuing-subword prefix of ``right`` is dropped, as tokenizers does)."""
    if prefix and right.startswith(prefix):
        right = right[len(prefix) :]
    return left + right


def _has_byte_level(step: dict[str, Any] | None) -> bool:
    if not step:
        return False
    if step.get("type") == "ByteLevel":
        return True
    return any(_has_byte_level(s) for s in step.get("pretokenizers", []))


def _kind(spec: dict[str, Any]) -> BpeKind:
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"vocabulary: tokenizer model {model.get('type')!r} is not supported (byte-level BPE and BPE with byte fallback are)")
    if model.get("byte_fallback"):
        return "byte-fallback"
    if _has_byte_level(spec.get("pre_tokenizer")):
        return "byte-level"
    raise ValueError(
        "vocabulary: tokenizer model 'BPE' without a ByteLevel pre-tokenizer or byte fallback is not supported: "
        "dropping a token could leave some text unencodable"
    )


def _decoded_symbols(step: dict[str, Any] | None) -> list[str]:
    """The strings a decoder rewrites (``▁`` of a ``Replace("▁", " ")`` or a ``Metaspace``): byte tokens would not be rewritten."""
    if not step:
        return []
    if step.get("type") == "Replace" and "String" in (step.get("pattern") or {}):
        return [step["pattern"]["String"]]
    if step.get("type") == "Metaspace":
        return [step.get("replacement", "\u2581")]
    return [s for inner in step.get("decoders", []) for s in _decoded_symbols(inner)]


def _post_processor_tokens(step: dict[str, Any] | None) -> list[str]:
    """The tokens a post-processor inserts (a template's BOS, say)."""
    if not step:
        return []
    found = [t for special in (step.get("special_tokens") or {}).values() for t in special.get("tokens", [])]
    found += [step[k][0] for k in ("sep", "cls") if isinstance(step.get(k), list)]
    return found + [t for inner in step.get("processors", []) for t in _post_processor_tokens(inner)]


def _chat_templates(tokenizer: Any) -> list[str]:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return [t for t in template.values() if isinstance(t, str)]
    return [template] if isinstance(template, str) else []


def _named_special_ids(tokenizer: Any) -> list[int]:
    ids = getattr(tokenizer, "all_special_ids", None)
    return [int(i) for i in ids] if ids else []


def read_bpe(tokenizer: Any, *, all_special: bool = True, keep: Iterable[int] = ()) -> BpeVocabulary:
    """Read the vocabulary, merges and kept tokens of a byte-level BPE or a BPE with byte fallback.

    Args:
        tokenizer: a transformers fast tokenizer (its named special tokens and chat template count),
            or a ``tokenizers.Tokenizer``.
        all_special: force every special added token (True), or only the named ones and those in the
            chat template (False).
        keep: more token ids to force.

    Raises:
        ValueError: the tokenizer is not a BPE of either kind, its ids are not dense, or an id in
            ``keep`` is not a token.
    """
    backend = backend_of(tokenizer)
    spec = json.loads(backend.to_str())
    kind = _kind(spec)
    model = spec["model"]
    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    for added in spec.get("added_tokens") or []:
        by_id.setdefault(int(added["id"]), added["content"])
    size = max(by_id, default=-1) + 1
    if len(by_id) != size:
        hole = next(i for i in range(size) if i not in by_id)
        raise ValueError(f"vocabulary: token ids are not dense (no token has id {hole} of 0..{size - 1})")
    tokens = tuple(by_id[i] for i in range(size))
    ids = {t: i for i, t in enumerate(tokens)}
    prefix = model.get("continuing_subword_prefix")
    rows = [(ids[a], ids[b], ids[merge_result(a, b, prefix)]) for a, b in _merge_pairs(model)]
    merges = torch.tensor(rows, dtype=torch.int64).reshape(-1, 3)

    required = torch.zeros(size, dtype=torch.bool)
    if kind == "byte-level":
        base = [ids[c] for c in pre_tokenizers.ByteLevel.alphabet() if c in ids]
    else:
        # A character the decoder rewrites (the space marker) must stay a token of its own: as byte tokens it would come back unrewritten.
        marks = [ids[m] for m in _decoded_symbols(spec.get("decoder")) if m in ids]
        base = [i for i, t in enumerate(tokens) if _BYTE_TOKEN.fullmatch(t)] + marks
    required[base] = True
    named = _named_special_ids(tokenizer)
    named += [ids[t] for t in [model.get("unk_token"), *_post_processor_tokens(spec.get("post_processor"))] if t in ids]
    required[named] = True

    added = tuple(sorted((dict(a) for a in spec.get("added_tokens") or []), key=lambda a: int(a["id"])))
    forced = required.clone()
    templates = _chat_templates(tokenizer)
    for a in added:
        if (all_special and a.get("special")) or any(a["content"] in t for t in templates):
            forced[int(a["id"])] = True
    for i in keep:
        if not 0 <= int(i) < size:
            raise ValueError(f"vocabulary: token id {int(i)} to keep is outside 0..{size - 1}")
        forced[int(i)] = True
    settings = {k: v for k, v in model.items() if k not in ("type", "vocab", "merges")}
    return BpeVocabulary(
        tokens=tokens,
        merges=merges,
        kind=kind,
        required=required,
        forced=forced,
        added=added,
        model_settings=settings,
        post_processor=spec.get("post_processor"),
    )
