"""``distill``: the pruned student fits the dense teacher's next-token distribution (Minitron-style healing).

The loss is the KL divergence from the teacher's distribution to the student's on every position of
the recovery text, over the teacher's top-k tokens plus one bucket for the rest
(:func:`pruneframe.recovery.teacher.top_k_kl`), plus optionally a mean-squared error between the two
final hidden states. The teacher's outputs are computed once per comparison and shared by every
method and seed. The student trains all its weights but the embeddings (``adapter: full``) or LoRA
adapters merged at the end (``adapter: lora``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from pruneframe.util.devices import model_device
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.recovery import Recovery, RecoveryConfig, RecoveryContext
from pruneframe.recovery.adapters import LoraSettings, check_targets, merge_lora, with_lora
from pruneframe.recovery.base import trainable
from pruneframe.recovery.loop import train
from pruneframe.recovery.teacher import TeacherTargets, top_k_kl


class DistillConfig(RecoveryConfig):
    """The shared recovery settings plus distillation's.

    Attributes:
        top_k: teacher logits kept per position.
        temperature: softening of both distributions (the loss is scaled by its square).
        hidden_weight: weight of the final-hidden-state term (0: logits only).
        adapter: ``full`` trains every weight but the embeddings and output head; ``lora`` trains
            adapters (settings in ``lora``, learning rate ``lr``) and merges them.
        train_embeddings: with ``adapter: full``, also train the input embeddings and output head.
        lora: LoRA's settings when ``adapter`` is ``lora``.
    """

    top_k: Annotated[int, Field(ge=1)] = 64
    temperature: Annotated[float, Field(gt=0)] = 1.0
    hidden_weight: Annotated[float, Field(ge=0)] = 0.0
    adapter: Literal["full", "lora"] = "full"
    train_embeddings: bool = False
    lora: LoraSettings = Field(default_factory=LoraSettings)


def distillation_loss(
    model: nn.Module, sequences: torch.Tensor, teacher: TeacherTargets, config: DistillConfig
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """``(rows, weight) -> mean loss`` of the student on ``sequences[rows]`` against the teacher, backpropagated times ``weight``."""
    device = model_device(model)

    def loss_backward(rows: torch.Tensor, weight: float) -> torch.Tensor:
        ids = sequences[rows].to(device)
        values, indices, lse, hidden = teacher.rows(rows, device)
        out = model(input_ids=ids, output_hidden_states=config.hidden_weight > 0, use_cache=False)
        loss = top_k_kl(out.logits, values, indices, lse, config.temperature)
        if config.hidden_weight > 0 and hidden is not None:
            student = out.hidden_states[-1].float()
            target = hidden.float()
            loss = loss + config.hidden_weight * (student - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)
        (loss * weight).backward()
        return loss.detach()

    return loss_backward


def _embedding_params(model: nn.Module) -> set[int]:
    ids = {id(p) for p in model.get_input_embeddings().parameters()}
    head = model.get_output_embeddings()
    return ids | ({id(p) for p in head.parameters()} if head is not None else set())


class DistillRecovery(Recovery):
    """Knowledge distillation from the dense model (top-k KL on the logits, optional hidden-state term)."""

    name = "distill"
    Config = DistillConfig
    summary = "distillation from the dense model: top-k KL on the logits (+ hidden states), full or LoRA"
    needs_teacher = True

    def teacher_top_k(self) -> int:
        """The teacher logits kept per position."""
        return self.config.top_k

    def teacher_hidden(self) -> bool:
        """Whether the hidden-state term needs the teacher's final hidden states."""
        return self.config.hidden_weight > 0

    def check(self, model: nn.Module) -> None:
        """LoRA targets must exist when ``adapter`` is ``lora``."""
        if self.config.adapter == "lora":
            check_targets(model, self.config.lora.target_modules)

    def recover(self, model: nn.Module, context: RecoveryContext) -> nn.Module:
        """Train the student on the stream against ``context.teacher``."""
        if context.teacher is None:
            raise ValueError("recovery 'distill' needs the dense model's outputs (a teacher); none was given")
        if self.config.adapter == "lora":
            for p in model.parameters():
                p.requires_grad_(False)
            student = with_lora(model, self.config.lora)
        else:
            frozen = set() if self.config.train_embeddings else _embedding_params(model)
            for p in model.parameters():
                p.requires_grad_(id(p) not in frozen)
            student = model
        student.train()
        loss = distillation_loss(student, context.stream.sequences, context.teacher, self.config)
        stats = train(
            trainable(student), loss, context.stream, self.config, name=self.name, fingerprint=context.stats.get("fingerprint", {}), progress=context.progress
        )
        context.stats["train"] = stats
        result = merge_lora(student) if self.config.adapter == "lora" else student
        for p in result.parameters():
            p.requires_grad_(False)
        return result.eval()


@hookimpl
def pruneframe_register_recoveries(register: Callable[[type[Recovery]], None]) -> None:
    """Register ``distill``."""
    register(DistillRecovery)
