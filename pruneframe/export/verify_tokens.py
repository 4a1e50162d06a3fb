"""llama.cpp's tokenizer beside transformers': the exact token ids of texts, and the bytes of every token.

* **Tokenization.** llama.cpp has no call that returns the ids it reads for a text, so each text is
  given twice, as text (llama.cpp tokenizes it) and as transformers' ids: the counts must agree and
  so must the first next-token distribution (the top ``top_k`` ids and log-probabilities, bit for
  bit). The same model on the same ids computes the same numbers; other ids of the same count would
  move them.
* **Detokenization.** One request whose distribution lists every token gives llama.cpp's bytes of
  each (a control token has none); each must equal the bytes transformers' token stands for
  (:func:`piece_bytes`). llama.cpp writes text as those bytes one token after the other.
"""

from __future__ import annotations

from typing import Any

from pruneframe.export.llamacpp import LlamaCppModel

__all__ = ["TOKENIZER_TEXTS", "piece_bytes", "piece_issues", "tokenization_issues", "unsafe_tokens"]

#: Texts in several scripts whose tokenization is compared besides the prompts (no runs of spaces or tabs,
#: whose handling some split rules leave to the pre-tokenizer's regex engine).
TOKENIZER_TEXTS: tuple[str, ...] = (
    "Привет, мир! Это проверка токенизатора.",
    "東京は日本の首都です。漢字とかな。",
    "Ελληνικά: καλημέρα σας, φίλοι.",
    "Numbers 3.14159, 2024-01-01 and 1,000,000; emoji 🙂🚀.",
    "Mixed: naïve café, Straße, œuvre – “quotes” and ‘apostrophes’.",
)


def _byte_decoder() -> dict[str, int]:
    from gguf.vocab import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


def piece_bytes(piece: str, sentencepiece: bool, decoder: dict[str, int] | None = None) -> bytes:
    """The bytes a vocabulary piece stands for: byte-level BPE maps characters to bytes; SentencePiece pieces are text with ``▁`` for spaces, or ``<0xXX>``.

    Raises ``KeyError`` for a byte-level piece holding a character outside the byte alphabet (an added token's text).
    """
    if not sentencepiece:
        decoder = decoder if decoder is not None else _byte_decoder()
        return bytes(decoder[c] for c in piece)
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


def _is_sentencepiece(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return bool(getattr(getattr(backend, "model", None), "byte_fallback", False))


def unsafe_tokens(tokenizer: Any) -> list[int]:
    """Token ids llama.cpp must not generate in a check: special tokens, and tokens whose bytes are not whole UTF-8 characters.

    llama.cpp folds an incomplete character into the next per-token entry (the entry of a last such
    token is missing), and special tokens have no text; banning both keeps every generated position
    comparable. The bans apply to sampling only: the reported probabilities come from the raw logits.
    """
    sentencepiece, decoder = _is_sentencepiece(tokenizer), _byte_decoder()
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    banned = []
    for token_id, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if token_id in special or piece is None:
            banned.append(token_id)
            continue
        try:
            piece_bytes(piece, sentencepiece, decoder).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            banned.append(token_id)
    return banned


def _first_distribution(response: dict[str, Any]) -> list[tuple[int, float]]:
    content = response["choices"][0]["logprobs"]["content"]
    return [(int(t["id"]), float(t["logprob"])) for t in content[0]["top_logprobs"]] if content else []


def tokenization_issues(runner: LlamaCppModel, tokenizer: Any, texts: tuple[str, ...], top_k: int = 40, ban: list[list[Any]] | None = None) -> list[str]:
    """Texts llama.cpp reads as other tokens than transformers does (special tokens added as both add them), one line each.

    ``ban``: :func:`unsafe_tokens` as a ``logit_bias`` (computed when not given).
    """
    ban = ban if ban is not None else [[t, False] for t in unsafe_tokens(tokenizer)]
    issues = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        by_text = runner.complete(text, 1, n_probs=top_k, logit_bias=ban)
        by_ids = runner.complete(ids, 1, n_probs=top_k, logit_bias=ban)
        count = int(by_text["usage"]["prompt_tokens"])
        if count != len(ids):
            issues.append(f"prompt {text[:30]!r}: llama.cpp reads {count} tokens, transformers {len(ids)}")
        elif _first_distribution(by_text) != _first_distribution(by_ids):
            issues.append(f"prompt {text[:30]!r}: llama.cpp reads {count} tokens as transformers does, but other ones")
    return issues


def piece_issues(runner: LlamaCppModel, tokenizer: Any, ban: list[list[Any]] | None = None) -> list[str]:
    """Tokens whose bytes in llama.cpp differ from transformers' (special and added tokens aside), in one line (none: empty).

    ``ban``: :func:`unsafe_tokens` as a ``logit_bias`` (computed when not given).
    """
    ban = ban if ban is not None else [[t, False] for t in unsafe_tokens(tokenizer)]
    size = len(tokenizer)
    listed = runner.complete([int(tokenizer.eos_token_id or 0)], 1, n_probs=size, logit_bias=ban)
    listed_bytes = {int(t["id"]): bytes(t["bytes"]) for t in listed["choices"][0]["logprobs"]["content"][0]["top_logprobs"]}
    skip = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    sentencepiece, decoder = _is_sentencepiece(tokenizer), _byte_decoder()
    wrong = []
    for token_id, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(size)))):
        if token_id in skip or piece is None or token_id not in listed_bytes:
            continue
        try:
            want = piece_bytes(piece, sentencepiece, decoder)
        except KeyError:
            continue
        if listed_bytes[token_id] != want:
            wrong.append(f"{token_id} {piece!r}: llama.cpp {listed_bytes[token_id]!r}")
    if not wrong:
        return []
    return [f"{len(wrong)} of {len(listed_bytes)} tokens detokenize differently, e.g. " + "; ".join(wrong[:3])]
