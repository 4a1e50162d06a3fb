"""Low-rank adapters for recovery, built on PEFT and merged back so no extra parameter is left.

:func:`with_lora` wraps a model's linear layers in LoRA adapters (adapter weights in fp32 even when the
model is bf16, as PEFT does by default); :func:`merge_lora` folds them into the base weights and
returns the plain model, with exactly its original parameters.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

__all__ = ["LoraSettings", "linear_names", "check_targets", "with_lora", "merge_lora"]


class LoraSettings(BaseModel):
    """LoRA's own knobs.

    Attributes:
        rank: the adapters' rank r.
        alpha: scaling numerator (the update is ``alpha / r * B A``).
        dropout: dropout on the adapters' input.
        target_modules: names of the linear layers to adapt (the last part of the module path, e.g.
            ``q_proj``); ``None``: every linear layer inside the decoder layers.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: Annotated[int, Field(ge=1)] = 8
    alpha: Annotated[float, Field(gt=0)] = 16.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    target_modules: list[Annotated[str, Field(min_length=1)]] | None = None


def linear_names(model: nn.Module) -> list[str]:
    """The distinct last names of the linear layers inside the model's decoder layers (``q_proj``, ``down_proj``, ...)."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear) and ".layers." in f".{name}"}
    return sorted(names)


def check_targets(model: nn.Module, targets: list[str] | None) -> list[str]:
    """The target module names to adapt; raises ``ValueError`` naming a target the model does not have."""
    available = linear_names(model)
    if targets is None:
        if not available:
            raise ValueError(f"{type(model).__name__} has no linear layers inside decoder layers to adapt")
        return available
    missing = [t for t in targets if t not in available]
    if missing:
        raise ValueError(f"target_modules {missing} are not linear layers of {type(model).__name__}; it has {available}")
    return list(targets)


def with_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """``model`` with LoRA adapters on ``settings.target_modules``; only the adapters require gradients."""
    from peft import LoraConfig, get_peft_model

    targets = check_targets(model, settings.target_modules)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """The base model with the adapters' updates added into its weights and the adapter modules removed."""
    merged = model.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(False)
    return merged
