"""Layer-streamed passes: the decoder stack run one layer at a time on a compute device.

For models larger than the device (the approach of Wanda's and SparseGPT's calibration): the
decoder's own forward runs once per batch with every decoder layer replaced by a recorder (the
``Catcher`` of those repositories, for every layer), which captures the layer's arguments (hidden
states, attention mask, position embeddings, cache position, ...) and passes the hidden states
through unchanged; the last recorder stops the pass. Each layer's own arguments are kept, so families whose layers differ (Gemma 3's
sliding-window and full-attention layers get different masks and rotary tables) are served
exactly. Then, for each decoder layer in order, that layer alone is moved to the compute device,
every batch runs through it (forward hooks on its modules see the same inputs as in a whole-model
pass), its outputs become the next layer's inputs, and it goes back to where it was.

The compute device holds one layer's weights, the calibration hidden states ``[windows, seq_len,
hidden]`` in the model's dtype (one set; each batch's output replaces its input) and the layers'
masks and position embeddings; embeddings, masks and position embeddings are computed where the
embedding layer lives.

Gradient methods stream their backward pass too (:func:`streamed_backward`): a forward sweep keeps
each layer's input, then the layers run again from the last to the first, each alone on the device,
recomputing its output with autograd on and passing the gradient of its input to the layer before.
Evaluation takes the logits of a streamed forward (:func:`streamed_logits`).

The settings a config mixes in to stream (:class:`StreamingOptions`) and the compute device they pick
(:func:`resolve_compute_device`) are :mod:`pruneframe.util.offload`'s, re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from pruneframe.architectures import ArchitectureAdapter, adapter_for
from pruneframe.util.devices import model_device
from pruneframe.util.offload import StreamingOptions, resolve_compute_device
from pruneframe.toolkit.losses import logits_layer

__all__ = [
    "LayerCall",
    "StreamingOptions",
    "capture_layer_calls",
    "check_streamable_logits",
    "on_device",
    "resolve_compute_device",
    "streamed_backward",
    "streamed_forward",
    "streamed_logits",
]


@dataclass
class LayerCall:
    """One decoder layer's call on one batch, without its hidden states.

    Attributes:
        args: positional arguments after the hidden states.
        kwargs: keyword arguments (attention mask, position embeddings, cache position, ...).
        positional: whether the hidden states came as the first positional argument (else as
            ``hidden_states=``).
    """

    args: tuple
    kwargs: dict[str, Any]
    positional: bool

    def __call__(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """``layer`` applied to ``hidden`` with these arguments; the output hidden states."""
        if self.positional:
            out = layer(hidden, *self.args, **self.kwargs)
        else:
            out = layer(*self.args, hidden_states=hidden, **self.kwargs)
        return out[0] if isinstance(out, tuple) else out


class _Stop(Exception):
    """Raised by the last layer's recorder: nothing after the decoder layers is needed."""


def _to(value: Any, device: torch.device, memo: dict[int, tuple[Any, Any]]) -> Any:
    """``value`` with every tensor in it (through tuples, lists and dicts) on ``device``; shared objects stay shared.

    ``memo`` maps ``id(original)`` to ``(original, moved)``: holding the original keeps its id from
    being reused by a later object while the memo lives.
    """
    key = id(value)
    if key in memo:
        return memo[key][1]
    if isinstance(value, torch.Tensor):
        moved = value.to(device)
    elif isinstance(value, tuple) and not hasattr(value, "_fields"):
        moved = tuple(_to(v, device, memo) for v in value)
    elif isinstance(value, list):
        moved = [_to(v, device, memo) for v in value]
    elif isinstance(value, dict):
        moved = {k: _to(v, device, memo) for k, v in value.items()}
    else:
        moved = value
    memo[key] = (value, moved)
    return moved


