"""Vocabulary methods, whose units are the tokens, and their composition with a width method (``vocab+METHOD``).

A :class:`VocabularyMethod` scores every token of a BPE tokenizer (:meth:`~VocabularyMethod.score_tokens`);
the session keeps the best-scored tokens that fit its share of the budget, closed under the merges
(:func:`~pruneframe.vocabulary.closure.project_vocabulary`), rebuilds the tokenizer and slices the
embedding and output rows (:mod:`pruneframe.vocabulary`). Used alone, it keeps every width unit and
the vocabulary alone meets the budget.

``VOCAB+METHOD`` (``vocab+llm-pruner``, ``vocab+llm-pruner+scales``) is a :class:`VocabularyComposition`:
the width method's scores, minimums, projection settings and recalibration, with the vocabulary method's
token scores, sharing one total budget (:mod:`pruneframe.pipeline.vocab_plan` splits it). Its config is
the width method's plus one field, ``vocab``, holding the vocabulary method's settings, so it
round-trips through :meth:`pruneframe.pipeline.host.PluginHost.method` like any method's.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Annotated, Literal

import torch
from pydantic import BeforeValidator, Field, create_model

from pruneframe.pipeline.methods import MethodConfig, PruningMethod, Recalibration, ScoringContext, not_a_boolean
from pruneframe.pipeline.units import UnitSet

if TYPE_CHECKING:
    from pruneframe.architectures.rotation import StreamBases
    from pruneframe.vocabulary.bpe import BpeVocabulary

__all__ = [
    "VOCAB_SEPARATOR",
    "VocabKeep",
    "VocabularyConfig",
    "VocabularyMethod",
    "VocabularyComposition",
    "vocabulary_part",
    "width_part",
    "trims_vocabulary",
]

#: Joins a vocabulary method's name and a width method's name (``vocab+llm-pruner``).
VOCAB_SEPARATOR = "+"

#: A share of the tokens to keep, ``"budget"`` or ``"balanced"`` (see :class:`VocabularyConfig`).
VocabKeep = Annotated[float, BeforeValidator(not_a_boolean), Field(gt=0, le=1)] | Literal["budget", "balanced"]


class VocabularyConfig(MethodConfig):
    """Settings every vocabulary method has. Subclass it for a method's own.

    Attributes:
        vocab_keep: how much of the budget the vocabulary takes before the width units are projected.
            ``None`` (the default): ``"budget"`` alone, ``"balanced"`` in a composition. ``"budget"``:
            the vocabulary is cut as far as its forced tokens allow, the width units projected on what
            remains, then the vocabulary widens into what they leave (alone: every unit is kept, so
            the vocabulary alone meets the budget). ``"balanced"``: the largest share of the tokens
            that is at most the share of the width units' parameters the budget then leaves, so both
            are cut by about the same fraction. A number: that share of the tokens (rounded up),
            before widening. Only ``"budget"`` is valid alone.
        keep_special: keep every special added token (the tokenizer's named special tokens, the chat
            template's tokens and the config's BOS/EOS/PAD ids are kept either way).
    """

    vocab_keep: VocabKeep | None = None
    keep_special: bool = True


class VocabularyMethod(PruningMethod):
    """A method whose units are the tokens: :meth:`score_tokens` gives one score per token; every width unit is kept."""

    Config = VocabularyConfig
    config: VocabularyConfig

    @abstractmethod
    def score_tokens(self, context: ScoringContext, vocab: "BpeVocabulary") -> torch.Tensor:
        """One float score per token of ``vocab`` (the tokenizer's, read by :func:`~pruneframe.vocabulary.read_bpe`); higher = keep."""

    def score(self, context: ScoringContext) -> torch.Tensor:
        """Every width unit scores alike: alone, the width budget holds all of them."""
        return torch.ones(len(context.units))


_CONFIG_CLASSES: dict[tuple[type[MethodConfig], type[VocabularyConfig]], type[MethodConfig]] = {}


def _composition_config(width: type[MethodConfig], vocabulary: type[VocabularyConfig]) -> type[MethodConfig]:
    """The width method's config class plus a ``vocab`` field of the vocabulary method's config class."""
    key = (width, vocabulary)
    if key not in _CONFIG_CLASSES:
        if "vocab" in width.model_fields:
            raise TypeError(f"{width.__name__} has its own 'vocab' field; it cannot be composed with a vocabulary method")
        _CONFIG_CLASSES[key] = create_model(  # type: ignore[call-overload]
            f"{width.__name__}With{vocabulary.__name__}",
            __base__=width,
            vocab=(vocabulary, Field(default_factory=vocabulary, description="the vocabulary method's settings")),
        )
    return _CONFIG_CLASSES[key]


class VocabularyComposition(PruningMethod):
    """A vocabulary method's token scores beside a width method (see the module docstring).

    Attributes:
        vocabulary: the method that scores the tokens.
        width: the method whose scores, minimums, projection settings and recalibration are used.
        name: ``"<vocabulary>+<width>"``.
        config: the width method's settings plus ``vocab`` (the vocabulary method's settings).
    """

    name = ""  # set per instance

    def __init__(self, vocabulary: VocabularyMethod, width: PruningMethod) -> None:
        if isinstance(width, (VocabularyMethod, VocabularyComposition)):
            raise ValueError(f"{vocabulary.name}{VOCAB_SEPARATOR}{width.name}: a vocabulary method composes with a width method, not another vocabulary method")
        self.vocabulary = vocabulary
        self.width = width
        self.name = f"{vocabulary.name}{VOCAB_SEPARATOR}{width.name}"  # type: ignore[misc]
        self.Config = _composition_config(type(width.config), type(vocabulary.config))  # type: ignore[misc]
        self.summary = f"{vocabulary.name}'s tokens with {width.name}'s width units, one total budget"  # type: ignore[misc]
        self.config = self.Config.model_validate({**width.config.model_dump(), "vocab": vocabulary.config})

    @property
    def rotates_hidden(self) -> bool:  # type: ignore[override]
        """Whether the width method rotates the residual stream."""
        return self.width.rotates_hidden

    @property
    def residual_shortcuts(self) -> bool:  # type: ignore[override]
        """Whether the width method's rotation adds residual shortcut matrices."""
        return self.width.residual_shortcuts

    def score(self, context: ScoringContext) -> torch.Tensor:
        """The width method's scores."""
        return self.width.score(context)

    def score_hidden(self, context: ScoringContext) -> torch.Tensor:
        """The width method's hidden-channel scores."""
        return self.width.score_hidden(context)

    def hidden_rotation(self, context: ScoringContext) -> torch.Tensor | StreamBases | None:
        """The width method's basis of the residual stream."""
        return self.width.hidden_rotation(context)

    def recalibrate(self, context: ScoringContext, mask: torch.Tensor) -> Recalibration | None:
        """The width method's recalibration for ``mask``."""
        return self.width.recalibrate(context, mask)

    def minimum(self, units: UnitSet) -> torch.Tensor:
        """The width method's minimums."""
        return self.width.minimum(units)

    def removable(self, units: UnitSet) -> torch.Tensor:
        """The width method's removable blocks."""
        return self.width.removable(units)

    def code_parts(self) -> tuple[object, ...]:
        """The vocabulary method, then the width method's parts."""
        return (self.vocabulary, *self.width.code_parts())

    def __repr__(self) -> str:
        return f"VocabularyComposition({self.vocabulary!r}, {self.width!r})"


def vocabulary_part(method: PruningMethod) -> VocabularyMethod | None:
    """The method that scores the tokens: ``method`` itself, a composition's vocabulary method, or None."""
    if isinstance(method, VocabularyComposition):
        return method.vocabulary
    return method if isinstance(method, VocabularyMethod) else None


def width_part(method: PruningMethod) -> PruningMethod | None:
    """The method that cuts the width units: a composition's width method, ``method`` itself, or None for a vocabulary method alone."""
    if isinstance(method, VocabularyComposition):
        return method.width
    return None if isinstance(method, VocabularyMethod) else method


def trims_vocabulary(method: PruningMethod) -> bool:
    """Whether a prune with ``method`` trims the vocabulary (and so rebuilds the tokenizer)."""
    return vocabulary_part(method) is not None
