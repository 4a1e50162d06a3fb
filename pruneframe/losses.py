"""Memory-lean language-model loss for training small parameter sets over a frozen backbone.

The usual ``cross_entropy(hidden @ W.T, targets)`` keeps the full ``[tokens, vocab]`` logits, their
log-softmax and, in the backward pass, their gradient alive at once (three tensors of 50 MB each for
256 tokens over a 49k vocabulary). When the output matrix ``W`` is frozen and the loss is the last
operation, the gradient with respect to the logits is known as soon as they are computed
(``softmax - onehot``), so :func:`linear_cross_entropy` computes the logits chunk by chunk, turns each
chunk into its contribution to ``d loss / d hidden`` right away and keeps only that (``[tokens,
hidden]``). Same arithmetic as the plain path (one logits matmul forward, one gradient matmul), no
recomputation, a fraction of the memory.
"""

from __future__ import annotations

import torch

__all__ = ["linear_cross_entropy"]

_CHUNK_ELEMENTS = 1 << 24  # logits elements per chunk: 64 MiB in fp32 (one chunk for 256 tokens of a 49k vocabulary)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        n = hidden.shape[0]
        need_grad = ctx.needs_input_grad[0]
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 at least, as cross_entropy(logits.float())
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            logits = (hidden[start:stop] @ weight.T).to(acc)
            target = targets[start:stop, None]
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            total += (lse - logits.gather(1, target)).sum()
            if need_grad:
                probs = logits.sub_(lse).exp_()  # softmax, in place of the logits
                probs.scatter_add_(1, target, torch.full_like(target, -1, dtype=probs.dtype))
                grad_hidden[start:stop] = (probs.to(weight.dtype) @ weight).div_(n)
        ctx.save_for_backward(grad_hidden)
        return total / n

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_output.to(grad_hidden.dtype), None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` (``[N, d] x [V, d]``) against ``targets`` (``[N]``).

    Equal to ``F.cross_entropy((hidden @ weight.T).float(), targets)`` with gradients for ``hidden``
    only; ``weight`` must not require grad (it is the frozen output embedding). Every target counts
    (no ignore index). ``chunk_tokens`` bounds the logits held at once (default: about 16M elements; fewer chunks re-read the weight fewer times).
    """
    if weight.requires_grad:
        raise ValueError("linear_cross_entropy computes no weight gradient; freeze the output weight or use cross_entropy")
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1] or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"expected hidden [N, d], weight [V, d], targets [N]; got {tuple(hidden.shape)}, "
            f"{tuple(weight.shape)}, {tuple(targets.shape)}"
        )
    chunk = chunk_tokens or max(1, _CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, targets.long(), chunk)
