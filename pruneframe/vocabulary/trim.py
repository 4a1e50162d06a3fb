"""Trim a model and its tokenizer to a vocabulary budget in one call: read, project, rebuild, slice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruneframe.vocabulary.bpe import BpeVocabulary, read_bpe
from pruneframe.vocabulary.closure import project_vocabulary
from pruneframe.vocabulary.rebuild import TrimmedTokenizer, trim_tokenizer
from pruneframe.vocabulary.slicing import SPECIAL_ID_FIELDS, row_cost, slice_vocabulary

__all__ = ["VocabularyTrim", "config_token_ids", "trim_vocabulary"]


@dataclass(frozen=True)
class VocabularyTrim:
    """A model and tokenizer trimmed to a kept vocabulary.

    Attributes:
        model: the model, sliced in place.
        trimmed: the rebuilt tokenizer, the kept old ids in new-id order, the vocabulary fingerprint.
        keep: bool ``[V]``, the kept tokens by old id.
        cost: parameters the kept tokens' rows hold (``row_cost * kept``).
    """

    model: nn.Module
    trimmed: TrimmedTokenizer
    keep: torch.Tensor
    cost: int


def config_token_ids(model: nn.Module) -> list[int]:
    """The BOS/EOS/PAD ids (and the like) of the model's config and generation config."""
    found: list[int] = []
    for config in (model.config, getattr(model, "generation_config", None)):
        for field in SPECIAL_ID_FIELDS:
            value = getattr(config, field, None) if config is not None else None
            found += [] if value is None else [value] if isinstance(value, int) else list(value)
    return sorted(set(found))


def trim_vocabulary(
    model: nn.Module, tokenizer: Any, scores: torch.Tensor, budget: int, *, all_special: bool = True, vocab: BpeVocabulary | None = None
) -> VocabularyTrim:
    """Keep the tokens :func:`~pruneframe.vocabulary.closure.project_vocabulary` chooses within ``budget`` parameters.

    Every token costs :func:`~pruneframe.vocabulary.slicing.row_cost` (its embedding row, and its output
    row unless tied); the tokens the tokenizer needs and the config's special ids are forced. Rows of
    the model beyond the tokenizer's tokens (padding rows some checkpoints carry) hold no token and are
    dropped.

    Args:
        model: a causal LM whose embedding has a row for every token of ``tokenizer``.
        tokenizer: its byte-level BPE or byte-fallback BPE fast tokenizer.
        scores: float ``[V]`` (one per token of ``tokenizer``), higher is more worth keeping.
        budget: the most parameters the kept tokens' rows may hold.
        all_special: force every special added token (see :func:`~pruneframe.vocabulary.bpe.read_bpe`).
        vocab: ``tokenizer``'s vocabulary when already read (its ``forced`` tokens are the ones kept;
            ``all_special`` is then not used).

    Raises:
        VocabularyBudgetError: the forced tokens alone need more than ``budget``.
        ValueError: an unsupported tokenizer, or a model with fewer rows than the tokenizer has tokens.
    """
    rows = model.get_input_embeddings().num_embeddings
    if vocab is None:
        vocab = read_bpe(tokenizer, all_special=all_special, keep=[i for i in config_token_ids(model) if i < len(tokenizer)])
    if rows < len(vocab):
        raise ValueError(f"vocabulary: the model has {rows} embedding rows for a tokenizer of {len(vocab)} tokens")
    cost = row_cost(model)
    keep = project_vocabulary(scores, torch.full((len(vocab),), cost, dtype=torch.int64), vocab.merges, budget, vocab.forced)
    trimmed = trim_tokenizer(tokenizer, keep, vocab)
    slice_vocabulary(model, trimmed.old_ids)
    return VocabularyTrim(model=model, trimmed=trimmed, keep=keep, cost=cost * int(keep.sum()))
