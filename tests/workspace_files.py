"""The files of the shared test workspace: a tiny saved Llama with a word-level tokenizer, texts and a task."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tiny import tiny_model

WORDS = (
    "the a of and to in is was for on as with by at from that this it his her they which an be are were "
    "river city music game team season album film church school war king army road station park island"
).split()
SPECIALS = ["[UNK]", "<eos>"]
TASK_ROWS = [
    {"question": "the river is", "choices": ["water", "music"], "label": 0},
    {"question": "the king of the", "choices": ["army", "album"], "label": 0},
    {"question": "a game for the", "choices": ["team", "road"], "label": 0},
    {"question": "the film was", "choices": ["church", "album"], "label": 1},
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over :data:`WORDS` (ids below the tiny model's vocabulary of 97)."""
    vocab = {token: i for i, token in enumerate([*SPECIALS, *WORDS, ":", "?", "Question", "Answer", "water"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<eos>", pad_token="<eos>")


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 split rule) of 300 tokens, trained in code: one a GGUF file can carry."""
    from tokenizers import decoders, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>", "<|im_start|>"], show_progress=False
    )
    tok.train_from_iterator([random_text(9, 600)] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|endoftext|>")


def random_text(seed: int, words: int) -> str:
    """Seeded random sentences (different seeds never share a 200-character passage)."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) + " ." for _ in range(words // 12)]
    return "\n".join(lines) + "\n"


def make_workspace(root: Path) -> dict[str, Path]:
    """A tiny model folder with its tokenizer, calibration/evaluation text files and a zero-shot task."""
    root.mkdir(parents=True, exist_ok=True)
    model_dir = root / "tiny-llama"
    tiny_model("llama-gqa").save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    paths = {
        "model": model_dir,
        "calib": root / "calib.txt",
        "eval": root / "eval.txt",
        "task": root / "tiny_mc.jsonl",
        "data_dir": root / "no-shared-data",
        "other": root / "other" / "other.txt",
    }
    paths["calib"].write_text(random_text(1, 3000))
    paths["eval"].write_text(random_text(2, 1500))  # beside the calibration text: the same domain
    paths["other"].parent.mkdir()
    paths["other"].write_text(random_text(3, 1500))  # another folder: another domain
    paths["task"].write_text("".join(json.dumps(r) + "\n" for r in TASK_ROWS))
    paths["data_dir"].mkdir()
    return paths


def cli_flags(
    command: str,
    ws: dict[str, Path],
    out: Path,
    *extra: str,
    seq_len: int = 32,
    zeroshot_limit: int | None = None,
    quiet: bool = True,
) -> list[str]:
    """Flags of a fast ``compare`` or ``eval`` on the workspace's tiny model: its texts, 2 windows, no speed.

    ``compare`` also calibrates on the workspace's calibration text. With ``zeroshot_limit`` the
    workspace's task runs on that many items; without it zero-shot is off. ``extra`` flags come last.
    """
    flags = [command, "--model", str(ws["model"])]
    if command == "compare":
        flags += ["--calib", str(ws["calib"])]
    flags += ["--eval-data", str(ws["eval"]), "--seq-len", str(seq_len), "--eval-windows", "2"]
    flags += ["--zeroshot", "none"] if zeroshot_limit is None else ["--zeroshot", str(ws["task"]), "--zeroshot-limit", str(zeroshot_limit)]
    flags += ["--no-speed", "--out", str(out)] + (["--quiet"] if quiet else [])
    return [*flags, *extra]


def prune_flags(ws: dict[str, Path], out: Path, budget: str = "0.5") -> list[str]:
    """A cheap, valid ``prune`` command line on the workspace's tiny model (random scores)."""
    return ["prune", "--model", str(ws["model"]), "--method", "random", "--budget", budget, "--calib", str(ws["calib"]), "--out", str(out), "--quiet"]
