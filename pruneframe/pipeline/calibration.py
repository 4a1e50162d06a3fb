"""Calibration data: one token stream from which each method cuts the windows its config asks for."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["CalibrationData", "InsufficientCalibrationError"]


class InsufficientCalibrationError(ValueError):
    """The calibration stream is shorter than a method's settings need; the message says found and needed."""


@dataclass
class CalibrationData:
    """A 1-D stream of token ids, with the name of where it came from.

    Methods call :meth:`windows` with their own sizes (GRASPrune: 64 x 256, LLM-Pruner: 10 x 64), so
    every method reads the same text from its beginning. ``tokens_read`` records how far into the
    stream any method read, for the report.
    """

    tokens: torch.Tensor
    name: str = "tokens"
    tokens_read: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.tokens.dim() != 1:
            self.tokens = self.tokens.reshape(-1)
        self.tokens = self.tokens.long()

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def windows(self, num: int, seq_len: int, offset: int = 0) -> torch.Tensor:
        """``num`` non-overlapping windows of ``seq_len`` tokens, starting after ``offset`` windows.

        Raises:
            InsufficientCalibrationError: the stream is too short; the message names the source and sizes.
        """
        if num <= 0 or seq_len <= 1:
            raise ValueError(f"need num >= 1 and seq_len >= 2 windows, got num={num}, seq_len={seq_len}")
        start, stop = offset * seq_len, (offset + num) * seq_len
        if stop > len(self):
            raise InsufficientCalibrationError(
                f"calibration source {self.name!r} has {len(self):,} tokens; {num} windows of {seq_len} "
                f"after {offset} windows need {stop:,} (give more text, or ask the method for fewer or shorter windows)"
            )
        self.tokens_read = max(self.tokens_read, stop)
        return self.tokens[start:stop].view(num, seq_len).clone()
