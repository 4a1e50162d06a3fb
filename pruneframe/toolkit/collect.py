"""Input statistics of chosen linear layers in every decoder layer, from forward-only passes.

One collector serves every method that needs calibration statistics (Wanda-sp's norms, FLAP's
means and fluctuations, GRASPrune's compensation means and least-squares moments): forward
pre-hooks on the watched modules feed an accumulator per (target, layer) while the decoder stack
runs over the calibration windows (the LM head is skipped: its logits are never needed). With
``streaming=True`` the stack runs one decoder layer at a time on a compute device
(:mod:`pruneframe.toolkit.streaming`), for models larger than that device; the statistics are the same.

The hooks are prepended, so a module's input is seen before any gate hook on the same module
(:mod:`pruneframe.toolkit.gates`) multiplies it by a mask: under gates the statistics are those of the
ungated activation of the pruned model upstream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from pruneframe.architectures import ArchitectureAdapter, LayerSlices, adapter_for
from pruneframe.util.blockwise import UPCAST_BLOCK_ELEMENTS, float64_blocks
from pruneframe.toolkit.distributed import shard_rows, summed, world
from pruneframe.toolkit.streaming import resolve_compute_device, streamed_forward

__all__ = [
    "Accumulator",
    "Moments",
    "SecondMoments",
    "column_sums_of",
    "collect_layer_inputs",
    "collect_input_moments",
    "batches",
    "mean_contribution",
]


class Accumulator(Protocol):
    """What :func:`collect_layer_inputs` feeds: anything that takes input batches ``[..., features]``.

    ``merge_ranks`` is called once after the pass, on every rank, so that sums over each rank's
    share of the windows become sums over all windows (see :func:`pruneframe.toolkit.distributed.summed`).
    """

    def add(self, x: torch.Tensor) -> None:
        """Accumulate one batch of inputs."""

    def merge_ranks(self) -> None:
        """Combine this accumulator with its copies on the other ranks (nothing to do in one process)."""


def _accumulation_device(x: torch.Tensor) -> torch.device:
    """The input's device where it supports float64, else the CPU."""
    return x.device if x.device.type in ("cpu", "cuda") else torch.device("cpu")


def mean_contribution(weight: torch.Tensor, mean: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``W[:, cols] @ mean[cols]`` in float64: what input channels ``cols`` add to a linear layer's output on average.

    The bias that keeps a layer's mean output when those channels are removed (FLAP's compensation).
    Only the removed columns leave the weight, and the product runs on the weight's device (the CPU
    where that device has no float64). Returns a CPU float64 vector ``[out_features]``.
    """
    device = _accumulation_device(weight)
    w = weight.detach()[:, cols.to(weight.device)].to(device=device, dtype=torch.float64)
    return (w @ mean.to(device=device, dtype=torch.float64)[cols.to(device)]).cpu()


def column_sums_of(
    weight: torch.Tensor,
    fn: Callable[[torch.Tensor, slice], torch.Tensor],
    *,
    max_elements: int = UPCAST_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """``fn(W[:, cols] in float64, cols).sum(0)`` for every input column of a linear weight ``[out, in]``.

    Computed a block of columns at a time on the weight's device (the CPU where it has no float64),
    so no float64 copy of the whole weight ever exists. Returns a CPU float64 vector ``[in_features]``.
    """
    blocks = float64_blocks(weight.detach(), 1, device=_accumulation_device(weight), max_elements=max_elements)
    sums = [fn(block, cols).sum(0).cpu() for cols, block in blocks]
    return torch.cat(sums) if sums else torch.zeros(0, dtype=torch.float64)


@dataclass
class Moments:
    """Running first and second moments of one linear layer's input features (float64 sums).

    Attributes:
        count: tokens seen.
        total: per input feature, the sum over tokens.
        total_sq: per input feature, the sum of squares over tokens.
    """

    count: int
    total: torch.Tensor
    total_sq: torch.Tensor

    @classmethod
    def empty(cls, features: int) -> "Moments":
        """Zero sums for ``features`` input features."""
        z = torch.zeros(features, dtype=torch.float64)
        return cls(0, z, z.clone())

    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch of inputs ``[..., features]`` (on their device where it has float64)."""
        device = _accumulation_device(x)
        if self.total.device != device:
            self.total, self.total_sq = self.total.to(device), self.total_sq.to(device)
        flat = x.detach().reshape(-1, x.shape[-1])
        self.count += flat.shape[0]
        for _, block in float64_blocks(flat, 0, device=device):  # never the whole batch in float64
            self.total += block.sum(0)
            self.total_sq += block.square().sum(0)

    def merge_ranks(self) -> None:
        """Sum the counts and sums over all ranks."""
        self.count = int(summed(torch.tensor(self.count, dtype=torch.float64)))
        self.total, self.total_sq = summed(self.total), summed(self.total_sq)

    def mean(self) -> torch.Tensor:
        """Per-feature mean over tokens."""
        return self.total / max(self.count, 1)

    def mean_square(self) -> torch.Tensor:
        """Per-feature mean of squares, ``||x_j||^2 / tokens``."""
        return self.total_sq / max(self.count, 1)

    def variance(self) -> torch.Tensor:
        """Per-feature unbiased variance over tokens (0 with fewer than two tokens)."""
        if self.count < 2:
            return torch.zeros_like(self.total)
        centred = self.total_sq - self.total.square() / self.count
        return (centred / (self.count - 1)).clamp_min(0.0)


