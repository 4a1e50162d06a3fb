"""The two optimisation loops of GRASPrune, over a frozen backbone with gates in forward hooks.

Only the gate scores (stage A) or the scale parameters (stage B) require gradients; every model
parameter is frozen for the duration, so no weight gradient is ever computed or stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from pruneframe.memory import PeakMemory
from pruneframe.distributed import all_reduce_sum_, shard_rows, shard_weight, world
from pruneframe.gates import UnitGates
from pruneframe.losses import causal_lm_loss, lean_head, linear_kl_divergence
from pruneframe.resume import LoopCheckpoint

__all__ = [
    "frozen", "attention_implementation", "causal_lm_loss", "distillation_loss", "DenseTeacher", "LoopStats",
    "run_loop", "batches", "window_loss",
]


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


class DenseTeacher:
    """The dense model's final hidden states for every calibration window, computed once.

    The backbone is frozen and the teacher is the same model with its gates disabled, so its
    outputs never change: one no-grad forward per window, cached (``windows x (seq_len - 1) x
    hidden`` values), instead of one per step and epoch.
    """

    def __init__(self, model: nn.Module, gates: UnitGates, windows: torch.Tensor, batch_size: int, progress: bool) -> None:
        device = next(model.parameters()).device
        decoder = model.get_decoder()
        parts = []
        with gates.disabled(), torch.inference_mode():
            for start in tqdm(range(0, len(windows), batch_size), desc="dense teacher", disable=not progress, leave=False):
                ids = windows[start : start + batch_size].to(device)
                parts.append(decoder(input_ids=ids, use_cache=False).last_hidden_state[:, :-1].clone())
        self.hidden = torch.cat(parts)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.hidden[rows.to(self.hidden.device)]


def distillation_loss(model: nn.Module, input_ids: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Mean ``KL(teacher || model)`` of the next-token distributions, over the positions the LM loss uses.

    ``teacher_hidden`` are the dense model's final hidden states for ``input_ids`` without the last
    position (see :class:`DenseTeacher`); both go through the model's own output embedding.
    """
    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    head = lean_head(model)
    if head is not None:
        d = hidden.shape[-1]
        return linear_kl_divergence(hidden.reshape(-1, d), teacher_hidden.reshape(-1, d), head.weight)
    out = model.get_output_embeddings()
    log_s = torch.log_softmax(out(hidden).float(), dim=-1).flatten(0, 1)
    log_t = torch.log_softmax(out(teacher_hidden).float(), dim=-1).flatten(0, 1)
    return torch.nn.functional.kl_div(log_s, log_t.detach(), log_target=True, reduction="batchmean")


