"""Perplexity: exact token-weighted mean negative log-likelihood over fixed token windows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from pruneframe.data.sources import resolve_text
from pruneframe.data.windows import token_windows, tokenizer_fingerprint
from pruneframe.evaluation.base import EvalContext, Evaluator, model_device, model_dtype
from pruneframe.evaluation.protocol import DataStamp, PerplexityProtocol

__all__ = ["NonFiniteError", "PerplexityResult", "perplexity", "PerplexityConfig", "PerplexityEvaluator"]


_IGNORE = -100


class NonFiniteError(FloatingPointError):
    """The model produced a NaN or infinite loss; the message names the window index range."""


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity over a set of windows.

    Attributes:
        ppl: ``exp(mean_nll)``.
        mean_nll: sum of per-token negative log-likelihoods (float64) / number of predicted tokens.
        tokens: predicted tokens, ``windows * (seq_len - 1)``.
        windows: number of windows.
    """

    ppl: float
    mean_nll: float
    tokens: int
    windows: int


@torch.inference_mode()
def perplexity(
    model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 1, progress: bool = True
) -> PerplexityResult:
    """Perplexity of ``model`` on ``windows`` (``LongTensor[n, L]``), every window scored independently.

    Each window predicts its tokens 1..L-1 from the ones before; the mean NLL is weighted by token,
    summed in float64. Runs under ``torch.inference_mode`` with ``use_cache=False``.

    Raises:
        ValueError: ``windows`` is not a 2-D integer tensor with ``L >= 2``, or ``batch_size < 1``.
        NonFiniteError: a batch gave a NaN/inf loss (never skipped; the window range is named).
    """
    if windows.dim() != 2 or windows.dtype not in (torch.long, torch.int32) or windows.shape[1] < 2:
        raise ValueError(
            f"perplexity: windows must be an integer tensor [n, L] with L >= 2, got {tuple(windows.shape)} {windows.dtype}"
        )
    if batch_size < 1:
        raise ValueError(f"perplexity: batch_size must be >= 1, got {batch_size}")
    count, seq_len = windows.shape
    device = model_device(model)
    total = torch.zeros((), dtype=torch.float64, device=device)
    with tqdm(total=count, desc="perplexity", unit="win", disable=not progress) as bar:
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            ids = windows[start:stop].to(device=device, dtype=torch.long, non_blocking=True)
            logits = model(input_ids=ids, use_cache=False).logits
            # position t predicts token t+1; the last position predicts nothing (ignored, NLL 0).
            # Shifting the labels rather than slicing the logits avoids copying the [b, L, V] logits.
            labels = torch.full_like(ids, _IGNORE)
            labels[:, :-1] = ids[:, 1:]
            nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=_IGNORE, reduction="none"
            )
            batch_sum = nll.sum(dtype=torch.float64)
            if not torch.isfinite(batch_sum):
                raise NonFiniteError(
                    f"perplexity: non-finite loss in windows {start}..{stop - 1} (of {count}); "
                    "the model produced NaN/inf logits"
                )
            total += batch_sum
            bar.update(stop - start)
    tokens = count * (seq_len - 1)
    mean_nll = float(total.item()) / tokens
    return PerplexityResult(ppl=math.exp(mean_nll), mean_nll=mean_nll, tokens=tokens, windows=count)


class PerplexityConfig(BaseModel):
    """Perplexity settings: which text, which split, and how it is cut into windows."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field("wikitext-2", description="text source (see pruneframe.data.resolve_text)")
    split: str = "test"
    seq_len: Annotated[int, Field(ge=2)] = 512
    num_windows: Annotated[int, Field(ge=1)] | None = 64
    offset_windows: Annotated[int, Field(ge=0)] = 0
    batch_size: Annotated[int, Field(ge=1)] = 1
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="expected model dtype; the model is never converted, a mismatch is an error"
    )


class PerplexityEvaluator(Evaluator):
    """Perplexity on a text source; results: ``ppl``, ``mean_nll``, ``tokens``, ``windows``, ``protocol``."""

    name: ClassVar[str] = "perplexity"
    Config: ClassVar[type[BaseModel]] = PerplexityConfig

    def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, Any]:
        """Resolve the text, cut windows, measure perplexity and stamp the protocol."""
        cfg: PerplexityConfig = self.config  # type: ignore[assignment]
        dtype = model_dtype(model)
        if cfg.dtype is not None and cfg.dtype != dtype:
            raise ValueError(f"perplexity: config dtype {cfg.dtype!r} but the model is {dtype!r}; load it as {cfg.dtype!r}")
        if tokenizer is None:
            raise ValueError("perplexity: a tokenizer is required (the model was loaded without one)")
        source = resolve_text(cfg.data, cfg.split)
        windows = token_windows(source, tokenizer, cfg.seq_len, cfg.num_windows, cfg.offset_windows)
        result = perplexity(model, windows, batch_size=cfg.batch_size, progress=context.progress)
        protocol = PerplexityProtocol(
            data=DataStamp(**source.describe()),
            tokenizer=Path(str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)).name,
            tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
            seq_len=cfg.seq_len,
            num_windows=result.windows,
            offset_windows=cfg.offset_windows,
            tokens_predicted=result.tokens,
            dtype=dtype,
        )
        return {
            "ppl": result.ppl,
            "mean_nll": result.mean_nll,
            "tokens": result.tokens,
            "windows": result.windows,
            "protocol": protocol.model_dump(mode="json"),
        }
