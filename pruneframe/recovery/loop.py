"""The one training loop every recovery uses: AdamW over the stream's batches, once each, in order.

- **Precision**: parameters stored in bf16/fp16 are trained through fp32 master copies (the
  optimiser state is fp32 too); after each step the masters are rounded into the model. The forward
  and backward run in the model's own dtype.
- **Schedule**: linear warm-up over ``warmup`` of the steps, then constant, cosine or linear decay.
- **torchrun**: every rank walks the same batches and computes the loss of its round-robin share of
  each (:func:`pruneframe.toolkit.distributed.sharded_backward`); gradients are summed, so the updates are
  those of one process.
- **Resume**: with ``checkpoint_dir`` the state (trainable weights, optimiser, schedule, losses, RNG)
  is saved every ``checkpoint_every`` steps; a run started again continues after the last saved step,
  and a state file written by another run is refused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pruneframe.toolkit.distributed import sharded_backward, world
from pruneframe.toolkit.memory import PeakMemory
from pruneframe.recovery.base import RecoveryConfig
from pruneframe.recovery.stream import RecoveryStream
from pruneframe.toolkit.resume import LoopCheckpoint, LoopStats

__all__ = ["LossBackward", "train", "lr_factor"]

#: ``(rows, weight) -> mean loss``: backpropagates ``weight`` times the mean loss on the stream's ``rows``.
LossBackward = Callable[[torch.Tensor, float], torch.Tensor]

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def lr_factor(step: int, total: int, warmup: float, schedule: str) -> float:
    """The learning-rate multiplier of optimiser step ``step`` (0-based) out of ``total``."""
    warm = int(math.ceil(warmup * total))
    if step < warm:
        return (step + 1) / (warm + 1)
    if schedule == "constant" or total <= warm + 1:
        return 1.0
    progress = (step - warm) / (total - warm)
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress


def _masters(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """fp32 copies of low-precision parameters (the parameter itself when it is fp32 already)."""
    return [p.detach().float().clone().requires_grad_(True) if p.dtype in _LOW_PRECISION else p for p in params]


def _checkpoint(config: RecoveryConfig, name: str, fingerprint: dict[str, Any]) -> LoopCheckpoint | None:
    if config.checkpoint_dir is None:
        return None
    return LoopCheckpoint(Path(config.checkpoint_dir) / f"recovery-{name}.pt", config.checkpoint_every, fingerprint)


def train(
    params: list[torch.Tensor],
    loss_backward: LossBackward,
    stream: RecoveryStream,
    config: RecoveryConfig,
    *,
    name: str,
    fingerprint: dict[str, Any],
    progress: bool = True,
    device: torch.device | None = None,
) -> LoopStats:
    """Train ``params`` on ``stream`` (each sequence once, in order) with the loss of ``loss_backward``.

    ``fingerprint`` identifies the run for resuming (settings, stream, model); ``name`` names the
    state file and the progress bar.

    Raises:
        FloatingPointError: a non-finite loss, naming the step.
        pruneframe.toolkit.resume.StaleCheckpointError: ``checkpoint_dir`` holds another run's state.
    """
    if not params:
        raise ValueError(f"recovery {name!r}: nothing to train (no parameter requires a gradient)")
    masters = _masters(params)
    optimizer = torch.optim.AdamW(masters, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    batches = stream.batches(config.batch_size)
    total = len(batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, config.warmup, config.schedule))
    stats = LoopStats()
    checkpoint = _checkpoint(config, name, fingerprint)
    state = checkpoint.load() if checkpoint is not None else None
    start = _restore(state, params, masters, optimizer, scheduler, stats) if state is not None else 0
    if state is None:
        torch.manual_seed(config.seed)
    rank, _ = world()
    bar = tqdm(total=total, initial=start, desc=f"recovery {name}", unit="step", disable=not progress or rank != 0, leave=False)
    memory = PeakMemory(device=str(device or params[0].device)).__enter__()
    try:
        for step in range(start, total):
            rows = batches[step]
            t0 = time.perf_counter()
            for p in params:
                p.grad = None
            loss = sharded_backward(loss_backward, rows, params, f"recovery {name}: step {step}")
            _step(params, masters, optimizer, config.max_grad_norm)
            scheduler.step()
            stats.losses.append(loss)
            stats.tokens += int(rows.numel() * stream.sequences.shape[-1])
            stats.seconds += time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{stats.tokens_per_second:,.0f}")
            bar.update()
            if checkpoint is not None and ((step + 1) % checkpoint.every == 0 or step + 1 == total):
                checkpoint.save(_state(step + 1, masters, optimizer, scheduler, stats))
    finally:
        memory.__exit__(None, None, None)
        bar.close()
        for p in params:
            p.grad = None
    stats.peak_rss_bytes = memory.report.peak_rss
    return stats


def _step(params: list[torch.Tensor], masters: list[torch.Tensor], optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> None:
    """Move gradients to the fp32 masters, clip, step, and round the masters back into the parameters."""
    for p, m in zip(params, masters):
        if m is not p:
            m.grad = None if p.grad is None else p.grad.float()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(masters, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for p, m in zip(params, masters):
            if m is not p:
                p.copy_(m)


def _state(step: int, masters: list[torch.Tensor], optimizer: torch.optim.Optimizer, scheduler: Any, stats: LoopStats) -> dict[str, Any]:
    """Everything the loop needs to continue after ``step`` steps."""
    return {
        "step": step,
        "params": [m.detach().cpu().clone() for m in masters],
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "stats": {"losses": stats.losses, "tokens": stats.tokens, "seconds": stats.seconds},
    }


def _restore(
    state: dict[str, Any], params: list[torch.Tensor], masters: list[torch.Tensor], optimizer: torch.optim.Optimizer, scheduler: Any, stats: LoopStats
) -> int:
    """Load a saved state; return the steps already done."""
    saved = state["params"]
    if len(saved) != len(masters) or any(s.shape != m.shape for s, m in zip(saved, masters)):
        raise ValueError("the saved recovery state does not match the model's trainable parameters")
    with torch.no_grad():
        for p, m, s in zip(params, masters, saved):
            m.copy_(s)
            if m is not p:
                p.copy_(m)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    stats.losses = list(state["stats"]["losses"])
    stats.tokens, stats.seconds = int(state["stats"]["tokens"]), float(state["stats"]["seconds"])
    return int(state["step"])
