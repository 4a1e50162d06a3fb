"""The evaluator contract: a named, configured object that measures a model and stamps its protocol."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel

__all__ = ["EvalContext", "Evaluator"]


@dataclass
class EvalContext:
    """Runtime facts an evaluator may use (plain state, never part of a config).

    Attributes:
        dense_model: the unpruned model, for evaluators that report pruned-vs-dense ratios.
        dense_tokenizer: its tokenizer where it differs from the evaluated model's (a trimmed vocabulary);
            ``None``: the two models share the tokenizer the evaluator is given.
        device: where the model lives (``"cpu"``, ``"cuda:0"``).
        dtype: the dtype name the model was loaded with.
        progress: show progress bars.
        seed: seed for anything random (synthetic inputs, sampling).
    """

    dense_model: Any | None = None
    dense_tokenizer: Any | None = None
    device: str = "cpu"
    dtype: str = "float32"
    progress: bool = True
    seed: int = 0


class Evaluator(ABC):
    """Base class of every evaluator.

    Subclasses set ``name`` (the key results are filed under) and ``Config`` (a pydantic model with
    ``extra="forbid"``), and implement :meth:`evaluate`, whose result always holds a ``protocol`` dict.
    """

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    #: Whether the result depends only on the model's shapes (size, speed), not on its weights' values:
    #: such an evaluator is not run again on a recovered model, whose shapes are the pruned model's.
    shape_only: ClassVar[bool] = False

    def __init__(self, config: BaseModel | Mapping[str, Any] | None = None) -> None:
        """Validate ``config`` (a ``Config`` instance, a mapping, or None for the defaults)."""
        if config is None:
            config = self.Config()
        elif isinstance(config, Mapping):
            config = self.Config.model_validate(dict(config))
        elif not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__}: config must be a {self.Config.__name__} or a mapping, got {type(config).__name__}")
        self.config = config

    def check(self, tokenizer: Any) -> None:
        """Raise ``ValueError`` when the data this evaluator reads cannot serve ``tokenizer`` (default: nothing to check).

        Called once the tokenizer is loaded and before any model is measured, so a run that could never
        finish is refused up front.
        """

    @abstractmethod
    def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, Any]:
        """Measure ``model``; return a JSON-ready dict that includes ``"protocol"``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"
