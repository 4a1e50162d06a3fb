"""``lora``: LoRA adapters (PEFT) trained on next-token prediction of the recovery text, then merged.

The recipe LLM-Pruner heals with: the backbone frozen, low-rank adapters on the decoder's linear
layers trained with the language-model loss, merged into the weights at the end, so the result has
exactly the pruned model's parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from torch import nn

from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.recovery import Recovery, RecoveryConfig, RecoveryContext
from pruneframe.recovery.adapters import LoraSettings, check_targets, merge_lora, with_lora
from pruneframe.recovery.base import trainable
from pruneframe.recovery.loop import train
from pruneframe.util.devices import model_device


class LoraConfig(RecoveryConfig):
    """The shared recovery settings plus LoRA's (defaults: rank 8, learning rate 1e-3, every decoder linear layer)."""

    lr: float = Field(1e-3, gt=0)
    lora: LoraSettings = Field(default_factory=LoraSettings)


def next_token_loss(model: nn.Module, sequences: torch.Tensor) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """``(rows, weight) -> mean next-token loss`` on ``sequences[rows]``, backpropagated times ``weight``."""
    device = model_device(model)

    def loss_backward(rows: torch.Tensor, weight: float) -> torch.Tensor:
        ids = sequences[rows].to(device)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        (loss * weight).backward()
        return loss.detach()

    return loss_backward


class LoraRecovery(Recovery):
    """Next-token fine-tuning through LoRA adapters, merged at the end."""

    name = "lora"
    Config = LoraConfig
    summary = "LoRA adapters (PEFT) on next-token loss, merged into the weights"

    def check(self, model: nn.Module) -> None:
        """Every target module must be a linear layer of ``model``."""
        check_targets(model, self.config.lora.target_modules)

    def recover(self, model: nn.Module, context: RecoveryContext) -> nn.Module:
        """Wrap, train on the stream, merge."""
        for p in model.parameters():
            p.requires_grad_(False)
        wrapped = with_lora(model, self.config.lora)
        wrapped.train()
        stats = train(
            trainable(wrapped),
            next_token_loss(wrapped, context.stream.sequences),
            context.stream,
            self.config,
            name=self.name,
            fingerprint=context.stats.get("fingerprint", {}),
            progress=context.progress,
        )
        context.stats["train"] = stats
        return merge_lora(wrapped).eval()


@hookimpl
def pruneframe_register_recoveries(register: Callable[[type[Recovery]], None]) -> None:
    """Register ``lora``."""
    register(LoraRecovery)
