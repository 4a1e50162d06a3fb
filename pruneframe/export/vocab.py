"""The tokenizer, its special tokens and its chat template as GGUF metadata.

Byte-level BPE tokenizers (``tokenizer.json`` with a BPE model and a ByteLevel pre-tokenizer: SmolLM2,
Qwen2/2.5/3, Llama 3) are written as llama.cpp's ``gpt2`` tokenizer model: tokens in id order, their
types, the merges, and the name of the pre-tokenizer whose split rule llama.cpp applies
(``tokenizer.ggml.pre``). That name is read off the pre-tokenizer's regex; a tokenizer whose split rule
llama.cpp does not know under some name is refused rather than written with a rule that tokenizes
differently. Special tokens and the chat template come from gguf's own ``SpecialVocab``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import gguf

from pruneframe.export.plan import ExportRefused

__all__ = ["add_vocab", "pre_tokenizer_name"]

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
    """
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if tokenizer_json.get("normalizer"):
        raise ExportRefused(f"tokenizer: a normalizer ({tokenizer_json['normalizer'].get('type')}) before a byte-level BPE is not exported yet")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
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


def _tokens(tokenizer_json: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    model = tokenizer_json["model"]
    by_id: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    types = {i: gguf.TokenType.NORMAL for i in by_id}
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


def add_vocab(writer: gguf.GGUFWriter, tokenizer: Any, vocab_size: int) -> str:
    """Write ``tokenizer`` (a transformers fast tokenizer) into ``writer``; returns the pre-tokenizer name.

    Raises :class:`ExportRefused` for a tokenizer that is not byte-level BPE or whose split rule is unknown.
    """
    with tempfile.TemporaryDirectory(prefix="pruneframe-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        folder = Path(tmp)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise ExportRefused(f"tokenizer {type(tokenizer).__name__}: no tokenizer.json (a fast tokenizer is needed)")
        data = json.loads(file.read_text(encoding="utf-8"))
        if data.get("model", {}).get("type") != "BPE" or data["model"].get("byte_fallback"):
            raise ExportRefused(
                f"tokenizer: model type {data.get('model', {}).get('type')!r} "
                f"(byte_fallback={data.get('model', {}).get('byte_fallback')}) is not exported yet; "
                "byte-level BPE is"
            )
        pre = pre_tokenizer_name(data)
        tokens, kinds = _tokens(data, vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(kinds)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
        if not special.merges:
            raise ExportRefused("tokenizer: tokenizer.json has no merges")
        special.add_to_gguf(writer, quiet=True)
        return pre
