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

Nor is a file favoured by where its pages lie: llama.cpp maps the file, and byte-identical copies were
measured to decode up to about 5% apart (docs/llamacpp.md; :mod:`pruneframe.export.pagemap` records how
scattered each copy's pages are). With ``placements`` above 1 every file is timed from that many fresh
copies of itself (new pages each time, the files' copies written in turns), and the fastest repeat is
taken over all of them.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pruneframe.export.llamacpp import LlamaCppModel
from pruneframe.export.pagemap import physical_runs

__all__ = ["LlamaCppSpeed", "measure_llamacpp_speed", "paired_speedup", "weight_bytes_per_token"]


@dataclass(frozen=True)
class LlamaCppSpeed:
    """One file's fastest speeds (prefill tokens/s per prompt length, decode tokens/s) and every repeat's, in order.

    ``repeats`` counts the repeats per placement; ``page_runs`` holds, per placement, how many physically
    contiguous runs the timed copy's pages formed (``None`` where that cannot be read).
    """

    prefill_tokens_per_s: dict[int, float]
    decode_tokens_per_s: float
    threads: int
    repeats: int
    prefill_samples: dict[int, list[float]] = field(default_factory=dict)
    decode_samples: list[float] = field(default_factory=list)
    placements: int = 1
    page_runs: list[int | None] = field(default_factory=list)

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
    placements: int = 1,
) -> dict[str, LlamaCppSpeed]:
    """Time every file in ``files`` (label -> path), alternating; returns label -> :class:`LlamaCppSpeed`.

    The repeats run in two sessions: in the first the files are loaded in the given order, in the second
    (``repeats // 2`` of them) in the reverse order; within a session the files take turns going first.
    With ``placements`` above 1 this is done ``placements`` times, each time on fresh copies of the
    files written beside them (and removed after), so every file is timed from several page layouts.
    """
    if placements < 1 or repeats < 1:
        raise ValueError(f"placements and repeats must be at least 1, got {placements} and {repeats}")
    prompts = {n: _prompt(n, vocab_size, seed + n) for n in prefill_lens}
    prefill: dict[str, dict[int, list[float]]] = {label: {n: [] for n in prefill_lens} for label in files}
    decode: dict[str, list[float]] = {label: [] for label in files}
    runs: dict[str, list[int | None]] = {label: [] for label in files}
    labels = list(files)
    for placement in range(placements):
        if placements == 1:
            _time_placement(files, labels, prompts, decode_tokens, threads, repeats, prefill, decode, runs)
            continue
        with _fresh_copies(files, labels if placement % 2 == 0 else labels[::-1]) as copies:
            _time_placement(copies, labels, prompts, decode_tokens, threads, repeats, prefill, decode, runs)
    return {
        label: LlamaCppSpeed(
            {n: max(v) for n, v in prefill[label].items()}, max(decode[label]), threads, repeats, prefill[label], decode[label], placements, runs[label]
        )
        for label in files
    }


@contextmanager
def _fresh_copies(files: Mapping[str, str | Path], write_order: list[str]) -> Iterator[dict[str, Path]]:
    """Copies of ``files`` (label -> path) in temporary folders beside them, written in ``write_order``; removed after."""
    with ExitStack() as stack:
        copies: dict[str, Path] = {}
        for label in write_order:
            source = Path(files[label])
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix=".pruneframe-placement-", dir=source.parent))
            copies[label] = Path(shutil.copyfile(source, Path(folder) / source.name))
        yield {label: copies[label] for label in files}


def _time_placement(
    files: Mapping[str, str | Path],
    labels: list[str],
    prompts: dict[int, list[int]],
    decode_tokens: int,
    threads: int,
    repeats: int,
    prefill: dict[str, dict[int, list[float]]],
    decode: dict[str, list[float]],
    runs: dict[str, list[int | None]],
) -> None:
    """One placement: two sessions (given and reversed load order), repeats appended to ``prefill`` and ``decode``."""
    shortest = min(prompts)
    n_ctx = max(prompts) + decode_tokens + 16
    for load_order, count in ((labels, repeats - repeats // 2), (labels[::-1], repeats // 2)):
        if count == 0:
            continue
        models = {label: LlamaCppModel(files[label], n_ctx=n_ctx, threads=threads) for label in load_order}
        try:
            for model in models.values():  # warm-up: page in the weights, size the buffers
                model.complete(prompts[shortest], 4)
            for repeat in range(count):
                order = list(models.items()) if repeat % 2 == 0 else list(reversed(models.items()))
                for label, model in order:
                    for n, prompt in prompts.items():
                        timings = model.complete(prompt, 1)["timings"]
                        prefill[label][n].append(float(timings["prompt_per_second"]))
                    timings = model.complete(prompts[shortest], decode_tokens)["timings"]
                    decode[label].append(float(timings["predicted_per_second"]))
        finally:
            for model in models.values():
                model.close()
    for label in labels:
        runs[label].append(physical_runs(files[label]))


def weight_bytes_per_token(path: str | Path) -> int:
    """Bytes of weights a decode step reads from ``path``: every tensor but the embedding table (one row of it is read).

    When the file has no separate ``output.weight`` the embedding table is the output head and counts.
    """
    import gguf

    tensors = gguf.GGUFReader(str(path)).tensors
    tied = not any(t.name == "output.weight" for t in tensors)
    return sum(int(t.n_bytes) for t in tensors if t.name != "token_embd.weight" or tied)