def window_loss(
    kind: str, model: nn.Module, gates: UnitGates, windows: torch.Tensor, batch_size: int, progress: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The training loss on ``windows[rows]`` as a function of ``rows``.

    ``kind`` is ``"lm"`` (causal-LM cross-entropy on the calibration text) or ``"distill"`` (KL
    divergence from the dense model, i.e. the same backbone with the gates disabled; its hidden
    states are computed once up front by :class:`DenseTeacher`).
    """
    device = next(model.parameters()).device
    if kind == "lm":
        return lambda rows: causal_lm_loss(model, windows[rows].to(device))
    if kind == "distill":
        teacher = DenseTeacher(model, gates, windows, batch_size, progress)
        return lambda rows: distillation_loss(model, windows[rows].to(device), teacher[rows])
    raise ValueError(f"unknown loss {kind!r}; expected 'lm' or 'distill'")


def batches(count: int, batch_size: int, epochs: int, shuffle: bool, seed: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(epoch, rows)`` over ``epochs`` passes of ``count`` windows; a seeded permutation per epoch when shuffling."""
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(count, generator=g) if shuffle else torch.arange(count)
        for start in range(0, count, batch_size):
            yield epoch, order[start : start + batch_size]


@dataclass
class LoopStats:
    """What one loop reports: losses, the per-step records of ``gate_fn``, tokens and time."""

    losses: list[float] = field(default_factory=list)
    records: list[dict[str, float]] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0

    @property
    def tokens_per_second(self) -> float:
        """Training throughput."""
        return self.tokens / self.seconds if self.seconds else 0.0


def _sharded_backward(
    loss_fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, params: list[torch.Tensor], where: str
) -> float:
    """Loss on this rank's share of ``rows``, backward, gradients summed over ranks; returns the global loss.

    In one process this is ``loss_fn(rows).backward()``. Across ranks each mean loss is weighted by
    its share of the rows, so the summed gradient is that of the global batch; every rank checks
    the same summed loss, so a non-finite loss stops all ranks alike.
    """
    rank, size = world()
    if size == 1:
        loss = loss_fn(rows)
        _check_finite(loss, where)
        loss.backward()
        return float(loss.detach())
    local = shard_rows(rows, rank, size)
    loss = loss_fn(local) * shard_weight(len(local), len(rows)) if len(local) else None
    total = torch.zeros((), device=params[0].device) if loss is None else loss.detach().float().clone()
    all_reduce_sum_([total])
    _check_finite(total, where)
    if loss is not None:
        loss.backward()
    for p in params:  # a rank without rows (or a parameter without a path) contributes zeros
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_sum_([p.grad for p in params])
    return float(total)


def _check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{where}: non-finite loss {loss.item()}")


def run_loop(
    model: nn.Module,
    gates: UnitGates,
    params: list[torch.Tensor],
    gate_fn: Callable[[int], tuple[torch.Tensor, dict[str, float]]],
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    windows: torch.Tensor,
    data: Iterator[tuple[int, torch.Tensor]],
    total_steps: int,
    optimizer: torch.optim.Optimizer,
    desc: str,
    progress: bool,
    checkpoint: LoopCheckpoint | None = None,
) -> LoopStats:
    """Minimise ``loss_fn`` over ``params`` with gates from ``gate_fn(step)``.

    ``data`` yields ``(epoch, rows)`` (the same sequence on every rank); ``loss_fn(rows)`` is the
    mean loss on ``windows[rows]`` (rows let a loss look up per-window constants such as a teacher's
    outputs). ``gate_fn`` returns the gate vector for this step (carrying gradients to ``params``)
    and numbers recorded per step and shown in the progress bar. A non-finite loss stops the loop
    with an error naming the step.

    Under ``torchrun`` each rank computes the loss of its round-robin share of every batch and the
    gradients are summed across ranks (see :mod:`pruneframe.distributed`): the updates are those of
    one process. With ``checkpoint`` the loop resumes from, and periodically writes, saved state.
    """
    stats = LoopStats()
    start = 0
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        start = _restore(state, params, optimizer, stats)
    rank, _ = world()
    bar = tqdm(total=total_steps, initial=start, desc=desc, disable=not progress or rank != 0, leave=False)
    memory = PeakMemory(device=str(next(model.parameters()).device)).__enter__()
    try:
        for step, (epoch, rows) in enumerate(data):
            if step < start:
                continue
            t0 = time.perf_counter()
            z, record = gate_fn(step)
            gates.set(z)
            optimizer.zero_grad(set_to_none=True)
            loss = _sharded_backward(loss_fn, rows, params, f"{desc}: step {step} (epoch {epoch})")
            optimizer.step()
            stats.losses.append(loss)
            stats.records.append(record)
            stats.tokens += rows.numel() * windows.shape[-1]
            dt = time.perf_counter() - t0
            stats.seconds += dt
            bar.set_postfix(loss=f"{loss:.3f}", step_s=f"{dt:.2f}", **{k: _shown(v) for k, v in record.items()})
            bar.update()
            if checkpoint is not None and ((step + 1) % checkpoint.every == 0 or step + 1 == total_steps):
                checkpoint.save(_state(step + 1, params, optimizer, stats))
    finally:
        memory.__exit__(None, None, None)
        gates.set(None)
        bar.close()
    stats.peak_rss_bytes = memory.report.peak_rss
    return stats


def _shown(value: float) -> str:
    """A record's value in the progress bar: counts with thousands separators, fractions to 4 places."""
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def _state(step: int, params: list[torch.Tensor], optimizer: torch.optim.Optimizer, stats: LoopStats) -> dict[str, Any]:
    """Everything a loop needs to continue after ``step`` steps."""
    return {
        "step": step,
        "params": [p.detach().cpu().clone() for p in params],
        "optimizer": optimizer.state_dict(),
        "stats": {"losses": stats.losses, "records": stats.records, "tokens": stats.tokens, "seconds": stats.seconds},
    }


def _restore(state: dict[str, Any], params: list[torch.Tensor], optimizer: torch.optim.Optimizer, stats: LoopStats) -> int:
    """Load a saved state into ``params``, ``optimizer`` and ``stats``; return the steps already done."""
    if len(state["params"]) != len(params) or any(s.shape != p.shape for s, p in zip(state["params"], params)):
        raise ValueError("checkpoint parameters do not match the loop's parameters")
    with torch.no_grad():
        for p, saved in zip(params, state["params"]):
            p.copy_(saved)
    optimizer.load_state_dict(state["optimizer"])
    saved_stats = state["stats"]
    stats.losses, stats.records = list(saved_stats["losses"]), list(saved_stats["records"])
    stats.tokens, stats.seconds = int(saved_stats["tokens"]), float(saved_stats["seconds"])
    return int(state["step"])
