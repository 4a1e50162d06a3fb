"""Float64 reductions of large tensors a block at a time.

Scores and statistics accumulate in float64 whatever the model's dtype; converting a whole weight or a
whole calibration batch at once would hold a float64 copy (4x a bf16 tensor) next to it. The reductions
of :mod:`pruneframe.toolkit.collect` and :class:`pruneframe.architectures.WeightSlice` walk these blocks instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["UPCAST_BLOCK_ELEMENTS", "float64_blocks"]

#: Largest number of elements converted to float64 at once (32 MiB).
UPCAST_BLOCK_ELEMENTS = 1 << 22


def float64_blocks(
    tensor: torch.Tensor,
    dim: int,
    *,
    group: int = 1,
    device: torch.device | None = None,
    max_elements: int = UPCAST_BLOCK_ELEMENTS,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Consecutive blocks along ``dim`` (0: rows, 1: columns) of a 2-D tensor, converted to float64.

    Each block covers whole groups of ``group`` consecutive rows/columns and holds at most
    ``max_elements`` elements (or one group); it is yielded with the slice of ``dim`` it covers and
    lives on ``device`` (default: the tensor's own).
    """
    span = int(tensor.shape[1 - dim]) * group
    step = max(1, max_elements // max(span, 1)) * group
    length = int(tensor.shape[dim])
    for start in range(0, length, step):
        index = slice(start, min(start + step, length))
        block = tensor[index] if dim == 0 else tensor[:, index]
        yield index, block.to(device=device if device is not None else tensor.device, dtype=torch.float64)