class _Recorder(nn.Module):
    """Stands in for one decoder layer during capture: records its call, returns the hidden states unchanged.

    The layer's own hooks do not run (they run once, when the layer itself runs); attributes the
    decoder reads from its layers (``attention_type``, ...) are the layer's.
    """

    def __init__(self, layer: nn.Module, record: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.layer = layer
        self.record = record

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Record the call (see :func:`capture_layer_calls`)."""
        return self.record(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)


def _slots(model: nn.Module, layers: list[nn.Module]) -> list[tuple[nn.Module, str]]:
    """For each layer, the ``(parent module, child name)`` that holds it."""
    where = {id(layer): i for i, layer in enumerate(layers)}
    slots: list[tuple[nn.Module, str] | None] = [None] * len(layers)
    for parent in model.modules():
        for name, child in parent._modules.items():
            if child is not None and id(child) in where:
                slots[where[id(child)]] = (parent, name)
    missing = [i for i, slot in enumerate(slots) if slot is None]
    if missing:
        raise ValueError(f"decoder layers {missing} of {type(model).__name__} are not submodules of it; it cannot be streamed")
    return slots  # type: ignore[return-value]


def capture_layer_calls(model: nn.Module, layers: list[nn.Module], input_ids: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, list[LayerCall]]:
    """Layer 0's input hidden states and every layer's other arguments for one batch, on ``device``.

    Runs the decoder's own forward (embeddings, masks, position embeddings) with each layer
    replaced by a recorder that returns its hidden states unchanged; no layer computes, no layer's
    hooks run, and the last recorder stops the pass.
    """
    if not layers:
        raise ValueError(f"{type(model).__name__} has no decoder layers to stream")
    calls: list[LayerCall | None] = [None] * len(layers)
    first: list[torch.Tensor] = []
    memo: dict[int, tuple[Any, Any]] = {}

    def recorder(i: int) -> Callable[..., torch.Tensor]:
        def record(*args: Any, **kwargs: Any) -> torch.Tensor:
            positional = bool(args)
            hidden = args[0] if positional else kwargs.pop("hidden_states")
            rest = args[1:] if positional else args
            calls[i] = LayerCall(_to(rest, device, memo), _to(kwargs, device, memo), positional)
            if i == 0:
                first.append(hidden.to(device))
            if i == len(layers) - 1:
                raise _Stop
            return hidden

        return record

    slots = _slots(model, layers)
    try:
        for i, ((parent, name), layer) in enumerate(zip(slots, layers, strict=True)):
            parent._modules[name] = _Recorder(layer, recorder(i))
        model.get_decoder()(input_ids=input_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        for (parent, name), layer in zip(slots, layers, strict=True):
            parent._modules[name] = layer
    missing = [i for i, c in enumerate(calls) if c is None]
    if missing:
        raise RuntimeError(f"{type(model).__name__}'s decoder did not call layers {missing}; it cannot be streamed")
    return first[0], calls  # type: ignore[return-value]


@contextmanager
def on_device(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``module`` moved to ``device`` inside the block and back to its own device after, also on error.

    Parameters keep their identity (hooks, ``requires_grad`` and accumulated ``.grad`` move with them).
    """
    home = model_device(module)
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)


def streamed_forward(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    device: str | torch.device,
    *,
    adapter: ArchitectureAdapter | None = None,
    progress: bool = False,
    desc: str = "layers",
    final_norm: bool = False,
) -> list[torch.Tensor]:
    """Run ``model``'s decoder over token-id ``batches``, one decoder layer at a time on ``device``.

    Every module inside a layer sees exactly the inputs it sees in a whole-model forward, so
    forward hooks (statistics, gates) work unchanged. Each layer is returned to its own device
    afterwards, also on error. Call under :func:`torch.inference_mode` or :func:`torch.no_grad`.

    Returns:
        per batch, on ``device``, the last decoder layer's output, or with ``final_norm`` the
        decoder's final hidden states (its ``last_hidden_state``: that output after the final norm).
    """
    device = torch.device(device)
    adapter = adapter or adapter_for(model)
    layers = adapter.decoder_layers(model)
    embed_device = model.get_input_embeddings().weight.device
    captured = [capture_layer_calls(model, layers, batch.to(embed_device), device) for batch in batches]
    if not captured:
        return []
    hidden = [h for h, _ in captured]
    per_batch = [calls for _, calls in captured]
    del captured  # the hidden-state list is the only reference: each output frees its input
    for i, layer in enumerate(tqdm(layers, desc=desc, disable=not progress, leave=False)):
        with on_device(layer, device):
            for b, calls in enumerate(per_batch):
                hidden[b] = calls[i](layer, hidden[b])
    if final_norm:
        with on_device(adapter.final_norm(model), device) as norm:
            hidden = [norm(h) for h in hidden]
    return hidden


