"""How scattered a file's cached pages lie in physical memory: the layout behind file-to-file speed differences.

llama.cpp maps a GGUF file and reads every weight page per decoded token. Byte-identical copies of one
file were measured to decode up to about 5% apart, the copy with the most scattered pages among the
slowest, though not copy by copy in order (docs/llamacpp.md). The timing protocol of
:mod:`pruneframe.export.speed` records this count beside each file's speeds.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

__all__ = ["count_runs", "physical_runs"]

_PAGE = mmap.PAGESIZE
_PFN_MASK = (1 << 55) - 1
_PRESENT = 1 << 63


def physical_runs(path: str | Path) -> int | None:
    """How many physically contiguous runs the page-cache pages of ``path`` form, or ``None`` where it cannot be read.

    The file is mapped privately (never written) and every page touched, which caches it as llama.cpp's
    own mapping does; the page frame numbers come from ``/proc/self/pagemap``, which Linux shows only to a process
    with ``CAP_SYS_ADMIN`` (elsewhere, and on other systems, the answer is ``None``). 1 would be one
    contiguous block; a file of ``n`` pages scattered page by page gives ``n``.
    """
    size = os.path.getsize(path)
    if size == 0 or not os.path.exists("/proc/self/pagemap"):
        return None
    pages = (size + _PAGE - 1) // _PAGE
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
            for i in range(pages):
                mapped[i * _PAGE]  # never written: the private mapping reads the page cache's own pages
            start = _mapping_start(mapped)
            with open("/proc/self/pagemap", "rb") as pagemap:
                pagemap.seek(start // _PAGE * 8)
                raw = pagemap.read(pages * 8)
    except OSError:
        return None
    entries = struct.unpack(f"<{pages}Q", raw[: pages * 8])
    if not all(e & _PRESENT for e in entries):
        return None
    frames = [e & _PFN_MASK for e in entries]
    if not any(frames):  # frame numbers hidden: no CAP_SYS_ADMIN
        return None
    return count_runs(frames)


def count_runs(frames: list[int]) -> int:
    """How many runs of consecutive numbers ``frames`` (page frame numbers in file order) falls into."""
    return (1 if frames else 0) + sum(1 for a, b in zip(frames, frames[1:], strict=False) if b != a + 1)


def _mapping_start(mapped: mmap.mmap) -> int:
    """The virtual address of ``mapped``'s first byte."""
    import ctypes

    anchor = ctypes.c_char.from_buffer(mapped)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor
