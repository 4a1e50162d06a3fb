"""``vocab``: tokens as units, kept by how often the calibration text uses them, with a floor for every script.

Alone (``vocab``), the vocabulary meets the total budget by itself and every width unit is kept;
``vocab+METHOD`` (``vocab+llm-pruner``, ``vocab+llm-pruner+scales``) shares one total budget with a
width method (:mod:`pruneframe.pipeline.vocab_plan` says how it is split and why the total is exact).
The kept tokens are closed under the tokenizer's merges, so the rebuilt tokenizer cuts any text into
kept tokens and kept text exactly as before (:mod:`pruneframe.vocabulary`).

**Scores.** A token's score is, in this order of precedence:

1. the **floor**: for every class of tokens (the script of its first letter, or digits, punctuation,
   symbols, spaces, partial characters: :mod:`pruneframe.vocabulary.classes`), the ``floor_per_class``
   tokens of that class ranked first by count, then by merge rank, score above every other token, so
   text of a script the calibration text never uses still encodes in short pieces rather than bytes;
2. the **count**: how many times the token occurs in the calibration stream (its ids, tokenized by the
   dense tokenizer);
3. the **merge rank**: among equal counts (zero, most often), a token made by an earlier merge of the
   tokenizer (one its training text used more) goes first; a token no merge makes goes last.

Scores are ``count + prior + floor``: ``prior`` in ``(0, 1)`` falls with the merge rank and ``floor`` is
the stream's length plus one for the floored tokens (0 otherwise). Added tokens (``<|endoftext|>``) get
no floor; the special ones and those the chat template names are kept anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
from pydantic import BeforeValidator, Field

from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.methods import PruningMethod, ScoringContext, not_a_boolean
from pruneframe.pipeline.vocab_method import VocabularyConfig, VocabularyMethod
from pruneframe.vocabulary.bpe import BpeVocabulary
from pruneframe.vocabulary.classes import SPECIAL_CLASS, merge_ranks, token_classes

__all__ = ["VocabConfig", "Vocab", "token_counts", "frequency_scores"]


class VocabConfig(VocabularyConfig):
    """Settings of the ``vocab`` method.

    Attributes:
        floor_per_class: tokens of every class (script, digits, punctuation, ...) that score above all
            others (0: no floor).
    """

    floor_per_class: Annotated[int, BeforeValidator(not_a_boolean), Field(ge=0)] = 32


def token_counts(stream: torch.Tensor, size: int) -> torch.Tensor:
    """How many times each of ``size`` token ids occurs in ``stream`` (ids outside ``0..size-1`` are not counted), int64."""
    ids = stream.reshape(-1).long()
    ids = ids[(ids >= 0) & (ids < size)]
    return torch.bincount(ids, minlength=size)


def frequency_scores(counts: torch.Tensor, vocab: BpeVocabulary, floor_per_class: int) -> torch.Tensor:
    """``count + prior + floor`` per token (float64; see the module docstring)."""
    ranks = merge_ranks(vocab).to(torch.float64)
    last = float(vocab.merges.shape[0] + 1)
    rank = torch.where(ranks == 0, last, ranks)  # tokens no merge makes go after every merge's
    prior = (last + 1 - rank) / (last + 2)
    scores = counts.to(torch.float64) + prior
    if floor_per_class == 0:
        return scores
    bonus = float(counts.sum()) + 1.0
    classes = token_classes(vocab)
    by_class: dict[str, list[int]] = {}
    for token, name in enumerate(classes):
        if name != SPECIAL_CLASS:
            by_class.setdefault(name, []).append(token)
    floored = torch.zeros(len(vocab), dtype=torch.bool)
    for members in by_class.values():
        index = torch.tensor(members, dtype=torch.int64)
        order = torch.sort(-scores[index], stable=True).indices[:floor_per_class]
        floored[index[order]] = True
    return scores + bonus * floored


class Vocab(VocabularyMethod):
    """Token frequency on the calibration text, with a per-class floor (see the module docstring)."""

    name = "vocab"
    Config = VocabConfig
    summary = "tokens as units: calibration-text frequency, a floor of tokens for every script, merge-closed"
    config: VocabConfig

    def score_tokens(self, context: ScoringContext, vocab: BpeVocabulary) -> torch.Tensor:
        """The frequency scores of every token of ``vocab`` on the whole calibration stream."""
        data = context.require_calibration(self.name)
        counts = token_counts(data.tokens, len(vocab))
        data.tokens_read = max(data.tokens_read, len(data))
        context.stats["vocab"] = {"tokens_counted": len(data), "tokens_seen": int((counts > 0).sum()), "floor_per_class": self.config.floor_per_class}
        return frequency_scores(counts, vocab, self.config.floor_per_class)


@hookimpl
def pruneframe_register_methods(register: Callable[[type[PruningMethod]], None]) -> None:
    """Register the ``vocab`` method."""
    register(Vocab)
