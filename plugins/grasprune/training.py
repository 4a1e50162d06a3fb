"""The two optimisation loops of GRASPrune, over a frozen backbone with gates in forward hooks.

Only the gate scores (stage A) or the scale parameters (stage B) require gradients; every model
parameter is frozen for the duration, so no weight gradient is ever computed or stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from pruneframe.toolkit.memory import PeakMemory
from pruneframe.toolkit.distributed import sharded_backward, world
from pruneframe.toolkit.gates import UnitGates
from pruneframe.toolkit.losses import causal_lm_loss, hidden_state_loss, lean_head
from pruneframe.toolkit.streaming import streamed_backward, streamed_forward
from pruneframe.toolkit.resume import LoopCheckpoint, LoopStats

__all__ = [
    "frozen",
    "attention_implementation",
    "causal_lm_loss",
    "distillation_loss",
    "DenseTeacher",
    "LossBackward",
    "LoopStats",
    "run_loop",
    "batches",
    "window_loss",
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
    hidden`` values), instead of one per step and epoch. With ``stream_device`` the forward runs
    one decoder layer at a time there (:func:`pruneframe.toolkit.streaming.streamed_forward`) and the
    cache is kept where the embeddings are.
    """

    def __init__(
        self,
        model: nn.Module,
        gates: UnitGates,
        windows: torch.Tensor,
        batch_size: int,
        progress: bool,
        stream_device: torch.device | None = None,
    ) -> None:
        device = next(model.parameters()).device
        with gates.disabled(), torch.inference_mode():
            if stream_device is not None:
                states = streamed_forward(model, windows.split(batch_size), stream_device, progress=progress, desc="dense teacher (layers)", final_norm=True)
                parts = [h[:, :-1].to(device) for h in states]
                del states
            else:
                decoder = model.get_decoder()
                parts = [
                    decoder(input_ids=ids.to(device), use_cache=False).last_hidden_state[:, :-1].clone()
                    for ids in tqdm(windows.split(batch_size), desc="dense teacher", disable=not progress, leave=False)
                ]
        self.hidden = torch.cat(parts)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.hidden[rows.to(self.hidden.device)]


def distillation_loss(model: nn.Module, input_ids: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Mean ``KL(teacher || model)`` of the next-token distributions, over the positions the LM loss uses.

    ``teacher_hidden`` are the dense model's final hidden states for ``input_ids`` without the last
    position (see :class:`DenseTeacher`); both go through the model's own output embedding.
    """
    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    if lean_head(model) is not None:
        return hidden_state_loss(model, input_ids, teacher_hidden)(hidden)
    out = model.get_output_embeddings()
    log_s = torch.log_softmax(out(hidden[:, :-1]).float(), dim=-1).flatten(0, 1)
    log_t = torch.log_softmax(out(teacher_hidden).float(), dim=-1).flatten(0, 1)
    return torch.nn.functional.kl_div(log_s, log_t.detach(), log_target=True, reduction="batchmean")


#: ``(rows, scale) -> loss``: backpropagates ``scale`` times the mean loss on ``windows[rows]`` and
#: returns that loss (unscaled, detached)
LossBackward = Callable[[torch.Tensor, float], torch.Tensor]


def window_loss(
    kind: str,
    model: nn.Module,
    gates: UnitGates,
    windows: torch.Tensor,
    batch_size: int,
    progress: bool,
    stream_device: torch.device | None = None,
) -> LossBackward:
    """The training step's forward and backward pass on ``windows[rows]``, as a function of ``rows``.

    ``kind`` is ``"lm"`` (causal-LM cross-entropy on the calibration text) or ``"distill"`` (KL
    divergence from the dense model, i.e. the same backbone with the gates disabled; its hidden
    states are computed once up front by :class:`DenseTeacher`). With ``stream_device`` both
    passes run one decoder layer at a time there (:func:`pruneframe.toolkit.streaming.streamed_backward`),
    for a model whose weights do not fit the device; gradients are the same.
    """
    if kind not in ("lm", "distill"):
        raise ValueError(f"unknown loss {kind!r}; expected 'lm' or 'distill'")
    teacher = DenseTeacher(model, gates, windows, batch_size, progress, stream_device) if kind == "distill" else None
    if stream_device is not None:

        def streamed(rows: torch.Tensor, scale: float) -> torch.Tensor:
            ids = windows[rows]
            loss_of = hidden_state_loss(model, ids, None if teacher is None else teacher[rows])
            return streamed_backward(model, ids, loss_of, stream_device, scale=scale)

        return streamed
    device = next(model.parameters()).device

    def whole(rows: torch.Tensor, scale: float) -> torch.Tensor:
        ids = windows[rows].to(device)
        loss = causal_lm_loss(model, ids) if teacher is None else distillation_loss(model, ids, teacher[rows])
        (loss * scale).backward()
        return loss.detach()

    return whole


def batches(count: int, batch_size: int, epochs: int, shuffle: bool, seed: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(epoch, rows)`` over ``epochs`` passes of ``count`` windows; a seeded permutation per epoch when shuffling."""
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(count, generator=g) if shuffle else torch.arange(count)
        for start in range(0, count, batch_size):
            yield epoch, order[start : start + batch_size]


def run_loop(
    model: nn.Module,
    gates: UnitGates,
    params: list[torch.Tensor],
    gate_fn: Callable[[int], tuple[torch.Tensor, dict[str, float]]],
    loss_backward: LossBackward,
    windows: torch.Tensor,
    data: Iterator[tuple[int, torch.Tensor]],
    total_steps: int,
    optimizer: torch.optim.Optimizer,
    desc: str,
    progress: bool,
    checkpoint: LoopCheckpoint | None = None,
    compute_device: torch.device | None = None,
) -> LoopStats:
    """Minimise the loss of ``loss_backward`` over ``params`` with gates from ``gate_fn(step)``.

    ``data`` yields ``(epoch, rows)`` (the same sequence on every rank); ``loss_backward(rows,
    scale)`` backpropagates the mean loss on ``windows[rows]`` (rows let a loss look up per-window
    constants such as a teacher's outputs), see :func:`window_loss`. ``gate_fn`` returns the gate
    vector for this step (carrying gradients to ``params``) and numbers recorded per step and shown
    in the progress bar. A non-finite loss stops the loop with an error naming the step. Peak
    memory is recorded on ``compute_device`` (default: the model's device).

    Under ``torchrun`` each rank computes the loss of its round-robin share of every batch and the
    gradients are summed across ranks (see :mod:`pruneframe.toolkit.distributed`): the updates are those of
    one process. With ``checkpoint`` the loop resumes from, and periodically writes, saved state.
    """
    stats = LoopStats()
    start = 0
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        start = _restore(state, params, optimizer, stats)
    rank, _ = world()
    bar = tqdm(total=total_steps, initial=start, desc=desc, disable=not progress or rank != 0, leave=False)
    memory = PeakMemory(device=str(compute_device or next(model.parameters()).device)).__enter__()
    try:
        for step, (epoch, rows) in enumerate(data):
            if step < start:
                continue
            t0 = time.perf_counter()
            z, record = gate_fn(step)
            gates.set(z)
            optimizer.zero_grad(set_to_none=True)
            loss = sharded_backward(loss_backward, rows, params, f"{desc}: step {step} (epoch {epoch})")
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
