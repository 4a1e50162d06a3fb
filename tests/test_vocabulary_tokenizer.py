"""Tokenizers rebuilt to a kept vocabulary: every text round-trips byte for byte, kept text tokenizes as before.

On two tiny BPEs built in code: a byte-level one (GPT-2 split rule, as SmolLM2 and Qwen2.5) and a
SentencePiece-style one with byte fallback and every split of a token listed as a merge (as Gemma's).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from workspace_files import bpe_tokenizer, random_text

from pruneframe.data.embedded import embedded_text
from pruneframe.data.sources import data_dir
from pruneframe.data.windows import prepended_bos
from pruneframe.vocabulary import BpeVocabulary, closure, project_vocabulary, read_bpe, trim_tokenizer, vocabulary_fingerprint
from pruneframe.vocabulary.bpe import backend_of

SPACE = "\u2581"
UNICODE = [
    "Ünïcödé façade naïve café — “quotes” and ‘apostrophes’ … ½ ± ∞",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji 😀🐳🚢 flags 🇫🇷 family 👨‍👩‍👧 skin 👍🏽",
    "tabs\tand  double  spaces\n\nnew lines \r\n and trailing   ",
    "Ελληνικά кириллица עברית العربية हिन्दी",
]
CHAT = "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"


def spm_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style BPE (spaces as ``▁``, byte fallback, Gemma's normalizer and decoder) with every split of a token as a merge."""
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Replace(" ", SPACE)
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=260, show_progress=False)
    trainer_tok.train_from_iterator([random_text(9, 600), "é à ü ß 日本"] * 4, trainer)
    learned = sorted(trainer_tok.get_vocab().items(), key=lambda item: item[1])
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<unused0>"]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + [t for t, _ in learned] + ["\n\n", "<table>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    # As a SentencePiece vocabulary converted to BPE: every split of a token into two tokens is a merge, ranked by the token.
    merges = [(t[:k], t[k:]) for t in tokens for k in range(1, len(t)) if t[:k] in vocab and t[k:] in vocab and not t.startswith("<")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos>:1 $B:1", special_tokens=[("<bos>", 2)])
    tok.add_special_tokens([AddedToken(t, normalized=False) for t in specials])
    tok.add_tokens([AddedToken("\n\n", normalized=False), AddedToken("<table>", normalized=False)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>", chat_template=CHAT, name_or_path="tiny-spm"
    )


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """The workspace's byte-level BPE, with a chat template naming its ``<|im_start|>``."""
    tok = bpe_tokenizer()
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}"
    return tok


MAKERS = {"byte-level": byte_level_tokenizer, "byte-fallback": spm_tokenizer}


def corpus() -> list[str]:
    """Texts to encode: seeded random sentences, unicode, the embedded text, and shared WikiText-2 / Moby-Dick when present."""
    texts = [random_text(11, 400), *UNICODE, embedded_text("test")[:4000]]
    root = data_dir()
    for name in ("wikitext-2/wiki.test.raw", "literature/moby_dick.txt"):
        if root is not None and (root / name).is_file():
            texts.append((root / name).read_text(encoding="utf-8")[20000:24000])
    return texts


def frequency_scores(tokenizer, vocab: BpeVocabulary, seed: int = 0) -> torch.Tensor:
    """How often each token ends a token of the corpus, plus a little seeded noise to break ties."""
    ids = [i for text in corpus() for i in tokenizer(text, add_special_tokens=False).input_ids]
    counts = torch.bincount(torch.tensor(ids), minlength=len(vocab)).double()
    return counts + torch.rand(len(vocab), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def trimmed_at(tokenizer, fraction: float):
    """The tokenizer trimmed to the forced tokens plus ``fraction`` of the others (one unit cost per token)."""
    vocab = read_bpe(tokenizer)
    costs = torch.ones(len(vocab), dtype=torch.int64)
    floor = int(closure(vocab.forced, vocab.merges).sum())
    budget = floor + round(fraction * (len(vocab) - floor))
    keep = project_vocabulary(frequency_scores(tokenizer, vocab), costs, vocab.merges, budget, vocab.forced)
    assert int(keep.sum()) == budget
    return vocab, keep, trim_tokenizer(tokenizer, keep, vocab)


def chunks(text: str, words: int = 3) -> list[str]:
    """Short pieces of ``text``: a few words each, with their spacing."""
    parts = text.split(" ")
    return [" ".join(parts[i : i + words]) for i in range(0, len(parts), words) if "".join(parts[i : i + words])]


@pytest.fixture(scope="module", params=sorted(MAKERS))
def tokenizer(request: pytest.FixtureRequest) -> PreTrainedTokenizerFast:
    return MAKERS[request.param]()


def test_reads_the_vocabulary_and_the_tokens_always_kept(tokenizer: PreTrainedTokenizerFast) -> None:
    vocab = read_bpe(tokenizer)
    assert len(vocab) == len(tokenizer) and vocab.merges.shape[1] == 3
    tokens = set(vocab.tokens[i] for i in vocab.required.nonzero().flatten().tolist())
    if vocab.kind == "byte-level":
        assert set(pre_tokenizers.ByteLevel.alphabet()) <= tokens
        assert {"<|im_start|>", "<|endoftext|>"} <= tokens
    else:
        assert {f"<0x{b:02X}>" for b in range(256)} | {"<bos>", "<eos>", "<unk>", "<pad>"} <= tokens
        assert "<start_of_turn>" not in tokens  # only named special tokens are required
        forced = {vocab.tokens[i] for i in vocab.forced.nonzero().flatten().tolist()}
        assert {"<start_of_turn>", "<end_of_turn>", "<unused0>"} <= forced and "\n\n" not in forced
        fewer = {vocab.tokens[i] for i in read_bpe(tokenizer, all_special=False, keep=[vocab.tokens.index("<table>")]).forced.nonzero().flatten().tolist()}
        assert {"<start_of_turn>", "<end_of_turn>", "<table>"} <= fewer and "<unused0>" not in fewer  # in the chat template / asked for
        multi = torch.bincount(vocab.merges[:, 2], minlength=len(vocab))
        assert int(multi.max()) > 1  # several merges build one token, as in Gemma


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.7, 1.0])
def test_every_text_round_trips_and_kept_text_tokenizes_as_before(tokenizer: PreTrainedTokenizerFast, fraction: float) -> None:
    vocab, keep, trimmed = trimmed_at(tokenizer, fraction)
    new = trimmed.tokenizer
    assert len(new) == int(keep.sum()) == trimmed.old_ids.numel()
    assert torch.equal(trimmed.old_ids, keep.nonzero().flatten()) and trimmed.old_ids.dtype == torch.int64
    assert [new.convert_ids_to_tokens(i) for i in range(len(new))] == [vocab.tokens[i] for i in trimmed.old_ids.tolist()]
    assert trimmed.fingerprint == vocabulary_fingerprint(vocab.tokens[i] for i in trimmed.old_ids.tolist())
    same = 0
    for text in corpus():
        ids = new(text, add_special_tokens=False).input_ids
        assert new.decode(ids) == tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text
        for piece in chunks(text):
            old = torch.tensor(tokenizer(piece, add_special_tokens=False).input_ids)
            if bool(keep[old].all()):
                assert new(piece, add_special_tokens=False).input_ids == trimmed.remap(old).tolist(), piece
                same += 1
    assert same > (0 if fraction == 0.0 else 20)
    if fraction == 1.0:
        assert torch.equal(trimmed.old_ids, torch.arange(len(vocab)))
        text = "\n".join(corpus())
        assert new(text).input_ids == tokenizer(text).input_ids


