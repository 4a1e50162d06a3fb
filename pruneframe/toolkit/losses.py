"""Memory-lean language-model loss for training small parameter sets over a frozen backbone.

The usual ``cross_entropy(hidden @ W.T, targets)`` keeps the full ``[tokens, vocab]`` logits, their
log-softmax and, in the backward pass, their gradient alive at once (three tensors of 50 MB each for
256 tokens over a 49k vocabulary). When the output matrix ``W`` is frozen and the loss is the last
operation, the gradient with respect to the logits is known as soon as they are computed
(``softmax - onehot``), so :func:`linear_cross_entropy` computes the logits chunk by chunk, turns each
chunk into its contribution to ``d loss / d hidden`` right away and keeps only that (``[tokens,
hidden]``). Same arithmetic as the plain path (one logits matmul forward, one gradient matmul), no
recomputation, a fraction of the memory.

:func:`linear_kl_divergence` does the same for distillation from a frozen teacher's hidden states
through the same output matrix: ``KL(teacher || student)``, whose logits gradient is
``softmax(student) - softmax(teacher)``.

:func:`causal_lm_loss` is the plain causal-LM loss of a model through that path whenever its output
layer allows it (:func:`lean_head`): what gradient-based methods call over a frozen backbone.
:func:`hidden_state_loss` is either loss as a function of the decoder's final hidden states, the
form a layer-streamed backward pass needs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["linear_cross_entropy", "linear_kl_divergence", "logits_layer", "lean_head", "hidden_state_loss", "causal_lm_loss"]

_CHUNK_ELEMENTS = 1 << 24  # logits elements per chunk: 64 MiB in fp32 (one chunk for 256 tokens of a 49k vocabulary)
# On CPU one [tokens, d] x [d, vocab] matmul with a large vocabulary is slower than the same product
# taken in slices of vocabulary rows, whose output slice stays in cache (SmolLM2's 49k x 576 head,
# 255 tokens, 2 threads: the whole loss with its backward 0.86-0.89x the time, paired medians of 20;
# slices of 64 to 4096 rows all help, 256 most). The reduction over d is unchanged, so are the logits.
_VOCAB_BLOCK = 256


def _logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``hidden @ weight.T``; on CPU computed in slices of ``_VOCAB_BLOCK`` vocabulary rows."""
    vocab = weight.shape[0]
    if hidden.device.type != "cpu" or vocab <= _VOCAB_BLOCK:
        return hidden @ weight.T
    out = hidden.new_empty(hidden.shape[0], vocab)
    for start in range(0, vocab, _VOCAB_BLOCK):
        stop = min(start + _VOCAB_BLOCK, vocab)
        torch.mm(hidden, weight[start:stop].T, out=out[:, start:stop])
    return out


