"""Resident-memory measurement: current and peak RSS, and a peak-tracking context manager.

On Linux the peak comes from the kernel's exact high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs``): no polling, nothing missed, no thread competing with the compute threads
(a polling thread waking every few milliseconds measurably slows two-core runs). Elsewhere a
background thread samples RSS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import re
import resource
import sys
import threading
from dataclasses import dataclass, field
from types import TracebackType

import psutil
import torch

__all__ = [
    "current_rss_bytes",
    "peak_rss_bytes",
    "release_unused_memory",
    "return_large_blocks",
    "LARGE_BLOCK_BYTES",
    "PeakMemory",
    "MemoryReport",
]

#: Blocks at least this large are mapped on their own under :func:`return_large_blocks`.
LARGE_BLOCK_BYTES = 4 << 20
_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


def current_rss_bytes() -> int:
    """Resident set size of this process right now, in bytes."""
    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """Lifetime peak RSS of this process in bytes (``getrusage``; kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``malloc_trim`` and ``mallopt``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both exist in glibc only
    except (OSError, AttributeError):
        return None
    return libc


def release_unused_memory() -> bool:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc ``malloc_trim``).

    After a large temporary workload (e.g. another method's gradient pass) glibc keeps the freed
    blocks in the process, so the resident set, and every later peak measured from it, stays
    inflated. Returns whether a trim ran (False where glibc is not the allocator).
    """
    gc.collect()
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def return_large_blocks(threshold_bytes: int = LARGE_BLOCK_BYTES) -> bool:
    """Have glibc map every block of at least ``threshold_bytes`` on its own, returned to the OS when freed.

    By default glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB).
    After the first freed weight-sized temporary (a gradient, a transposed or folded matrix), blocks
    of that size come from the heap instead, and the heap keeps them after they are freed: the
    process's resident memory grows by temporaries that no longer exist. A fixed threshold stops
    that. On the 1B shape in bf16 (``benchmarks/results/memory_one_copy_1b.json``, docs/scale.md) it took llm-pruner's peak from
    1.45-1.49x to 1.30x the weight bytes and ``compare``'s from 1.31x to 1.11x. Blocks under 4 MiB
    (activations of short sequences) stay on the heap, so compute speed is unchanged: SmolLM2-135M's
    bf16 prefill of 256 tokens on 2 CPU cores (fastest of 7, two processes per setting) took 0.211 s
    with 4 MiB and 0.210-0.215 s without, while a 128 KiB threshold made it 0.255-0.257 s (19% slower).

    The setting is process-wide and lasts for the process; the command line applies it at start.
    Returns False where glibc is not the allocator, or when ``MALLOC_MMAP_THRESHOLD_`` is set in the
    environment (that setting stands).
    """
    libc = _glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))


_HWM_LOCK = threading.Lock()
_HWM_ACTIVE: list["PeakMemory"] = []


def _read_hwm_bytes() -> int | None:
    """The kernel's peak-RSS high-water mark of this process, or None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            match = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _reset_hwm() -> bool:
    """Reset the high-water mark to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@dataclass
class MemoryReport:
    """What :class:`PeakMemory` observed.

    Attributes:
        start_rss: RSS when the block began (bytes).
        peak_rss: highest RSS sampled during the block (bytes).
        cuda_peak_allocated: ``torch.cuda.max_memory_allocated`` during the block, or None off CUDA.
        samples: number of RSS samples taken (0 when the kernel's high-water mark was read).
        source: ``"kernel-hwm"`` or ``"sampling"``.
    """

    start_rss: int = 0
    peak_rss: int = 0
    cuda_peak_allocated: int | None = None
    samples: int = 0
    source: str = "sampling"

    @property
    def delta_rss(self) -> int:
        """Peak RSS above the starting RSS, in bytes (never negative)."""
        return max(0, self.peak_rss - self.start_rss)

    def as_dict(self) -> dict[str, int | None]:
        """Plain-dict view, for JSON results."""
        return {
            "start_rss_bytes": self.start_rss,
            "peak_rss_bytes": self.peak_rss,
            "delta_rss_bytes": self.delta_rss,
            "cuda_peak_allocated_bytes": self.cuda_peak_allocated,
            "samples": self.samples,
            "source": self.source,
        }


@dataclass
class PeakMemory:
    """Context manager tracking the peak RSS of the block (and the CUDA peak on CUDA).

    Uses the kernel's high-water mark where available (nested blocks stay exact: a reset folds the
    current mark into every enclosing block first); otherwise samples RSS in a background thread
    every ``interval_s`` seconds. ``sampling=True`` forces the thread.

    Example::

        with PeakMemory() as mem:
            model(input_ids)
        print(mem.report.peak_rss)

    On CUDA (``device`` starting with ``"cuda"``) the CUDA peak-allocation counter is reset on
    entry and read on exit.
    """

    interval_s: float = 0.005
    device: str = "cpu"
    sampling: bool = False
    report: MemoryReport = field(default_factory=MemoryReport)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def _cuda(self) -> bool:
        return self.device.startswith("cuda") and torch.cuda.is_available()

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            rss = int(proc.memory_info().rss)
            self.report.peak_rss = max(self.report.peak_rss, rss)
            self.report.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        """Start sampling."""
        self.report = MemoryReport(start_rss=current_rss_bytes())
        self.report.peak_rss = self.report.start_rss
        if self._cuda():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        if not self.sampling:
            with _HWM_LOCK:
                mark = _read_hwm_bytes()
                if mark is not None:
                    for outer in _HWM_ACTIVE:
                        outer.report.peak_rss = max(outer.report.peak_rss, mark)
                    if _reset_hwm():
                        self.report.source = "kernel-hwm"
                        _HWM_ACTIVE.append(self)
                        return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="PeakMemory", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Read the high-water mark, or stop sampling and take one last sample."""
        if self.report.source == "kernel-hwm":
            with _HWM_LOCK:
                self.report.peak_rss = max(self.report.peak_rss, _read_hwm_bytes() or 0, current_rss_bytes())
                _HWM_ACTIVE.remove(self)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
                self._thread = None
            self.report.peak_rss = max(self.report.peak_rss, current_rss_bytes())
            self.report.samples += 1
        if self._cuda():
            torch.cuda.synchronize()
            self.report.cuda_peak_allocated = int(torch.cuda.max_memory_allocated())