def test_the_rebuilt_tokenizer_keeps_its_settings_and_reloads(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    _, keep, trimmed = trimmed_at(tokenizer, 0.5)
    new = trimmed.tokenizer
    for name, token in tokenizer.special_tokens_map.items():
        assert getattr(new, name) == token and new.convert_tokens_to_ids(token) == trimmed.remap(torch.tensor(tokenizer.convert_tokens_to_ids(token))).item()
    assert new.chat_template == tokenizer.chat_template
    assert (prepended_bos(new) is None) == (prepended_bos(tokenizer) is None)
    messages = [{"role": "user", "content": "the river"}]
    old_chat = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    new_chat = new.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert new.decode(new_chat) == tokenizer.decode(old_chat) and new_chat[0] == trimmed.remap(torch.tensor(old_chat[0])).item()
    kept_text = next(p for p in chunks(corpus()[0]) if bool(keep[tokenizer(p, add_special_tokens=False).input_ids].all()))
    with_specials = new(kept_text, add_special_tokens=True).input_ids
    assert with_specials == trimmed.remap(torch.tensor(tokenizer(kept_text, add_special_tokens=True).input_ids)).tolist()
    new.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "\n".join(corpus())
    assert reloaded(text).input_ids == new(text).input_ids
    assert reloaded.special_tokens_map == new.special_tokens_map and reloaded.chat_template == new.chat_template
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    dropped = {t for t in read_bpe(tokenizer).tokens} - set(saved["model"]["vocab"])
    assert dropped and not dropped & {a["content"] for a in saved["added_tokens"]}


def test_refusals(tokenizer: PreTrainedTokenizerFast) -> None:
    vocab = read_bpe(tokenizer)
    keep = torch.ones(len(vocab), dtype=torch.bool)
    left = next(m[0] for m in vocab.merges.tolist() if not vocab.required[m[0]])
    broken = keep.clone()
    broken[left] = False  # every token made from it stays
    with pytest.raises(ValueError, match="not closed under the merges"):
        trim_tokenizer(tokenizer, broken, vocab)
    no_bytes = keep.clone()
    no_bytes[vocab.required.nonzero()[0]] = False
    with pytest.raises(ValueError, match="drops 1 required tokens"):
        trim_tokenizer(tokenizer, no_bytes, vocab)
    with pytest.raises(ValueError, match="bool tensor of shape"):
        trim_tokenizer(tokenizer, keep[:-1], vocab)


@pytest.mark.parametrize(
    "model, name",
    [
        (models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"), "WordPiece"),
        (models.Unigram([("<unk>", 0.0), ("a", -1.0)], unk_id=0), "Unigram"),
        (models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"), "WordLevel"),
    ],
)
def test_other_tokenizer_models_are_refused(model, name: str) -> None:
    with pytest.raises(ValueError, match=f"tokenizer model '{name}' is not supported"):
        read_bpe(PreTrainedTokenizerFast(tokenizer_object=Tokenizer(model)))
    plain = Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    with pytest.raises(ValueError, match="without a ByteLevel pre-tokenizer or byte fallback"):
        read_bpe(plain)


def test_a_tokenizers_backend_is_trimmed_too() -> None:
    backend = backend_of(byte_level_tokenizer())
    _, keep, trimmed = trimmed_at(PreTrainedTokenizerFast(tokenizer_object=backend), 0.4)
    rebuilt = trim_tokenizer(backend, keep)
    text = random.Random(0).choice(corpus())
    assert rebuilt.tokenizer(text).input_ids == trimmed.tokenizer(text).input_ids and rebuilt.fingerprint == trimmed.fingerprint
