"""The tokenizer, its special tokens and its chat template as GGUF metadata.

Two kinds of ``tokenizer.json`` are written. Byte-level BPE tokenizers (``tokenizer.json`` with a BPE model and a ByteLevel pre-tokenizer: SmolLM2,
Qwen2/2.5/3, Llama 3) are written as llama.cpp's ``gpt2`` tokenizer model: tokens in id order, their
types, the merges, and the name of the pre-tokenizer whose split rule llama.cpp applies
(``tokenizer.ggml.pre``). That name is read off the pre-tokenizer's regex; a tokenizer whose split rule
llama.cpp does not know under some name is refused rather than written with a rule that tokenizes
differently. SentencePiece-style BPE (a BPE model with byte fallback over text whose spaces the
normalizer turns into ``▁``: Gemma, Llama 2) is written as llama.cpp's ``llama`` tokenizer model, which
merges the adjacent pair whose merged token scores highest; each token's score is minus the rank of the
first merge that makes it, so llama.cpp merges in the order of ``tokenizer.json``'s merges. Special
tokens and the chat template come from gguf's own ``SpecialVocab``.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import gguf

from pruneframe.export.plan import ExportRefused

__all__ = ["add_vocab", "check_tokenizer", "pre_tokenizer_name", "spm_scores", "spm_space_prefix"]

_SPACE = "\u2581"  # SentencePiece's "▁"
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_DIGIT = re.compile(r"[0-9]")

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: The split regex of a Split pre-tokenizer -> llama.cpp's name for the same rule.
_SPLITS = {_QWEN2_SPLIT: "qwen2", _LLAMA3_SPLIT: "llama-bpe"}


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level BPE ``tokenizer.json``; raises :class:`ExportRefused` if unknown.

    A lone ByteLevel pre-tokenizer with its own (GPT-2) regex is ``smollm`` (GPT-2's split, without
    clean-up of spaces on decoding, as SmolLM2 and the other ByteLevel-only tokenizers decode); a
    Split with Qwen2's or Llama 3's regex followed by a regex-free ByteLevel is ``qwen2`` / ``llama-bpe``.
    llama.cpp's ``smollm`` rule also puts every digit apart, which matches only a vocabulary where no
    token joins a digit to anything (SmolLM2's): one that does is refused. An NFC normalizer (Qwen2's) is
    accepted and not written: llama.cpp does not normalize, so the file reads text already in NFC (nearly
    all text; a decomposed accent is the exception) as transformers does, as the official conversions do.
    """
    pre = tokenizer_json.get("pre_tokenizer") or {}
    normalizer = tokenizer_json.get("normalizer")
    if normalizer and normalizer != {"type": "NFC"}:
        raise ExportRefused(f"tokenizer: a normalizer ({normalizer.get('type')}) before a byte-level BPE is not exported yet (NFC is)")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        joined = next((t for t in (tokenizer_json.get("model") or {}).get("vocab", {}) if len(t) > 1 and _DIGIT.search(t)), None)
        if joined is not None:
            raise ExportRefused(
                f"tokenizer: token {joined!r} joins a digit to other characters; llama.cpp's split rule for a ByteLevel-only "
                "tokenizer (smollm) puts every digit apart, so it would read numbers as other tokens"
            )
        return "smollm"
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern in _SPLITS:
            return _SPLITS[pattern]
        raise ExportRefused(f"tokenizer: a Split pre-tokenizer with regex {pattern!r}, which llama.cpp knows under no name pruneframe can tell")
    raise ExportRefused(
        f"tokenizer: pre-tokenizer {json.dumps(pre)[:200]} is not exported yet (byte-level BPE with GPT-2's, Qwen2's or Llama 3's split rule is)"
    )


def spm_space_prefix(tokenizer_json: dict[str, Any]) -> bool:
    """Whether a SentencePiece-style ``tokenizer.json`` prepends ``▁`` to the text; raises :class:`ExportRefused` for other rules.

    Accepted: a normalizer that replaces spaces by ``▁`` (optionally after prepending one), with no
    pre-tokenizer, a no-op split on spaces (Gemma's), or a ``Metaspace`` that does not split.
    """
    norm = tokenizer_json.get("normalizer") or {}
    steps = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm] if norm else []
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": _SPACE}
    prepend = {"type": "Prepend", "prepend": _SPACE}
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "Metaspace" and not pre.get("split", True) and not steps:
        return pre.get("prepend_scheme", "always") != "never"
    noop_split = pre.get("type") == "Split" and pre.get("pattern") == {"String": " "}
    if pre and not noop_split:
        raise ExportRefused(f"tokenizer: pre-tokenizer {json.dumps(pre)[:200]} before a SentencePiece-style BPE is not exported yet")
    if steps == [replace]:
        return False
    if steps == [prepend, replace]:
        return True
    raise ExportRefused(f"tokenizer: normalizer {json.dumps(norm)[:200]} before a SentencePiece-style BPE is not exported yet")


