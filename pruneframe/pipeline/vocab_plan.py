"""A prune that trims the vocabulary: one total budget split between the tokens and the width units.

Every token costs the same ``c`` parameters (its embedding row, and its output row unless tied:
:func:`~pruneframe.vocabulary.row_cost`). With ``R`` embedding rows (``V`` of them tokens, the rest
padding rows no token uses, always dropped), ``F`` the parameters that are neither width units nor
embedding/output rows, and ``T`` the total budget:

1. **The vocabulary's first share**, ``k0`` tokens, from ``vocab_keep``: ``"budget"`` takes the
   fewest the tokenizer allows (its forced tokens and the tokens they are built from), a number ``f``
   takes ``ceil(f * V)``, and ``"balanced"`` the largest ``k0`` with ``k0 / V <= (T - F - k0 * c) / P``
   (``P``: every width unit's cost), i.e. ``k0 = floor(V * (T - F) / (P + V * c))``: the same share
   of the tokens as of the width units' parameters.
2. **The width units** are projected by the session's projector on what remains,
   ``T - F - k0 * c`` (all of them when that covers ``P``), exactly as for any method.
3. **The vocabulary widens** into what the units leave: the tokens are projected
   (:func:`~pruneframe.vocabulary.project_vocabulary`, closed under the merges) with the budget
   ``B = T - F - spent``, ``spent`` being what the unit mask costs.

**Why the total is exact.** The projection of uniform-cost tokens is tight, so it keeps
``k1 = min(V, floor(B / c))`` tokens: what is left, ``L = B - k1 * c``, is below ``c`` unless every
token is kept, and no dropped token whose parts are kept fits. The units left ``u = T - F - k0 * c - spent``
unspent, less than any admissible unit addition (the projector's exactness); ``B = k0 * c + u``, so
``k1 >= k0`` and ``L <= u``: no dropped unit fits either. The pruned model holds ``T - L`` parameters.
Parameters a recalibration adds (output biases on layers without one) are outside the budget, as
for every method (the report's ``added_params``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruneframe.pipeline.methods import HiddenOptions, PruningMethod, ScoringContext
from pruneframe.pipeline.projection import BudgetError
from pruneframe.pipeline.prune_report import VocabularyRecord
from pruneframe.pipeline.units import UnitSet
from pruneframe.pipeline.vocab_method import VocabularyMethod, vocabulary_part, width_part
from pruneframe.vocabulary.bpe import BpeVocabulary, read_bpe
from pruneframe.vocabulary.closure import closure
from pruneframe.vocabulary.slicing import row_cost
from pruneframe.vocabulary.trim import VocabularyTrim, config_token_ids, trim_vocabulary

__all__ = ["VocabularyPlan", "vocabulary_plan"]


@dataclass(frozen=True)
class VocabularyPlan:
    """How one prune splits its total budget between the tokens and the width units.

    Attributes:
        method: the vocabulary method that scores the tokens.
        vocab: the tokenizer's vocabulary (its forced tokens include the config's special ids).
        row_cost: ``c``, parameters per token.
        rows: ``R``, the dense model's embedding rows.
        fixed: ``F``, the parameters that are neither width units nor embedding/output rows.
        target_total: ``T``, the most parameters the pruned model may have.
        keep: the rule that set :attr:`initial_tokens` (``"budget"``, ``"balanced"`` or a share).
        minimum_tokens: the forced tokens and the tokens they are built from.
        initial_tokens: ``k0``, the vocabulary's first share in tokens.
    """

    method: VocabularyMethod
    vocab: BpeVocabulary
    row_cost: int
    rows: int
    fixed: int
    target_total: int
    keep: str | float
    minimum_tokens: int
    initial_tokens: int

    @property
    def tokens(self) -> int:
        """``V``, the tokenizer's tokens."""
        return len(self.vocab)

    def unit_target(self) -> int:
        """What the budget leaves the width units after the vocabulary's first share."""
        return self.target_total - self.fixed - self.initial_tokens * self.row_cost

    def vocabulary_budget(self, unit_spent: int) -> int:
        """What is left for the tokens once the width units spend ``unit_spent``."""
        return self.target_total - self.fixed - unit_spent

    def score_tokens(self, context: ScoringContext) -> torch.Tensor:
        """The vocabulary method's token scores, checked (one real number per token, no NaN), as float64 on the CPU."""
        scores = self.method.score_tokens(context, self.vocab)
        if not isinstance(scores, torch.Tensor) or scores.shape != (self.tokens,) or not (scores.dtype.is_floating_point or scores.dtype == torch.int64):
            got = f"{scores.dtype} {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"method {self.method.name!r} returned token scores {got}, expected ({self.tokens},) real numbers")
        scores = scores.detach().to("cpu", torch.float64)
        if bool(torch.isnan(scores).any()):
            raise ValueError(f"method {self.method.name!r} returned NaN token scores (first at token {int(torch.isnan(scores).nonzero()[0, 0])})")
        return scores

    def trim(self, model: nn.Module, tokenizer: Any, scores: torch.Tensor, unit_spent: int) -> tuple[VocabularyTrim, VocabularyRecord]:
        """Keep the tokens that fit what the width units left (``unit_spent``: what their mask costs), in ``model`` and ``tokenizer``.

        Returns the trim (the sliced ``model``, the rebuilt tokenizer) and its record for the report.
        """
        budget = self.vocabulary_budget(unit_spent)
        trim = trim_vocabulary(model, tokenizer, scores, budget, vocab=self.vocab)
        record = VocabularyRecord(
            tokens=trim.trimmed.old_ids.numel(),
            dense_tokens=self.tokens,
            dense_rows=self.rows,
            row_cost=self.row_cost,
            params=trim.cost,
            budget_params=budget,
            initial_tokens=self.initial_tokens,
            keep=str(self.keep),
            fingerprint=trim.trimmed.fingerprint,
        )
        return trim, record


