"""The recovery token stream: the same sequences, in the same order, for every method.

The recovery text is tokenized once, cut into non-overlapping sequences of ``seq_len`` tokens, and a
seeded permutation picks ``tokens // seq_len`` of them. That choice depends only on the text, the
tokenizer, the sequence length, the budget and the seed, never on the model being healed, and its
fingerprint (``stream_sha256``) is recorded with every recovered run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pruneframe.toolkit.resume import tensor_digest

__all__ = ["RecoveryStream", "RecoveryDataError", "make_stream"]


class RecoveryDataError(ValueError):
    """The recovery text cannot supply what the recovery asks for (too few tokens, overlap with evaluation)."""


@dataclass(frozen=True)
class RecoveryStream:
    """Training sequences ``[n, seq_len]`` in training order, with where they came from.

    Attributes:
        sequences: token ids, one row per sequence.
        source: the recovery text's stamp (name, origin, split, fingerprint, tokens available).
    """

    sequences: torch.Tensor
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """SHA-256 prefix of the sequences in order: equal exactly when two runs train on the same tokens."""
        return tensor_digest(self.sequences)

    @property
    def tokens(self) -> int:
        """Tokens in the stream."""
        return int(self.sequences.numel())

    def batches(self, batch_size: int) -> list[torch.Tensor]:
        """Row indices of each optimiser step's batch, in order (the last batch may be smaller)."""
        return list(torch.arange(len(self.sequences)).split(batch_size))

    def describe(self) -> dict[str, Any]:
        """JSON-ready: the source stamp, the stream's size and its fingerprint."""
        return {
            **self.source,
            "sequences": len(self.sequences),
            "seq_len": int(self.sequences.shape[-1]),
            "tokens": self.tokens,
            "stream_sha256": self.fingerprint,
        }


def make_stream(
    tokens: torch.Tensor, seq_len: int, budget: int, seed: int, source: dict[str, Any] | None = None, name: str = "recovery text"
) -> RecoveryStream:
    """``budget // seq_len`` sequences of ``seq_len`` tokens from ``tokens`` (1-D), picked by a seeded permutation.

    Raises:
        RecoveryDataError: the budget buys no whole sequence, or the text holds fewer sequences than it asks for.
    """
    flat = tokens.reshape(-1).long()
    wanted = budget // seq_len
    if wanted < 1:
        raise RecoveryDataError(f"recovery tokens {budget:,} is less than one sequence of seq_len {seq_len}")
    available = flat.numel() // seq_len
    if wanted > available:
        raise RecoveryDataError(
            f"recovery tokens {budget:,} ({wanted:,} sequences of {seq_len}) exceeds {name}, which holds "
            f"{flat.numel():,} tokens ({available:,} sequences); lower the token budget or give more text with --recover-data"
        )
    windows = flat[: available * seq_len].view(available, seq_len)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(available, generator=generator)[:wanted]
    stamp = {**(source or {}), "tokens_available": int(flat.numel()), "seed": seed}
    return RecoveryStream(sequences=windows[order].clone(), source=stamp)
