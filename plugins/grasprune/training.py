"""The two optimisation loops of GRASPrune, over a frozen backbone with gates in forward hooks.

Only the gate scores (stage A) or the scale parameters (stage B) require gradients; every model
parameter is frozen for the duration, so no weight gradient is ever computed or stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from pruneframe._memory import PeakMemory
from pruneframe.gates import UnitGates
from pruneframe.losses import linear_cross_entropy

__all__ = ["frozen", "attention_implementation", "causal_lm_loss", "LoopStats", "run_loop", "batches"]


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off ``requires_grad`` on every parameter inside the block and restore it after."""
    previous = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in previous:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in previous:
            p.requires_grad_(flag)


@contextmanager
def attention_implementation(model: nn.Module, name: str | None) -> Iterator[nn.Module]:
    """Run the model's attention with ``name`` (e.g. ``"sdpa"``) inside the block; ``None`` keeps it.

    The training loops ask for SDPA: its fused causal kernel saves no ``[heads, seq, seq]`` attention
    matrix for the backward pass, which the eager implementation does in every layer.
    """
    config = model.config
    previous = getattr(config, "_attn_implementation", None)
    if name is not None:
        config._attn_implementation = name
    try:
        yield model
    finally:
        if name is not None:
            config._attn_implementation = previous


def causal_lm_loss(model: nn.Module, input_ids: torch.Tensor, lean: bool = True) -> torch.Tensor:
    """Mean next-token cross-entropy over every predicted token (the plain causal-LM loss).

    Computed from the decoder's hidden states and the output embeddings directly: the logits of the
    last position, which predict nothing, are never formed. With ``lean`` and a frozen, bias-free
    output matrix (the training loops freeze the backbone) the memory-lean
    :func:`~pruneframe.losses.linear_cross_entropy` never holds the full logits; otherwise the plain
    ``cross_entropy`` of the logits.
    """
    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    head = model.get_output_embeddings()
    targets = input_ids[:, 1:].reshape(-1)
    if lean and isinstance(head, nn.Linear) and head.bias is None and not head.weight.requires_grad:
        return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head.weight, targets)
    logits = head(hidden)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets)


def batches(windows: torch.Tensor, batch_size: int, epochs: int, shuffle: bool, seed: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(epoch, batch)`` over ``epochs`` passes; a seeded permutation per epoch when shuffling."""
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(windows), generator=g) if shuffle else torch.arange(len(windows))
        for start in range(0, len(windows), batch_size):
            yield epoch, windows[order[start : start + batch_size]]


@dataclass
class LoopStats:
    """What one loop reports: losses, tokens and time."""

    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0

    @property
    def tokens_per_second(self) -> float:
        """Training throughput."""
        return self.tokens / self.seconds if self.seconds else 0.0


def run_loop(
    model: nn.Module,
    gates: UnitGates,
    params: list[torch.Tensor],
    gate_fn: Callable[[int], tuple[torch.Tensor, dict[str, float]]],
    data: Iterator[tuple[int, torch.Tensor]],
    total_steps: int,
    optimizer: torch.optim.Optimizer,
    desc: str,
    progress: bool,
) -> LoopStats:
    """Minimise the causal-LM loss over ``params`` with gates from ``gate_fn(step)``.

    ``gate_fn`` returns the gate vector for this step (carrying gradients to ``params``) and numbers
    for the progress bar. A non-finite loss stops the loop with an error naming the step.
    """
    stats = LoopStats()
    bar = tqdm(total=total_steps, desc=desc, disable=not progress, leave=False)
    device = next(model.parameters()).device
    memory = PeakMemory(device=str(device)).__enter__()
    try:
        for step, (epoch, batch) in enumerate(data):
            t0 = time.perf_counter()
            z, shown = gate_fn(step)
            gates.set(z)
            batch = batch.to(device)
            loss = causal_lm_loss(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: non-finite loss {loss.item()} at step {step} (epoch {epoch})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stats.losses.append(float(loss.detach()))
            stats.tokens += batch.numel()
            dt = time.perf_counter() - t0
            stats.seconds += dt
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", step_s=f"{dt:.2f}", **shown)
            bar.update()
    finally:
        memory.__exit__(None, None, None)
        gates.set(None)
        bar.close()
    stats.peak_rss_bytes = memory.report.peak_rss
    return stats
