"""Adam with one second-moment estimate per block of coordinates (the Adam-mini partition idea).

Plain Adam divides every gate score's update by that score's own gradient RMS, so after a few
steps each score moves by about ``lr`` per step in the direction of its gradient's sign, however
small the gradient is: the ranking then reflects how *consistently* a unit's gradient points one
way, not how *large* it is. Sharing the second moment across a block (here: all units of one kind,
FFN channels or KV groups) keeps the update scale-free per kind while preserving the relative
gradient magnitudes inside it, so units with large loss sensitivity move further.
"""

from __future__ import annotations

import torch

__all__ = ["BlockAdam", "block_adam_update"]


def block_adam_update(
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    blocks: torch.Tensor,
    block_sizes: torch.Tensor,
    step: int,
    lr: float,
    betas: tuple[float, float],
    eps: float,
) -> torch.Tensor:
    """One update (the value to subtract) and, in place, the new moments.

    ``exp_avg`` has the shape of ``grad``; ``exp_avg_sq`` and ``block_sizes`` have one entry per
    block; ``blocks`` gives each coordinate's block index. Bias-corrected like Adam.
    """
    beta1, beta2 = betas
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    sums = torch.zeros_like(exp_avg_sq).index_add_(0, blocks, grad.square())
    exp_avg_sq.mul_(beta2).add_(sums / block_sizes, alpha=1 - beta2)
    m_hat = exp_avg / (1 - beta1**step)
    v_hat = exp_avg_sq / (1 - beta2**step)
    return lr * m_hat / (v_hat.sqrt() + eps)[blocks]


class BlockAdam(torch.optim.Optimizer):
    """Adam over one 1-D tensor whose coordinates share a second moment within ``blocks``."""

    def __init__(self, params, blocks: torch.Tensor, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8) -> None:
        params = list(params)
        if len(params) != 1 or params[0].dim() != 1 or params[0].shape != blocks.shape:
            raise ValueError("BlockAdam takes exactly one 1-D tensor and a block index per coordinate")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        self.blocks = blocks.to(device=params[0].device, dtype=torch.long)
        self.block_sizes = torch.bincount(self.blocks).clamp_(min=1).to(params[0].dtype)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer.step
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(self.block_sizes)
                state["step"] += 1
                p.sub_(
                    block_adam_update(
                        p.grad, state["exp_avg"], state["exp_avg_sq"], self.blocks, self.block_sizes, state["step"], group["lr"], group["betas"], group["eps"]
                    )
                )
        return loss
