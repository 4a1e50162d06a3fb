"""Rebuild a BPE tokenizer to a kept vocabulary: new dense ids, the merges among kept tokens, the same text handling.

The new tokenizer is built with the ``tokenizers`` library's own classes: a ``BPE`` model over the kept
tokens (in their old order, so ids stay increasing) with every merge whose two parts and result are
kept, in the old merge order; the original normalizer, pre-tokenizer and decoder; the post-processor
with its special-token ids renumbered; the kept added tokens with their settings. It is wrapped as a
transformers fast tokenizer with the same special tokens, chat template and settings.

Why the tokenization of kept text is unchanged: BPE encodes a word by applying, again and again, the
best-ranked merge among adjacent symbols. When every token the original tokenizer outputs for a text
is kept, a closed kept set (see :mod:`pruneframe.vocabulary.closure`) holds every token those were
built from, so every merge the original applied is kept, keeps its rank relative to the others, and is
chosen at the same step; no merge the original could not apply exists in the new one. Every text stays
encodable and decodes as before: the byte symbols (or byte tokens) are always kept.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, models, processors
from transformers import PreTrainedTokenizerFast

from pruneframe.vocabulary.bpe import BpeVocabulary, backend_of, read_bpe
from pruneframe.vocabulary.closure import is_closed

__all__ = ["TrimmedTokenizer", "trim_tokenizer", "vocabulary_fingerprint"]

# The BPE model's settings passed on as the original's JSON has them.
_BPE_SETTINGS = ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", "byte_fallback", "ignore_merges")

# The settings a transformers tokenizer carries besides its special tokens, copied to the rebuilt one.
_SETTINGS = ("model_max_length", "padding_side", "truncation_side", "clean_up_tokenization_spaces")


@dataclass(frozen=True)
class TrimmedTokenizer:
    """A tokenizer rebuilt to a kept vocabulary.

    Attributes:
        tokenizer: the new transformers fast tokenizer (new id ``i`` is old id ``old_ids[i]``).
        old_ids: int64 ``[V']``, the kept old ids in new-id order (increasing): the rows to keep of
            the embedding and the output layer.
        fingerprint: :func:`vocabulary_fingerprint` of the kept tokens.
    """

    tokenizer: PreTrainedTokenizerFast
    old_ids: torch.Tensor
    fingerprint: str

    def remap(self, ids: torch.Tensor) -> torch.Tensor:
        """Old token ids as new ids (KeyError naming the first id that was dropped)."""
        table = torch.full((int(self.old_ids.max()) + 1,), -1, dtype=torch.int64)
        table[self.old_ids] = torch.arange(self.old_ids.numel())
        flat = ids.reshape(-1)
        if flat.numel() and (int(flat.max()) >= table.numel() or bool((table[flat] < 0).any())):
            dropped = next(int(i) for i in flat.tolist() if i >= table.numel() or table[i] < 0)
            raise KeyError(f"token id {dropped} was dropped from the vocabulary")
        return table[flat].reshape(ids.shape)


def vocabulary_fingerprint(tokens: Iterable[str]) -> str:
    """First 16 hex digits of the SHA-256 of the sorted token texts, as a JSON list (UTF-8)."""
    payload = json.dumps(sorted(tokens), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _check_keep(vocab: BpeVocabulary, keep: torch.Tensor) -> None:
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or keep.shape != (len(vocab),):
        raise ValueError(f"keep must be a bool tensor of shape ({len(vocab)},), one entry per token")
    lost = (vocab.required & ~keep).nonzero().flatten()
    if lost.numel():
        raise ValueError(f"keep drops {lost.numel()} required tokens (byte symbols or named special tokens), first {vocab.tokens[int(lost[0])]!r}")
    if not is_closed(keep, vocab.merges):
        kept = keep.tolist()
        left, right, result = next(m for m in vocab.merges.tolist() if kept[m[2]] and not (kept[m[0]] and kept[m[1]]))
        raise ValueError(
            f"keep is not closed under the merges: it keeps {vocab.tokens[result]!r} but not both parts of its merge "
            f"{vocab.tokens[left]!r} + {vocab.tokens[right]!r}"
        )


def _template(pieces: list[dict[str, Any]]) -> list[str]:
    """A TemplateProcessing template's pieces in the constructor's ``"<id>:<type_id>"`` / ``"$<id>:<type_id>"`` form."""
    out = []
    for piece in pieces:
        if "Sequence" in piece:
            out.append(f"${piece['Sequence']['id']}:{piece['Sequence']['type_id']}")
        else:
            out.append(f"{piece['SpecialToken']['id']}:{piece['SpecialToken']['type_id']}")
    return out


def _post_processor(spec: dict[str, Any] | None, new_id: dict[str, int]) -> Any:
    """The post-processor of ``spec`` (its JSON) with special-token ids renumbered through ``new_id``."""
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "ByteLevel":
        return processors.ByteLevel(**{k: v for k, v in spec.items() if k != "type"})
    if kind == "Sequence":
        return processors.Sequence([_post_processor(s, new_id) for s in spec["processors"]])
    if kind == "TemplateProcessing":
        specials = [{"id": name, "ids": [new_id[t] for t in s["tokens"]], "tokens": s["tokens"]} for name, s in spec["special_tokens"].items()]
        return processors.TemplateProcessing(single=_template(spec["single"]), pair=_template(spec["pair"]), special_tokens=specials)
    raise ValueError(f"vocabulary: post-processor {kind!r} is not supported (TemplateProcessing, ByteLevel and a Sequence of them are)")


def _model(vocab: BpeVocabulary, kept_ids: list[int]) -> models.BPE:
    old = vocab.model_settings
    kept = set(kept_ids)
    tokens = vocab.tokens
    merges = [(tokens[a], tokens[b]) for a, b, r in vocab.merges.tolist() if a in kept and b in kept and r in kept]
    settings = {k: old[k] for k in _BPE_SETTINGS if old.get(k) is not None}
    return models.BPE(vocab={tokens[old_id]: new for new, old_id in enumerate(kept_ids)}, merges=merges, **settings)


def _backend(original: Tokenizer, vocab: BpeVocabulary, kept_ids: list[int]) -> Tokenizer:
    new = Tokenizer(_model(vocab, kept_ids))
    new_id = {vocab.tokens[old]: new for new, old in enumerate(kept_ids)}
    if original.normalizer is not None:
        new.normalizer = original.normalizer
    if original.pre_tokenizer is not None:
        new.pre_tokenizer = original.pre_tokenizer
    if original.decoder is not None:
        new.decoder = original.decoder
    post = _post_processor(vocab.post_processor, new_id)
    if post is not None:
        new.post_processor = post
    kept = set(kept_ids)
    added = [a for a in vocab.added if int(a["id"]) in kept]

    def token(a: dict[str, Any]) -> AddedToken:
        flags = {k: a[k] for k in ("single_word", "lstrip", "rstrip", "normalized") if k in a}
        return AddedToken(a["content"], special=bool(a.get("special")), **flags)

    new.add_special_tokens([token(a) for a in added if a.get("special")])
    new.add_tokens([token(a) for a in added if not a.get("special")])
    if original.truncation:
        new.enable_truncation(**original.truncation)
    if original.padding:
        padding = dict(original.padding)
        padding["pad_id"] = new_id[padding["pad_token"]]
        new.enable_padding(**padding)
    return new


def _wrap(original: Any, backend: Tokenizer, fingerprint: str) -> PreTrainedTokenizerFast:
    settings: dict[str, Any] = {}
    if not isinstance(original, Tokenizer):
        settings.update(getattr(original, "special_tokens_map", {}) or {})
        settings.update({k: getattr(original, k) for k in _SETTINGS if hasattr(original, k)})
        extra = getattr(original, "extra_special_tokens", None)
        if extra:
            settings["extra_special_tokens"] = extra
        if getattr(original, "chat_template", None):
            settings["chat_template"] = original.chat_template
        name = str(getattr(original, "name_or_path", "") or "")
        if name:
            settings["name_or_path"] = f"{name.rstrip('/')}@vocab-{fingerprint}"
    return PreTrainedTokenizerFast(tokenizer_object=backend, **settings)


def trim_tokenizer(tokenizer: Any, keep: torch.Tensor, vocab: BpeVocabulary | None = None) -> TrimmedTokenizer:
    """Rebuild ``tokenizer`` to the tokens ``keep`` marks (a closed mask holding the required tokens).

    Args:
        tokenizer: a transformers fast tokenizer (or a ``tokenizers.Tokenizer``) of a byte-level BPE
            or a BPE with byte fallback.
        keep: bool ``[V]``, the kept tokens by old id (for example from
            :func:`~pruneframe.vocabulary.closure.project_vocabulary` with the vocabulary's costs and
            its ``forced`` mask).
        vocab: the :func:`~pruneframe.vocabulary.bpe.read_bpe` of ``tokenizer``, when already read.

    Raises:
        ValueError: the tokenizer is of another kind, ``keep`` drops a required token or is not closed.
    """
    vocab = vocab if vocab is not None else read_bpe(tokenizer)
    _check_keep(vocab, keep)
    kept_ids = keep.nonzero().flatten().tolist()
    fingerprint = vocabulary_fingerprint(vocab.tokens[i] for i in kept_ids)
    backend = _backend(backend_of(tokenizer), vocab, kept_ids)
    return TrimmedTokenizer(_wrap(tokenizer, backend, fingerprint), torch.tensor(kept_ids, dtype=torch.int64), fingerprint)
