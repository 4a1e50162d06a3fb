"""Move a CPU model's weights off their memory-mapped files into the process's own memory, one tensor at a time.

``from_pretrained`` maps each safetensors file once and hands out every weight as a view of that one
mapping, so the mapping lives as long as any weight of the file does. A prune that shrinks the model
in place frees the old weights, but their file pages stay mapped (and resident, once a forward pass
has read them): old and new weights coexist. :func:`own_weights` copies each mapped weight into
ordinary memory and tells the kernel right away that the mapped pages it came from are no longer
needed (``madvise(MADV_DONTNEED)``; the pages are clean file pages, reread from the file if ever
touched again), so the resident set never holds more than one copy plus one tensor.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import mmap
import sys

import torch
from torch import nn

__all__ = ["file_mappings", "own_weights"]

_MADV_DONTNEED = 4


def file_mappings(suffixes: tuple[str, ...] = (".safetensors",)) -> list[tuple[int, int, str]]:
    """``(start, end, path)`` of this process's mappings of files ending in ``suffixes`` (Linux; else empty)."""
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].endswith(suffixes):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            out.append((start, end, parts[5]))
    return sorted(out)


def _release(libc: ctypes.CDLL, start: int, nbytes: int) -> None:
    """Drop the whole pages inside ``[start, start + nbytes)`` from the resident set."""
    page = mmap.PAGESIZE
    first = -(-start // page) * page
    last = (start + nbytes) // page * page
    if last > first:
        libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)


def own_weights(model: nn.Module) -> int:
    """Copy every CPU parameter and buffer that lives in a mapped weight file into ordinary memory.

    Only tensors inside a file mapping are touched (their pages are clean and can be reread from the
    file), so nothing held in ordinary memory is ever released. Returns the bytes moved (0 where the
    weights were not mapped, or off Linux).
    """
    if not sys.platform.startswith("linux"):
        return 0
    mappings = file_mappings()
    if not mappings:
        return 0
    starts = [start for start, _, _ in mappings]
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    moved = 0
    tensors = [*model.named_parameters(remove_duplicate=True), *model.named_buffers(remove_duplicate=True)]
    for _, tensor in tensors:
        if tensor.device.type != "cpu" or tensor.numel() == 0:
            continue
        address, nbytes = tensor.data_ptr(), tensor.numel() * tensor.element_size()
        index = bisect.bisect_right(starts, address) - 1
        if index < 0 or address + nbytes > mappings[index][1]:
            continue
        with torch.no_grad():
            tensor.data = tensor.data.clone()
        _release(libc, address, nbytes)
        moved += nbytes
    return moved