def _balanced(tokens: int, cost: int, free: int, units: int) -> int:
    """The largest ``k`` with ``k / tokens <= (free - k * cost) / units`` (``free``: what the tokens and units share)."""
    return max(0, min(tokens, (tokens * free) // (units + tokens * cost))) if free > 0 else 0


def _first_share(keep: str | float, plan: dict[str, Any], units: UnitSet, name: str) -> int:
    """``k0`` for ``vocab_keep`` ``keep`` (see the module docstring)."""
    tokens, least = plan["tokens"], plan["minimum_tokens"]
    if keep == "budget":
        return least
    if keep == "balanced":
        return max(least, _balanced(tokens, plan["row_cost"], plan["target_total"] - plan["fixed"], units.prunable_params))
    count = min(tokens, math.ceil(float(keep) * tokens - 1e-9))
    if count < least:
        raise BudgetError(
            f"method {name!r}: vocab_keep {keep} keeps {count:,} of {tokens:,} tokens, fewer than the {least:,} the tokenizer needs "
            f"(its forced tokens and the tokens they are built from: vocab_keep >= {least / tokens:.4g})"
        )
    return count


def vocabulary_plan(method: PruningMethod, model: nn.Module, units: UnitSet, tokenizer: Any, target_total: int, hidden: bool = False) -> VocabularyPlan | None:
    """The plan for ``method`` on ``model`` when it trims the vocabulary, else None.

    Args:
        method: the session's method (a vocabulary method, a composition or any other method).
        model: the dense model.
        units: its width units.
        tokenizer: its tokenizer (a byte-level BPE, or a BPE with byte fallback).
        target_total: the most parameters the pruned model may have.
        hidden: whether the prune also cuts the hidden dimension (refused: the rows' cost would change).

    Raises:
        ValueError: no tokenizer, a tokenizer that is not BPE (the message names its type), a hidden cut,
            or a ``vocab_keep`` other than ``budget`` without a width method.
        BudgetError: the budget cannot hold the forced tokens, or (alone) cannot be met by the vocabulary.
    """
    vocabulary = vocabulary_part(method)
    if vocabulary is None:
        return None
    name = method.name
    if tokenizer is None:
        raise ValueError(f"method {name!r} trims the vocabulary: pass the model's tokenizer (PruneSession(..., tokenizer=...))")
    width = width_part(method)
    if hidden or (width is not None and isinstance(width.config, HiddenOptions) and width.config.hidden_keep is not None) or method.rotates_hidden:
        raise ValueError(f"method {name!r}: trimming the vocabulary is not combined with cutting the hidden dimension yet; set hidden_keep: null")
    keep = vocabulary.config.vocab_keep or ("budget" if width is None else "balanced")
    if width is None and keep != "budget":
        raise ValueError(
            f"method {name!r}: vocab_keep {keep!r} leaves the rest of the budget to a width method; compose one (vocab+llm-pruner) or use 'budget'"
        )
    try:
        vocab = read_bpe(tokenizer, all_special=vocabulary.config.keep_special, keep=[i for i in config_token_ids(model) if i < len(tokenizer)])
    except ValueError as exc:
        raise ValueError(f"method {name!r} cannot trim the vocabulary of {type(tokenizer).__name__}: {exc}") from exc
    rows = int(model.get_input_embeddings().num_embeddings)
    if rows < len(vocab):
        raise ValueError(f"method {name!r}: the model has {rows} embedding rows for a tokenizer of {len(vocab)} tokens")
    cost = row_cost(model)
    fixed = units.nonprunable_params - rows * cost
    least = int(closure(vocab.forced, vocab.merges).sum())
    plan = {"tokens": len(vocab), "row_cost": cost, "fixed": fixed, "target_total": target_total, "minimum_tokens": least}
    first = _first_share(keep, plan, units, name)
    result = VocabularyPlan(vocabulary, vocab, cost, rows, fixed, target_total, keep, least, first)
    if result.unit_target() < 0:
        raise BudgetError(
            f"method {name!r}: the budget of {target_total:,} parameters cannot hold the {first:,} tokens of vocab_keep {keep!r} "
            f"({first * cost:,} parameters) beside the {fixed:,} parameters no prune removes"
        )
    if width is None and result.unit_target() < units.prunable_params:
        short = units.prunable_params - result.unit_target()
        raise BudgetError(
            f"method {name!r}: the vocabulary alone cannot meet the budget: with only its {least:,} forced tokens the model still "
            f"has {short:,} parameters too many; raise the budget or compose a width method (vocab+llm-pruner)"
        )
    return result
