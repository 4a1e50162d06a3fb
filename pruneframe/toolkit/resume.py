"""Resumable loops: a loop's state saved atomically and matched to the run that wrote it.

A long calibration loop (e.g. GRASPrune's gate training) saves its state every few steps through a
:class:`LoopCheckpoint`; started again with the same checkpoint, it continues after the last saved
step. The ``fingerprint`` (whatever determines the run: settings, model, budget, data digests) is
stored with the state, and a file from another run is refused rather than silently resumed or
overwritten.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pruneframe.util.io import write_bytes_atomic
from pruneframe.toolkit.distributed import is_main_process

__all__ = ["LoopCheckpoint", "LoopStats", "StaleCheckpointError", "tensor_digest"]


def tensor_digest(t: torch.Tensor) -> str:
    """First 16 hex digits of the SHA-256 of a tensor's bytes (row-major, on the CPU): a fingerprint entry."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


@dataclass
class LoopStats:
    """What a training loop reports (and saves with its state): losses, per-step records, tokens, time, memory."""

    losses: list[float] = field(default_factory=list)
    records: list[dict[str, float]] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0

    @property
    def tokens_per_second(self) -> float:
        """Training throughput."""
        return self.tokens / self.seconds if self.seconds else 0.0


class StaleCheckpointError(ValueError):
    """A saved loop state belongs to a different run than the one trying to resume from it."""


@dataclass(frozen=True)
class LoopCheckpoint:
    """Where a loop keeps its resumable state, how often it writes it, and which run it belongs to.

    The state (step, parameters, optimizer state, stats so far) is written atomically every
    ``every`` steps and after the last one, by rank 0 only. A loop started with a checkpoint that
    exists resumes after its last saved step; one whose ``fingerprint`` (config, data, budget...)
    differs is refused with an error naming the file and the differing entries, never overwritten.
    """

    path: Path
    every: int
    fingerprint: dict[str, Any]

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none yet.

        Raises:
            StaleCheckpointError: when the file belongs to a different run (fingerprint mismatch).
        """
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        saved = state.get("fingerprint", {})
        if saved != self.fingerprint:
            keys = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
            raise StaleCheckpointError(
                f"checkpoint {str(self.path)!r} was written by a different run (differs in {', '.join(keys)}); remove it or choose another checkpoint directory"
            )
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (with the fingerprint) atomically; only rank 0 writes."""
        if is_main_process():
            write_bytes_atomic(self.path, lambda handle: torch.save({**state, "fingerprint": self.fingerprint}, handle))