def _shifted_logits(hidden: torch.Tensor, weight: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """``hidden @ weight.T`` in ``acc``, shifted in place so every row's maximum is 0."""
    logits = _logits(hidden, weight).to(acc)
    return logits.sub_(logits.amax(dim=-1, keepdim=True))


def _cross_entropy_rows(
    hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, acc: torch.dtype, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed cross-entropy of one chunk and its logits gradient (``softmax - onehot``)."""
    # one pass over the logits, in place: shift by the row max, exponentiate once, normalise
    logits = _shifted_logits(hidden, weight, acc)
    target = targets[:, None]
    target_logit = logits.gather(1, target)
    probs = logits.exp_()
    norm = probs.sum(dim=-1, keepdim=True)
    loss = (norm.log() - target_logit).sum()
    if not need_grad:
        return loss, None
    return loss, probs.div_(norm).scatter_add_(1, target, torch.full_like(target, -1, dtype=probs.dtype))


def _kl_rows(hidden: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor, acc: torch.dtype, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed ``KL(teacher || student)`` of one chunk and its logits gradient (``p_s - p_t``)."""
    t = _shifted_logits(teacher, weight, acc)
    s = _shifted_logits(hidden, weight, acc)
    # KL(p_t || p_s) per row = sum p_t (t - s) - log Z_t + log Z_s, with t, s shifted logits
    p_t = t.exp()
    z_t = p_t.sum(dim=-1, keepdim=True)
    p_t.div_(z_t)
    cross = (t.sub_(s).mul_(p_t)).sum(dim=-1, keepdim=True)
    p_s = s.exp_()
    z_s = p_s.sum(dim=-1, keepdim=True)
    loss = (cross - z_t.log() + z_s.log()).sum()
    if not need_grad:
        return loss, None
    return loss, p_s.div_(z_s).sub_(p_t)


class _ChunkedLinearLoss(torch.autograd.Function):
    """Mean over rows of ``rows(hidden, other, weight)``; d loss / d hidden formed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, other: torch.Tensor, weight: torch.Tensor, chunk: int, rows) -> torch.Tensor:
        n = hidden.shape[0]
        need_grad = ctx.needs_input_grad[0]
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 at least, as cross_entropy(logits.float())
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            loss, grad_logits = rows(hidden[start:stop], other[start:stop], weight, acc, need_grad)
            total += loss
            if need_grad:
                grad_hidden[start:stop] = (grad_logits.to(weight.dtype) @ weight).div_(n)
        ctx.save_for_backward(grad_hidden)
        return total / n

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_output.to(grad_hidden.dtype), None, None, None, None


def _check_frozen_head(hidden: torch.Tensor, weight: torch.Tensor, what: str) -> None:
    if weight.requires_grad:
        raise ValueError(f"{what} computes no weight gradient; freeze the output weight")
    if hidden.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"expected hidden [N, d] and weight [V, d]; got {tuple(hidden.shape)}, {tuple(weight.shape)}")


def _chunk(weight: torch.Tensor, chunk_tokens: int | None) -> int:
    return chunk_tokens or max(1, _CHUNK_ELEMENTS // weight.shape[0])


def linear_kl_divergence(hidden: torch.Tensor, teacher_hidden: torch.Tensor, weight: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
    """Mean over rows of ``KL(softmax(teacher_hidden @ W.T) || softmax(hidden @ W.T))``.

    Distillation through a shared frozen output matrix ``weight`` (``[V, d]``): gradients reach
    ``hidden`` only (the teacher is a constant). Like :func:`linear_cross_entropy`, the logits are
    formed chunk by chunk and only ``[N, d]`` gradients are kept.
    """
    _check_frozen_head(hidden, weight, "linear_kl_divergence")
    if teacher_hidden.shape != hidden.shape:
        raise ValueError(f"teacher hidden states {tuple(teacher_hidden.shape)} do not match student {tuple(hidden.shape)}")
    return _ChunkedLinearLoss.apply(hidden, teacher_hidden.detach(), weight, _chunk(weight, chunk_tokens), _kl_rows)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` (``[N, d] x [V, d]``) against ``targets`` (``[N]``).

    Equal to ``F.cross_entropy((hidden @ weight.T).float(), targets)`` with gradients for ``hidden``
    only; ``weight`` must not require grad (it is the frozen output embedding). Every target counts
    (no ignore index). ``chunk_tokens`` bounds the logits held at once (default: about 16M elements; fewer chunks re-read the weight fewer times).
    """
    _check_frozen_head(hidden, weight, "linear_cross_entropy")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected hidden [N, d], weight [V, d], targets [N]; got {tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(targets.shape)}")
    return _ChunkedLinearLoss.apply(hidden, targets.long(), weight, _chunk(weight, chunk_tokens), _cross_entropy_rows)


def logits_layer(model: nn.Module) -> nn.Linear | None:
    """``model``'s output embedding when its outputs are the model's logits as they are, else None.

    That is a bias-free ``nn.Linear`` and no final logit soft-capping in the model's config: then the
    logits are ``hidden @ weight.T`` of the decoder's final hidden states.
    """
    head = model.get_output_embeddings()
    capped = getattr(getattr(model, "config", None), "final_logit_softcapping", None) is not None
    if isinstance(head, nn.Linear) and head.bias is None and not capped:
        return head
    return None


def lean_head(model: nn.Module) -> nn.Linear | None:
    """``model``'s output embedding when the lean losses apply to it: a frozen :func:`logits_layer`; else None."""
    head = logits_layer(model)
    return head if head is not None and not head.weight.requires_grad else None


def hidden_state_loss(model: nn.Module, input_ids: torch.Tensor, teacher_hidden: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss of ``input_ids`` as a function of the decoder's final hidden states (``[B, L, d]``).

    Without ``teacher_hidden``: the mean next-token cross-entropy (:func:`linear_cross_entropy`);
    with it (the dense model's final hidden states without the last position, ``[B, L - 1, d]``):
    the mean ``KL(teacher || model)`` (:func:`linear_kl_divergence`). Both run where the hidden
    states are (the output matrix and targets are brought there), so the function serves a
    layer-streamed pass as well as a whole-model one.

    Raises:
        ValueError: the model's output layer is not one :func:`lean_head` accepts.
    """
    head = lean_head(model)
    if head is None:
        raise ValueError(f"{type(model).__name__}: the hidden-state loss needs a frozen, bias-free linear output layer without logit soft-capping")

    def loss(hidden: torch.Tensor) -> torch.Tensor:
        weight = head.weight.to(hidden.device)
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        if teacher_hidden is None:
            return linear_cross_entropy(h, weight, input_ids[:, 1:].reshape(-1).to(hidden.device))
        return linear_kl_divergence(h, teacher_hidden.to(hidden.device).reshape(h.shape), weight)

    return loss


def causal_lm_loss(model: nn.Module, input_ids: torch.Tensor, lean: bool = True) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` over every predicted token of ``input_ids`` (``[B, L]``).

    The loss of ``model(input_ids, labels=input_ids)``. With ``lean`` and an output layer
    :func:`lean_head` accepts, it is computed from the decoder's hidden states through
    :func:`linear_cross_entropy`: the logits of the last position, which predict nothing, are never
    formed, and the full ``[tokens, vocab]`` logits never exist at once. Otherwise the model's own
    forward computes it (the family's logit post-processing included).
    """
    if not lean or lean_head(model) is None:
        return model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    return hidden_state_loss(model, input_ids)(hidden)
