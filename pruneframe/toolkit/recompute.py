"""Backward passes that keep one decoder layer's activations at a time (activation recomputation).

A backward pass through a model stores, for every decoder layer, the activations its gradient needs:
at a 1B shape that is several times the layer's input per token, over every layer at once. Under
:func:`recompute_decoder_layers` each decoder layer keeps only its inputs during the forward pass and
recomputes its own activations when the backward pass reaches it (``torch.utils.checkpoint``,
non-reentrant), so the activations of one layer exist at a time, for the price of one more forward
pass. Values and gradients are those of the plain pass (the same operations run on the same inputs).

Unlike transformers' ``gradient_checkpointing_enable`` this needs no train mode (dropout stays off)
and works on any family with an architecture adapter. Forward hooks inside a layer run twice per
pass (once more during recomputation), so hooks that count or collect must not be active in the
block; gate hooks, which only scale values, are safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pruneframe.architectures import ArchitectureAdapter, adapter_for

__all__ = ["recompute_decoder_layers"]


def _recomputing(forward: Any) -> Any:
    """``forward`` wrapped to be checkpointed whenever autograd records."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return wrapper


@contextmanager
def recompute_decoder_layers(model: nn.Module, enabled: bool = True, adapter: ArchitectureAdapter | None = None) -> Iterator[None]:
    """Within the block, every decoder layer of ``model`` recomputes its activations in the backward pass.

    Args:
        model: a model some installed architecture adapter handles.
        enabled: ``False`` makes the block a no-op (for a method's on/off setting).
        adapter: the model's adapter (found from the installed plugins when omitted).
    """
    if not enabled:
        yield
        return
    layers = (adapter or adapter_for(model)).decoder_layers(model)
    for layer in layers:
        layer.forward = _recomputing(layer.forward)  # an instance attribute shadows the class's method
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
