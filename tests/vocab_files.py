"""Files for the vocabulary-trimming tests: a byte-level BPE of about a thousand tokens, texts in several scripts, a tiny model folder."""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tiny import tiny_model

SYLLABLES = "ka ri to ne mo sa lu pe chi va do ge fi ha ju ol en ar um is".split()
FOREIGN = ("мир дом река город книга слово", "λόγος θάλασσα πόλη νερό", "水 山 川 日本 東京 大学")
TEXTS = (
    "Plain ASCII text, with digits 12345 and punctuation!?",
    "Вот немного русского текста и слова, которых не было.",
    "Ελληνικά γράμματα και λέξεις.",
    "日本語のテキストと漢字、東京。",
    "emoji 🙂🚀 and tabs\tand\nnewlines  double  spaces",
    "kari tone mosa luva dogefi — unseen joins: zzqx wvy",
)


def lexicon(seed: int = 0, size: int = 1500) -> list[str]:
    """Made-up words of two to four syllables."""
    rng = random.Random(seed)
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(size)]


def corpus_text(seed: int, words: int, vocabulary: list[str] | None = None) -> str:
    """Zipf-weighted sentences over ``vocabulary`` (default: the whole lexicon)."""
    rng = random.Random(seed)
    vocabulary = vocabulary or lexicon()
    weights = [1.0 / (i + 1) for i in range(len(vocabulary))]
    chosen = rng.choices(vocabulary, weights, k=words)
    return "\n".join(" ".join(chosen[i : i + 10]).capitalize() + "." for i in range(0, words, 10)) + "\n"


def rich_bpe_tokenizer(size: int = 1000) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 split rule) of ``size`` tokens trained on the lexicon and three other scripts."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        show_progress=False,
    )
    text = corpus_text(7, 20000) + " ".join(FOREIGN) * 20  # no digits: no token joins one to anything (see export)
    tok.train_from_iterator([text], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|endoftext|>")
    fast.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    return fast


def calibration_text() -> str:
    """Calibration text over the first 300 words of the lexicon only, so many tokens are never seen."""
    return corpus_text(1, 6000, lexicon()[:300])


def model_folder(root: Path, family: str = "llama-gqa") -> Path:
    """A tiny model of ``family`` and :func:`rich_bpe_tokenizer` saved in ``root/<family>``, with ``calib.txt`` beside it."""
    tokenizer = rich_bpe_tokenizer()
    folder = root / family
    tiny_model(family, vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (root / "calib.txt").write_text(calibration_text())
    return folder
