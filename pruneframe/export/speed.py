"""Prefill and decode speed of GGUF files in llama.cpp: batch 1, fixed threads, models alternating, fastest repeat.

Each repeat loads nothing new: every file stays loaded in its own llama.cpp instance, and the repeats
alternate between the files (dense, pruned, dense, ...) so that a slow period of a shared machine
affects both. Neither file is favoured by where it sits: half the repeats load the files in the given
order and half in the reverse order, and within each half the files take turns going first. A repeat
times one prefill per prompt length (a fresh context; llama.cpp's own timer, ``prompt_per_second``) and
one decode of ``decode_tokens`` tokens after the shortest prompt (``predicted_per_second``). Each file's
fastest repeat is kept, as the speed evaluator does, and so is every repeat's value, in order:
:func:`paired_speedup` reads the ratio within each repeat (two files timed seconds apart), whose spread
shows how far the machine's own variation moves a speedup.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pruneframe.export.llamacpp import LlamaCppModel

__all__ = ["LlamaCppSpeed", "measure_llamacpp_speed", "paired_speedup", "weight_bytes_per_token"]


@dataclass(frozen=True)
class LlamaCppSpeed:
    """One file's fastest speeds (prefill tokens/s per prompt length, decode tokens/s) and every repeat's, in order."""

    prefill_tokens_per_s: dict[int, float]
    decode_tokens_per_s: float
    threads: int
    repeats: int
    prefill_samples: dict[int, list[float]] = field(default_factory=dict)
    decode_samples: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields (prompt lengths as strings)."""
        out = asdict(self)
        out["prefill_tokens_per_s"] = {str(k): v for k, v in self.prefill_tokens_per_s.items()}
        out["prefill_samples"] = {str(k): v for k, v in self.prefill_samples.items()}
        return out


def paired_speedup(reference: list[float], candidate: list[float]) -> dict[str, float]:
    """Per repeat, ``candidate`` tokens/s over ``reference`` tokens/s: their median, lowest and highest.

    The two lists are one measurement's repeats in the order they were timed (each repeat times both
    files seconds apart), so a slow period of the machine moves both values of a pair.
    """
    if not reference or len(reference) != len(candidate):
        raise ValueError(f"paired_speedup needs as many repeats of each file, got {len(reference)} and {len(candidate)}")
    ratios = [c / r for r, c in zip(reference, candidate, strict=True)]
    return {"median": statistics.median(ratios), "low": min(ratios), "high": max(ratios), "repeats": len(ratios)}


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
    """Time every file in ``files`` (label -> path), alternating; returns label -> :class:`LlamaCppSpeed`.

    The repeats run in two sessions: in the first the files are loaded in the given order, in the second
    (``repeats // 2`` of them) in the reverse order; within a session the files take turns going first.
    """
    n_ctx = max(prefill_lens) + decode_tokens + 16
    prompts = {n: _prompt(n, vocab_size, seed + n) for n in prefill_lens}
    prefill: dict[str, dict[int, list[float]]] = {label: {n: [] for n in prefill_lens} for label in files}
    decode: dict[str, list[float]] = {label: [] for label in files}
    labels = list(files)
    for load_order, count in ((labels, repeats - repeats // 2), (labels[::-1], repeats // 2)):
        if count == 0:
            continue
        models = {label: LlamaCppModel(files[label], n_ctx=n_ctx, threads=threads) for label in load_order}
        try:
            for model in models.values():  # warm-up: page in the weights, size the buffers
                model.complete(prompts[min(prefill_lens)], 4)
            for repeat in range(count):
                order = list(models.items()) if repeat % 2 == 0 else list(reversed(models.items()))
                for label, model in order:
                    for n in prefill_lens:
                        timings = model.complete(prompts[n], 1)["timings"]
                        prefill[label][n].append(float(timings["prompt_per_second"]))
                    timings = model.complete(prompts[min(prefill_lens)], decode_tokens)["timings"]
                    decode[label].append(float(timings["predicted_per_second"]))
        finally:
            for model in models.values():
                model.close()
    return {
        label: LlamaCppSpeed({n: max(v) for n, v in prefill[label].items()}, max(decode[label]), threads, repeats, prefill[label], decode[label])
        for label in files
    }


def weight_bytes_per_token(path: str | Path) -> int:
    """Bytes of weights a decode step reads from ``path``: every tensor but the embedding table (one row of it is read).

    When the file has no separate ``output.weight`` the embedding table is the output head and counts.
    """
    import gguf

    tensors = gguf.GGUFReader(str(path)).tensors
    tied = not any(t.name == "output.weight" for t in tensors)
    return sum(int(t.n_bytes) for t in tensors if t.name != "token_embd.weight" or tied)
