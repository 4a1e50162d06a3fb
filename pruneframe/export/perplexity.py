"""Perplexity of a GGUF file computed by llama.cpp itself, on the same token windows transformers scores.

llama.cpp's server API returns log-probabilities for generated tokens only, so each window is scored one
position at a time: the request for position ``k`` sends the window's first ``k`` tokens (the prefix is
reused from llama.cpp's cache, so one new token is evaluated), forces the window's token ``k`` as the
generated one through ``logit_bias`` (applied at sampling, after the log-probabilities are taken from
the raw logits), and reads that token's log-probability. The NLL sums are those of
:func:`pruneframe.evaluation.perplexity` over the same windows, up to the engine's arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from pruneframe.evaluation.perplexity import PerplexityResult
from pruneframe.export.llamacpp import LlamaCppModel

__all__ = ["gguf_perplexity"]

#: Added to the forced token's logit at sampling: far above any logit gap, so greedy sampling picks it.
_FORCE = 1.0e4


def gguf_perplexity(path: str | Path, windows: torch.Tensor, threads: int = 1, progress: bool = True) -> PerplexityResult:
    """Perplexity of the GGUF file ``path`` on ``windows`` (``LongTensor[n, L]``), each window scored independently.

    Raises:
        ValueError: ``windows`` is not a 2-D integer tensor with ``L >= 2``.
        RuntimeError: llama.cpp failed a request, or sampled another token than the forced one.
    """
    if windows.dim() != 2 or windows.dtype not in (torch.long, torch.int32) or windows.shape[1] < 2:
        raise ValueError(f"gguf_perplexity: windows must be an integer tensor [n, L] with L >= 2, got {tuple(windows.shape)} {windows.dtype}")
    count, seq_len = windows.shape
    model = LlamaCppModel(path, n_ctx=seq_len + 8, threads=threads)
    sums: list[float] = []
    try:
        with tqdm(total=count * (seq_len - 1), desc=f"perplexity in llama.cpp ({Path(path).name})", unit="tok", disable=not progress) as bar:
            for window in windows.tolist():
                nll = 0.0
                for k in range(1, seq_len):
                    response = model.complete(window[:k], 1, n_probs=1, cache_prompt=True, logit_bias=[[window[k], _FORCE]])
                    steps = (response["choices"][0].get("logprobs") or {}).get("content") or []
                    if not steps:
                        raise RuntimeError(f"llama.cpp on {Path(path).name}: no log-probability for token {window[k]} at position {k} (a control token?)")
                    step = steps[0]
                    if int(step["id"]) != window[k]:
                        raise RuntimeError(f"llama.cpp on {Path(path).name}: sampled token {step['id']} instead of the forced {window[k]}")
                    nll -= float(step["logprob"])
                    bar.update(1)
                sums.append(nll)
    finally:
        model.close()
    return PerplexityResult.from_window_nll(tuple(sums), seq_len)