def spm_scores(vocab: dict[str, int], merges: list[Any], vocab_size: int) -> list[float]:
    """Per token id: minus the rank (from 1) of the first merge that makes the token; below every merge for tokens no merge makes."""
    scores = [-float(len(merges) + 1)] * vocab_size
    seen: set[int] = set()
    for rank, merge in enumerate(merges):
        left, right = merge if isinstance(merge, (list, tuple)) else merge.split(" ", 1)
        token = vocab.get(left + right)
        if token is not None and token not in seen and token < vocab_size:
            seen.add(token)
            scores[token] = -float(rank + 1)
    return scores


def _tokens(tokenizer_json: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    model = tokenizer_json["model"]
    by_id: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    types = {i: gguf.TokenType.NORMAL for i in by_id}
    if model.get("byte_fallback"):
        types.update({i: gguf.TokenType.BYTE for i, t in by_id.items() if _BYTE_TOKEN.fullmatch(t)})
        if model.get("unk_token") in model["vocab"]:
            types[model["vocab"][model["unk_token"]]] = gguf.TokenType.UNKNOWN
    for added in tokenizer_json.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    if max(by_id) >= vocab_size:
        raise ExportRefused(f"tokenizer: token id {max(by_id)} does not fit the model's vocab_size {vocab_size}")
    tokens, kinds = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            kinds.append(int(types[i]))
        else:  # the embedding has rows no token uses
            tokens.append(f"[PAD{i}]")
            kinds.append(int(gguf.TokenType.UNUSED))
    return tokens, kinds


def check_tokenizer(tokenizer: Any) -> str:
    """The ``tokenizer.ggml.pre`` name ``tokenizer`` would be written with; raises :class:`ExportRefused` when it cannot be.

    The checks :func:`add_vocab` makes before writing anything, without writing: a comparison calls it
    before any run, so an evaluator that exports never fails after hours of work.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportRefused(f"tokenizer {type(tokenizer).__name__}: no tokenizer.json (a fast tokenizer is needed)")
    return _checked_kind(json.loads(backend.to_str()))


def _checked_kind(data: dict[str, Any]) -> str:
    """``default`` for SentencePiece-style BPE, else the byte-level pre-tokenizer's name; refuses what is not exported."""
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise ExportRefused(f"tokenizer: model type {model.get('type')!r} is not exported yet; byte-level and SentencePiece-style BPE are")
    if model.get("byte_fallback"):
        spm_space_prefix(data)
        return "default"
    return pre_tokenizer_name(data)


def add_vocab(writer: gguf.GGUFWriter, tokenizer: Any, vocab_size: int) -> str:
    """Write ``tokenizer`` (a transformers fast tokenizer) into ``writer``; returns the pre-tokenizer name.

    Raises :class:`ExportRefused` for a tokenizer that is neither byte-level nor SentencePiece-style BPE,
    or whose split rule or normalizer llama.cpp does not reproduce.
    """
    with tempfile.TemporaryDirectory(prefix="pruneframe-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        folder = Path(tmp)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise ExportRefused(f"tokenizer {type(tokenizer).__name__}: no tokenizer.json (a fast tokenizer is needed)")
        data = json.loads(file.read_text(encoding="utf-8"))
        model = data.get("model", {})
        pre = _checked_kind(data)
        tokens, kinds = _tokens(data, vocab_size)
        if model.get("byte_fallback"):
            prefix = spm_space_prefix(data)
            writer.add_tokenizer_model("llama")
            writer.add_tokenizer_pre("default")
            writer.add_token_list(tokens)
            writer.add_token_scores(spm_scores(model["vocab"], model.get("merges", []), vocab_size))
            writer.add_token_types(kinds)
            writer.add_add_space_prefix(prefix)
            gguf.SpecialVocab(folder, load_merges=False, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)
            return "default"
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(kinds)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
        if not special.merges:
            raise ExportRefused("tokenizer: tokenizer.json has no merges")
        special.add_to_gguf(writer, quiet=True)
        return pre
