"""Vocabulary as a unit: tokens scored, projected to a budget closed under the BPE merges, the tokenizer rebuilt and the model sliced.

- :mod:`~pruneframe.vocabulary.closure`: the pure projection of per-token scores to a kept mask that is
  closed under the merges, holds the forced tokens and meets a parameter budget tightly.
- :mod:`~pruneframe.vocabulary.bpe`: a byte-level BPE's or a byte-fallback BPE's tokens, merges and
  always-kept tokens.
- :mod:`~pruneframe.vocabulary.rebuild`: the tokenizer rebuilt to the kept tokens, with the old ids of
  the new ones and a fingerprint of the kept vocabulary.
- :mod:`~pruneframe.vocabulary.slicing`: a causal LM's embedding and output rows sliced to the kept tokens.
- :mod:`~pruneframe.vocabulary.trim`: all four in one call, for a model, its tokenizer, scores and a budget.
"""

from pruneframe.vocabulary.bpe import BpeKind, BpeVocabulary, read_bpe
from pruneframe.vocabulary.closure import VocabularyBudgetError, addable, closure, is_closed, merge_parents, project_vocabulary
from pruneframe.vocabulary.rebuild import TrimmedTokenizer, trim_tokenizer, vocabulary_fingerprint
from pruneframe.vocabulary.slicing import row_cost, slice_vocabulary
from pruneframe.vocabulary.trim import VocabularyTrim, config_token_ids, trim_vocabulary

__all__ = [
    "BpeKind",
    "BpeVocabulary",
    "read_bpe",
    "VocabularyBudgetError",
    "addable",
    "closure",
    "is_closed",
    "merge_parents",
    "project_vocabulary",
    "TrimmedTokenizer",
    "trim_tokenizer",
    "vocabulary_fingerprint",
    "row_cost",
    "slice_vocabulary",
    "VocabularyTrim",
    "config_token_ids",
    "trim_vocabulary",
]