def check_streamable_logits(model: nn.Module) -> None:
    """Raise ValueError unless ``model``'s logits are its output layer applied to its final hidden states.

    Logits with a bias or a soft-capping need the family's own head code, which a layer-streamed
    pass does not run.
    """
    if logits_layer(model) is None:
        raise ValueError(f"{type(model).__name__}'s logits are more than its output layer's (a bias or logit soft-capping); it cannot be run layer by layer")


def streamed_logits(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    device: str | torch.device,
    *,
    progress: bool = False,
    desc: str = "layers",
) -> Iterator[torch.Tensor]:
    """Per batch of token ids, ``model``'s logits (``[batch, seq_len, vocab]``, on ``device``), one decoder layer at a time.

    :func:`streamed_forward` to the final hidden states, then the output layer, moved to ``device``
    for the duration, applied to each batch's states in turn: the logits of a whole-model forward.

    Raises:
        ValueError: the model's logits are more than its output layer's (a bias or logit soft-capping).
    """
    check_streamable_logits(model)  # here, before the first batch is asked for

    def logits() -> Iterator[torch.Tensor]:
        hidden = streamed_forward(model, batches, device, progress=progress, desc=desc, final_norm=True)
        with on_device(model.get_output_embeddings(), device) as head:
            while hidden:
                yield head(hidden.pop(0))  # each batch's states are freed once its logits are formed

    return logits()


def streamed_backward(
    model: nn.Module,
    input_ids: torch.Tensor,
    loss_of_hidden: Callable[[torch.Tensor], torch.Tensor],
    device: str | torch.device,
    *,
    scale: float = 1.0,
    adapter: ArchitectureAdapter | None = None,
) -> torch.Tensor:
    """Backpropagate ``scale * loss_of_hidden(final hidden states)`` through ``model``, one decoder layer at a time on ``device``.

    The backward pass of a model larger than the device, with the schedule of activation
    recomputation: a forward sweep without autograd keeps each layer's input hidden states (on
    ``device``: ``[batch, seq_len, hidden]`` per layer); the loss runs on the final norm's output;
    then, from the last layer to the first, the layer alone is moved to ``device``, recomputes its
    output from its kept input with autograd on, and backpropagates the gradient of its output,
    which yields the gradient of its input for the layer before. Gradients accumulate wherever
    parameters and forward-hook tensors require them (gate scores, or a method's chosen weights,
    whose ``.grad`` lives on ``device`` while the layer is there and moves back with it); values
    and gradients are those of the whole-model pass. Forward hooks inside a layer run twice.

    Args:
        model: a causal LM some installed adapter handles; its layers stay where they are between uses.
        input_ids: ``[batch, seq_len]`` token ids.
        loss_of_hidden: the scalar loss of the decoder's final hidden states (``[batch, seq_len,
            hidden]`` on ``device``), e.g. :func:`pruneframe.toolkit.losses.hidden_state_loss`.
        device: where each layer, the final norm and the loss run.
        scale: the gradient is that of ``scale * loss`` (a micro-batch's or a rank's share).
        adapter: the model's adapter (found from the installed plugins when omitted).

    Returns:
        the (unscaled) loss, detached.
    """
    device = torch.device(device)
    adapter = adapter or adapter_for(model)
    layers = adapter.decoder_layers(model)
    embed_device = model.get_input_embeddings().weight.device
    inputs: list[torch.Tensor] = []
    with torch.no_grad():  # not inference mode: the kept inputs re-enter autograd below
        hidden, calls = capture_layer_calls(model, layers, input_ids.to(embed_device), device)
        for layer, call in zip(layers, calls, strict=True):
            inputs.append(hidden)
            with on_device(layer, device):
                hidden = call(layer, hidden)
    # retain_graph: tensors that reach every layer through hooks (a gate vector and the graph from
    # its scores) are backpropagated through once per layer; each layer's own graph is freed with
    # its output right after its backward call
    with torch.enable_grad(), on_device(adapter.final_norm(model), device) as norm:
        last = hidden.detach().requires_grad_(True)
        loss = loss_of_hidden(norm(last))
        (loss * scale).backward(retain_graph=True)
        loss = loss.detach()
    grad = last.grad
    del hidden, last
    for i in range(len(layers) - 1, -1, -1):
        x = inputs.pop().detach().requires_grad_(i > 0)
        with torch.enable_grad(), on_device(layers[i], device) as layer:
            out = calls[i](layer, x)
            if out.requires_grad:
                out.backward(grad, retain_graph=True)
        grad = x.grad
        del x, out
    return loss