@dataclass
class SecondMoments:
    """Running ``sum x x^T`` over tokens of one linear layer's input (float64, ``[features, features]``).

    The product is formed in float32 on the input's device and summed in float64 on the CPU.
    """

    count: int
    total: torch.Tensor

    @classmethod
    def empty(cls, features: int) -> "SecondMoments":
        """A zero ``[features, features]`` sum."""
        return cls(0, torch.zeros(features, features, dtype=torch.float64))

    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch of inputs ``[..., features]``."""
        flat = x.detach().reshape(-1, x.shape[-1]).float()
        self.count += flat.shape[0]
        self.total += (flat.T @ flat).double().cpu()

    def merge_ranks(self) -> None:
        """Sum the counts and sums over all ranks."""
        self.count = int(summed(torch.tensor(self.count, dtype=torch.float64)))
        self.total = summed(self.total)


def batches(windows: torch.Tensor, batch_size: int | None) -> Iterator[torch.Tensor]:
    """Consecutive row blocks of ``windows`` (all rows at once when ``batch_size`` is None)."""
    step = len(windows) if batch_size is None else batch_size
    for start in range(0, len(windows), max(step, 1)):
        yield windows[start : start + step]


def collect_layer_inputs(
    model: nn.Module,
    windows: torch.Tensor,
    targets: Mapping[str, Callable[[LayerSlices], nn.Module]],
    make: Callable[[int], Accumulator],
    *,
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "calibration",
    adapter: ArchitectureAdapter | None = None,
    streaming: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, list[Accumulator]]:
    """Per target and decoder layer, an accumulator fed with that module's inputs over ``windows``.

    Args:
        model: a causal LM of a supported family (weights untouched; hooks are removed on exit).
            Gates set on it stay active: the statistics are of the model as it runs.
        windows: ``[num, seq_len]`` token ids. Under ``torchrun`` each rank runs its round-robin
            share and the accumulators are merged across ranks (:meth:`Accumulator.merge_ranks`),
            so every rank returns the statistics of all windows.
        targets: name -> which module of a layer's :class:`~pruneframe.architectures.LayerSlices` to
            watch (e.g. ``lambda m: m.down_proj``, or ``lambda m: m.mlp_in`` for the MLP input).
        make: ``in_features -> accumulator`` (e.g. :meth:`Moments.empty`).
        batch_size: windows per forward pass (all at once when None).
        progress: show a progress bar.
        desc: progress bar label.
        adapter: the model's architecture adapter (``units.adapter``; looked up when omitted).
        streaming: run the decoder one layer at a time on ``device`` (:func:`pruneframe.toolkit.streaming.streamed_forward`):
            only that layer's weights and the calibration hidden states occupy the device, the
            other layers stay where they are. The statistics equal the whole-model pass's.
        device: the compute device of a streamed pass (None: CUDA when present, else the model's
            device); ignored without ``streaming`` (the model runs where it is).
    """
    adapter = adapter or adapter_for(model)
    layers = adapter.layer_slices(model)
    rank, size = world()
    windows = shard_rows(windows, rank, size)
    stats = {name: [make(pick(m).in_features) for m in layers] for name, pick in targets.items()}
    handles = []

    def hook(acc: Accumulator):
        def pre(module: nn.Module, args: tuple) -> None:
            acc.add(args[0])

        return pre

    device = resolve_compute_device(model, device) if streaming else next(model.parameters()).device
    try:
        for name, pick in targets.items():
            for i, mods in enumerate(layers):
                handles.append(pick(mods).register_forward_pre_hook(hook(stats[name][i]), prepend=True))
        total = -(-len(windows) // (batch_size or max(len(windows), 1)))
        with torch.inference_mode():
            if streaming:
                streamed_forward(model, batches(windows, batch_size), device, adapter=adapter, progress=progress and rank == 0, desc=f"{desc} (layers)")
            else:
                for batch in tqdm(batches(windows, batch_size), total=total, desc=desc, disable=not progress or rank != 0, leave=False):
                    model.get_decoder()(input_ids=batch.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if size > 1:
        for accumulators in stats.values():
            for acc in accumulators:
                acc.merge_ranks()
    return stats


def collect_input_moments(
    model: nn.Module,
    windows: torch.Tensor,
    targets: Mapping[str, Callable[[LayerSlices], nn.Module]],
    *,
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "calibration",
    adapter: ArchitectureAdapter | None = None,
    streaming: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, list[Moments]]:
    """Per target and layer, the diagonal :class:`Moments` of the module's input (see :func:`collect_layer_inputs`)."""
    return collect_layer_inputs(
        model,
        windows,
        targets,
        Moments.empty,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
        adapter=adapter,
        streaming=streaming,
        device=device,
    )
