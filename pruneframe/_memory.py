"""Resident-memory measurement: current and peak RSS, and a sampling context manager."""

from __future__ import annotations

import resource
import sys
import threading
from dataclasses import dataclass, field
from types import TracebackType

import psutil
import torch

__all__ = ["current_rss_bytes", "peak_rss_bytes", "PeakMemory", "MemoryReport"]


def current_rss_bytes() -> int:
    """Resident set size of this process right now, in bytes."""
    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """Lifetime peak RSS of this process in bytes (``getrusage``; kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class MemoryReport:
    """What :class:`PeakMemory` observed.

    Attributes:
        start_rss: RSS when the block began (bytes).
        peak_rss: highest RSS sampled during the block (bytes).
        cuda_peak_allocated: ``torch.cuda.max_memory_allocated`` during the block, or None off CUDA.
        samples: number of RSS samples taken.
    """

    start_rss: int = 0
    peak_rss: int = 0
    cuda_peak_allocated: int | None = None
    samples: int = 0

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
        }


@dataclass
class PeakMemory:
    """Context manager sampling RSS in a background thread every ``interval_s`` seconds.

    Example::

        with PeakMemory() as mem:
            model(input_ids)
        print(mem.report.peak_rss)

    On CUDA (``device`` starting with ``"cuda"``) the CUDA peak-allocation counter is reset on
    entry and read on exit.
    """

    interval_s: float = 0.005
    device: str = "cpu"
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
        """Stop sampling and take one last sample."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.report.peak_rss = max(self.report.peak_rss, current_rss_bytes())
        self.report.samples += 1
        if self._cuda():
            torch.cuda.synchronize()
            self.report.cuda_peak_allocated = int(torch.cuda.max_memory_allocated())

