"""What a recovery is: a typed config, a rule that heals a folded model, and the record it leaves.

A recovery runs after the fold. It may train the model's weights (directly or through an adapter it
merges back) but never changes a width or the parameter count: its result is still a plain dense
checkpoint of the pruned shape. Every method in a comparison gets the same recovery, on the same
tokens in the same order, so recovered results stay comparable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from pruneframe.pipeline.methods import Seed
from pruneframe.pipeline.prune_report import RecoveryRecord

if TYPE_CHECKING:
    from pruneframe.recovery.stream import RecoveryStream
    from pruneframe.recovery.teacher import TeacherTargets

__all__ = ["RecoveryConfig", "Recovery", "RecoveryContext", "RecoveryRecord", "Schedule"]

Schedule = Literal["constant", "cosine", "linear"]


class RecoveryConfig(BaseModel):
    """Settings every recovery shares. Subclass it (``extra="forbid"`` is inherited) for a recovery's own.

    The defaults were chosen on development text (WikiText-2 validation) with SmolLM2-135M pruned at
    keep 0.5; no evaluation text was read to choose them.

    Attributes:
        tokens: the token budget: ``tokens // seq_len`` whole sequences are trained on, once each.
        seq_len: tokens per training sequence.
        batch_size: sequences per optimiser step (split across ``torchrun`` ranks).
        lr: peak learning rate (AdamW).
        schedule: learning-rate schedule after warm-up: ``constant``, ``cosine`` or ``linear`` decay to 0.
        warmup: fraction of the steps spent warming up linearly from 0.
        weight_decay: AdamW weight decay.
        max_grad_norm: clip the global gradient norm to this (``None``: no clipping).
        seed: seeds the order of the sequences and any dropout.
        checkpoint_dir: keep resumable state there (``None``: not kept); a run started again continues
            after its last saved step.
        checkpoint_every: optimiser steps between two saves of the resumable state.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: Annotated[int, Field(ge=1)] = 16384
    seq_len: Annotated[int, Field(ge=2)] = 256
    batch_size: Annotated[int, Field(ge=1)] = 4
    lr: Annotated[float, Field(gt=0)] = 1e-4
    schedule: Schedule = "cosine"
    warmup: Annotated[float, Field(ge=0, lt=1)] = 0.05
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0
    seed: Seed = 0
    checkpoint_dir: str | None = None
    checkpoint_every: Annotated[int, Field(ge=1)] = 50

    def sequences(self) -> int:
        """Whole sequences the token budget buys."""
        return self.tokens // self.seq_len


@dataclass
class RecoveryContext:
    """Runtime state a recovery gets (never part of a config).

    Attributes:
        stream: the training sequences, in the order every method gets them.
        teacher: the dense model's outputs on ``stream`` (``None`` when the recovery needs none).
        progress: show a progress bar.
        stats: numbers the recovery reports (losses per step, ...), copied into the record.
    """

    stream: RecoveryStream
    teacher: TeacherTargets | None = None
    progress: bool = True
    stats: dict[str, Any] = field(default_factory=dict)


class Recovery(ABC):
    """Base class of every recovery. Subclasses set ``name``, ``Config`` and implement :meth:`recover`."""

    name: ClassVar[str]
    Config: ClassVar[type[RecoveryConfig]] = RecoveryConfig
    summary: ClassVar[str] = ""
    #: Whether :meth:`recover` reads the dense model's outputs (``context.teacher``).
    needs_teacher: ClassVar[bool] = False
    #: Whether :meth:`recover` trains on the stream (``False`` for ``none``: no text is read).
    trains: ClassVar[bool] = True

    def __init__(self, config: RecoveryConfig | dict[str, Any] | None = None) -> None:
        if isinstance(config, RecoveryConfig):
            config = config.model_dump()
        self.config = self.Config.model_validate(config or {})

    def teacher_top_k(self) -> int:
        """How many of the teacher's top logits per position :meth:`recover` reads (0: none)."""
        return 0

    def teacher_hidden(self) -> bool:
        """Whether :meth:`recover` reads the teacher's final hidden states."""
        return False

    def check(self, model: nn.Module) -> None:
        """Raise ``ValueError`` naming the setting when this recovery cannot run on ``model``."""

    @abstractmethod
    def recover(self, model: nn.Module, context: RecoveryContext) -> nn.Module:
        """Heal ``model`` and return it (the same module or one of the same shape); widths never change."""

    def label(self) -> str:
        """A short name for tables: ``distill 64k``; ``none`` for no recovery."""
        if self.name == "none":
            return "none"
        tokens = self.config.sequences() * self.config.seq_len
        return f"{self.name} {tokens // 1024}k" if tokens % 1024 == 0 else f"{self.name} {tokens}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


def trainable(model: nn.Module) -> list[torch.Tensor]:
    """The parameters of ``model`` that require gradients, in a fixed order."""
    return [p for p in model.parameters() if p.requires_grad]
