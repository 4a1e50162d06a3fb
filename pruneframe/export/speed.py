"""Prefill and decode speed of GGUF files in llama.cpp: batch 1, fixed threads, models alternating, fastest repeat.

Each repeat loads nothing new: every file stays loaded in its own llama.cpp instance, and the repeats
alternate between the files (dense, pruned, dense, ...) so that a slow period of a shared machine
affects both. A repeat times one prefill per prompt length (a fresh context; llama.cpp's own timer,
``prompt_per_second``) and one decode of ``decode_tokens`` tokens after the shortest prompt
(``predicted_per_second``). Each file's fastest repeat is kept, as the speed evaluator does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pruneframe.export.llamacpp import LlamaCppModel

__all__ = ["LlamaCppSpeed", "measure_llamacpp_speed"]


@dataclass(frozen=True)
class LlamaCppSpeed:
    """One file's fastest speeds: prefill tokens/s per prompt length, and decode tokens/s."""

    prefill_tokens_per_s: dict[int, float]
    decode_tokens_per_s: float
    threads: int
    repeats: int

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields (prompt lengths as strings)."""
        out = asdict(self)
        out["prefill_tokens_per_s"] = {str(k): v for k, v in self.prefill_tokens_per_s.items()}
        return out


def _prompt(length: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, max(101, vocab - 1), (length,), generator=g).tolist()


def measure_llamacpp_speed(
    files: Mapping[str, str | Path],
    vocab_size: int,
    prefill_lens: tuple[int, ...] = (256, 512),
    decode_tokens: int = 64,
    threads: int = 1,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, LlamaCppSpeed]:
    """Time every file in ``files`` (label -> path), alternating; returns label -> :class:`LlamaCppSpeed`."""
    n_ctx = max(prefill_lens) + decode_tokens + 16
    models = {label: LlamaCppModel(path, n_ctx=n_ctx, threads=threads) for label, path in files.items()}
    prompts = {n: _prompt(n, vocab_size, seed + n) for n in prefill_lens}
    prefill: dict[str, dict[int, list[float]]] = {label: {n: [] for n in prefill_lens} for label in files}
    decode: dict[str, list[float]] = {label: [] for label in files}
    try:
        for label, model in models.items():  # warm-up: page in the weights, size the buffers
            model.complete(prompts[min(prefill_lens)], 4)
        for _ in range(repeats):
            for label, model in models.items():
                for n in prefill_lens:
                    timings = model.complete(prompts[n], 1)["timings"]
                    prefill[label][n].append(float(timings["prompt_per_second"]))
                timings = model.complete(prompts[min(prefill_lens)], decode_tokens)["timings"]
                decode[label].append(float(timings["predicted_per_second"]))
    finally:
        for model in models.values():
            model.close()
    return {label: LlamaCppSpeed({n: max(v) for n, v in prefill[label].items()}, max(decode[label]), threads, repeats) for label in files}


def weight_bytes_per_token(path: str | Path) -> int:
    """Bytes of weights a decode step reads from ``path``: every tensor but the embedding table (one row of it is read).

    When the file has no separate ``output.weight`` the embedding table is the output head and counts.
    """
    import gguf

    tensors = gguf.GGUFReader(str(path)).tensors
    tied = not any(t.name == "output.weight" for t in tensors)
    return sum(int(t.n_bytes) for t in tensors if t.name != "token_embd.weight" or tied)
