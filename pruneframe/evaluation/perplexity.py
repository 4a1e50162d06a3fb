"""Perplexity: exact token-weighted mean negative log-likelihood over fixed token windows, on several sources.

One evaluator measures every configured text source (by default every one available: see
:func:`pruneframe.data.sources.eval_source_catalog`), records each window's NLL sum so paired intervals
can be recomputed, and stamps each source with its protocol, domain tag and named protocol preset.

Named protocols (``protocol``):

- ``custom`` (default): the configured sources, ``seq_len`` and ``num_windows``.
- ``wikitext2-2048``: the whole WikiText-2 test split in non-overlapping 2,048-token windows, as SparseGPT,
  Wanda and SliceGPT report it.
- ``llm-pruner-128``: every non-overlapping 128-token window, as LLM-Pruner reports it (its papers use
  WikiText-2 and PTB test; add ``ptb`` to ``sources`` when it is available).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from pruneframe.data.sources import eval_source_catalog, resolve_text
from pruneframe.data.windows import prepended_bos, token_windows, tokenizer_fingerprint
from pruneframe.util.devices import DtypeName, dtype_name, model_device
from pruneframe.evaluation.base import EvalContext, Evaluator
from pruneframe.evaluation.covered_bytes import bits_per_byte, window_bytes
from pruneframe.evaluation.protocol import DataStamp, PerplexityProtocol, PerplexitySetProtocol
from pruneframe.evaluation.stats import exp_or_inf
from pruneframe.toolkit.streaming import StreamingOptions, streamed_logits
from pruneframe.util.paths import user_path

__all__ = [
    "NonFiniteError",
    "PerplexityResult",
    "perplexity",
    "PROTOCOLS",
    "ProtocolName",
    "PerplexitySource",
    "PerplexityConfig",
    "PerplexityEvaluator",
    "source_windows",
]


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
        window_nll: each window's NLL sum (float64), in window order (``seq_len - 1`` tokens each).
    """

    ppl: float
    mean_nll: float
    tokens: int
    windows: int
    window_nll: tuple[float, ...] = ()

    @classmethod
    def from_window_nll(cls, window_nll: tuple[float, ...], seq_len: int) -> PerplexityResult:
        """The result of windows of ``seq_len`` tokens (each predicting ``seq_len - 1``) whose NLL sums are ``window_nll``.

        A mean NLL beyond what a float's ``exp`` holds (a broken model: about 710 nats per token) is a perplexity of ``inf``.
        """
        tokens = len(window_nll) * (seq_len - 1)
        mean_nll = math.fsum(window_nll) / tokens
        return cls(ppl=exp_or_inf(mean_nll), mean_nll=mean_nll, tokens=tokens, windows=len(window_nll), window_nll=window_nll)


@torch.inference_mode()
def perplexity(
    model: torch.nn.Module,
    windows: torch.Tensor,
    batch_size: int = 1,
    progress: bool = True,
    stream_device: str | torch.device | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` on ``windows`` (``LongTensor[n, L]``), every window scored independently.

    Each window predicts its tokens 1..L-1 from the ones before; the mean NLL is weighted by token,
    summed in float64. Runs under ``torch.inference_mode`` with ``use_cache=False``. With
    ``stream_device`` the decoder runs one layer at a time there (:func:`pruneframe.toolkit.streaming.streamed_forward`,
    for a model larger than the device): every window's hidden states are carried from layer to layer
    on that device, then the output layer scores them batch by batch; the NLLs are those of the
    whole-model pass.

    Raises:
        ValueError: ``windows`` is not a 2-D integer tensor with ``L >= 2``, or ``batch_size < 1``, or
            (streamed) the model's output logits need more than its output layer.
        NonFiniteError: a batch gave a NaN/inf loss (never skipped; the window range is named).
    """
    if windows.dim() != 2 or windows.dtype not in (torch.long, torch.int32) or windows.shape[1] < 2:
        raise ValueError(f"perplexity: windows must be an integer tensor [n, L] with L >= 2, got {tuple(windows.shape)} {windows.dtype}")
    if batch_size < 1:
        raise ValueError(f"perplexity: batch_size must be >= 1, got {batch_size}")
    count, seq_len = windows.shape
    batches = windows.long().split(batch_size)
    sums: list[torch.Tensor] = []
    with tqdm(total=count, desc="perplexity", unit="win", disable=not progress) as bar:
        for start, ids, logits in _batch_logits(model, batches, stream_device, progress):
            sums.append(_window_nll(ids, logits, start, count))
            bar.update(len(ids))
    return PerplexityResult.from_window_nll(tuple(float(v) for v in torch.cat(sums).cpu().tolist()), seq_len)


def _batch_logits(
    model: torch.nn.Module, batches: tuple[torch.Tensor, ...], stream_device: str | torch.device | None, progress: bool
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(first window index, token ids, logits)`` per batch, on the device the logits are computed on."""
    if stream_device is None:
        device = model_device(model)
        start = 0
        for batch in batches:
            ids = batch.to(device=device, non_blocking=True)
            yield start, ids, model(input_ids=ids, use_cache=False).logits
            start += len(batch)
        return
    device = torch.device(stream_device)
    logits = streamed_logits(model, batches, device, progress=progress, desc="perplexity (layers)")
    start = 0
    for batch in batches:
        yield start, batch.to(device), next(logits)
        start += len(batch)


def _window_nll(ids: torch.Tensor, logits: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """Each window's summed next-token NLL (float64); the last position predicts nothing."""
    # Shifting the labels rather than slicing the logits avoids copying the [b, L, V] logits.
    labels = torch.full_like(ids, _IGNORE)
    labels[:, :-1] = ids[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=_IGNORE, reduction="none")
    window_sums = nll.view(ids.shape).sum(dim=1, dtype=torch.float64)
    if not torch.isfinite(window_sums).all():
        raise NonFiniteError(f"perplexity: non-finite loss in windows {start}..{start + len(ids) - 1} (of {count}); the model produced NaN/inf logits")
    return window_sums


ProtocolName = Literal["custom", "wikitext2-2048", "llm-pruner-128"]
WindowCount = Annotated[int, Field(ge=1)] | Literal["all"]

#: The named protocols: the settings each one fixes (``sources`` only when none are given).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "wikitext2-2048": {"sources": [{"data": "wikitext-2", "split": "test"}], "seq_len": 2048, "num_windows": "all"},
    "llm-pruner-128": {"sources": [{"data": "wikitext-2", "split": "test"}], "seq_len": 128, "num_windows": "all"},
}


def _default_sources() -> list[dict[str, Any]]:
    return [{"data": name, "split": "test"} for name in eval_source_catalog()]


class PerplexitySource(BaseModel):
    """One perplexity text: the source, its split, the column label, and optionally its own window count.

    Attributes:
        data: any source :func:`pruneframe.data.resolve_text` takes (``wikitext-2``, ``moby-dick``,
            ``embedded``, ``embedded-code``, ``embedded-papers``, ``c4``, ``ptb``, a local file or folder,
            ``hf:owner/name``).
        split: the split read (``test`` by default).
        label: the column name in reports (default: ``data``, or a path's file stem).
        domain: override the domain tag (default: derived from the source, see ``pruneframe.data.sources``).
        num_windows: windows of this source (default: the evaluator's ``num_windows``).
    """

    model_config = ConfigDict(extra="forbid")

    data: Annotated[str, Field(min_length=1)]
    split: str = "test"
    label: Annotated[str, Field(min_length=1)] | None = None
    domain: Annotated[str, Field(min_length=1)] | None = None
    num_windows: WindowCount | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"data": value} if isinstance(value, str) else value

    def column(self) -> str:
        """The report label: ``label``, else the name of a named source, else a path's stem."""
        if self.label:
            return self.label
        path = user_path(self.data)
        return path.stem if (path.suffix or "/" in self.data) and not self.data.startswith("hf:") else self.data


class PerplexityConfig(StreamingOptions):
    """Perplexity settings: which texts, which protocol, and how each text is cut into windows.

    ``data``/``split`` are accepted as a shorthand for one source (``split`` alone: the default sources
    read with that split). ``num_windows`` counts windows per
    source (``"all"``: every full window). A named ``protocol`` fixes ``seq_len`` and ``num_windows``
    (and the sources when none are given); setting either to another value is an error.
    ``offload="cpu"`` scores one decoder layer at a time on ``compute_device`` (inherited from
    :class:`~pruneframe.toolkit.streaming.StreamingOptions`), for a model larger than the device.
    """

    model_config = ConfigDict(extra="forbid")

    sources: Annotated[list[PerplexitySource], Field(min_length=1)] = Field(
        default_factory=lambda: [PerplexitySource.model_validate(s) for s in _default_sources()],
        description="text sources; default: every one available (see eval_source_catalog)",
    )
    protocol: ProtocolName = "custom"
    seq_len: Annotated[int, Field(ge=2)] = 512
    num_windows: WindowCount = 64
    offset_windows: Annotated[int, Field(ge=0)] = 0
    batch_size: Annotated[int, Field(ge=1)] = 1
    dtype: DtypeName | None = Field(None, description="expected model dtype; the model is never converted, a mismatch is an error")

    @model_validator(mode="before")
    @classmethod
    def _shorthand_and_protocol(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        value = dict(value)
        if "data" in value or "split" in value:
            if "sources" in value:
                raise ValueError("give either sources or data/split (one source), not both")
            split = value.pop("split", "test")
            if "data" in value:
                value["sources"] = [{"data": value.pop("data"), "split": split}]
            else:  # a split alone applies to the default sources
                value["sources"] = [{**source, "split": split} for source in _default_sources()]
        if value.get("num_windows") is None and "num_windows" in value:
            value["num_windows"] = "all"
        preset = PROTOCOLS.get(value.get("protocol", "custom"))
        if preset is not None:
            for key in ("seq_len", "num_windows"):
                if key in value and value[key] != preset[key]:
                    raise ValueError(f"protocol {value['protocol']!r} fixes {key} = {preset[key]!r}, but {key} = {value[key]!r} was given; drop one of them")
                value[key] = preset[key]
            value.setdefault("sources", preset["sources"])
        return value

    @model_validator(mode="after")
    def _unique_labels(self) -> PerplexityConfig:
        own = [s.column() for s in self.sources if s.num_windows is not None]
        if self.protocol != "custom" and own:
            raise ValueError(f"protocol {self.protocol!r} fixes every source's windows; drop num_windows of {own}")
        labels = [s.column() for s in self.sources]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"sources: the labels {repeated} repeat; give each source a distinct 'label'")
        return self


def source_windows(spec: PerplexitySource, cfg: PerplexityConfig, tokenizer: Any) -> tuple[Any, torch.Tensor, int | None]:
    """The text of ``spec``, its token windows under ``cfg`` (a BOS first when the tokenizer adds one), and that BOS id."""
    source = resolve_text(spec.data, spec.split)
    count = spec.num_windows if spec.num_windows is not None else cfg.num_windows
    bos = prepended_bos(tokenizer)
    windows = token_windows(source, tokenizer, cfg.seq_len, None if count == "all" else count, cfg.offset_windows, bos=bos)
    return source, windows, bos


class PerplexityEvaluator(Evaluator):
    """Perplexity on every configured source.

    Result: ``{"sources": {label: {ppl, mean_nll, tokens, windows, window_tokens, window_nll,
    bits_per_byte, bytes, window_bytes, domain, protocol}}, "protocol": PerplexitySetProtocol}``.
    ``bits_per_byte`` is the NLL sum over the predicted tokens / ln 2 / the UTF-8 bytes of text they
    cover (``bytes``; ``window_bytes`` per window, see :mod:`pruneframe.evaluation.covered_bytes`);
    the three are None for a tokenizer without character offsets.
    """

    name: ClassVar[str] = "perplexity"
    Config: ClassVar[type[BaseModel]] = PerplexityConfig

    def check(self, tokenizer: Any) -> None:
        """Cut every source's windows (the tokenization is cached for :meth:`evaluate`): a text too short raises ``ValueError``."""
        cfg: PerplexityConfig = self.config  # type: ignore[assignment]
        for spec in cfg.sources:
            source_windows(spec, cfg, tokenizer)

    def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, Any]:
        """Resolve each text, cut windows, measure perplexity per source and stamp the protocols."""
        cfg: PerplexityConfig = self.config  # type: ignore[assignment]
        dtype = dtype_name(model)
        if cfg.dtype is not None and cfg.dtype != dtype:
            raise ValueError(f"perplexity: config dtype {cfg.dtype!r} but the model is {dtype!r}; load it as {cfg.dtype!r}")
        if tokenizer is None:
            raise ValueError("perplexity: a tokenizer is required (the model was loaded without one)")
        results: dict[str, Any] = {}
        for spec in cfg.sources:
            results[spec.column()] = self._one(model, tokenizer, spec, cfg, dtype, context.progress)
        protocol = PerplexitySetProtocol(
            protocol_name=cfg.protocol,
            sources={label: PerplexityProtocol.model_validate(r["protocol"]) for label, r in results.items()},
        )
        return {"sources": results, "protocol": protocol.model_dump(mode="json")}

    @staticmethod
    def _one(model: Any, tokenizer: Any, spec: PerplexitySource, cfg: PerplexityConfig, dtype: str, progress: bool) -> dict[str, Any]:
        source, windows, bos = source_windows(spec, cfg, tokenizer)
        stream = cfg.device_for(model) if cfg.streaming else None
        result = perplexity(model, windows, batch_size=cfg.batch_size, progress=progress, stream_device=stream)
        covered = window_bytes(source.text, tokenizer, windows, cfg.offset_windows, bos, source.fingerprint)
        domain = spec.domain or source.domain
        protocol = PerplexityProtocol(
            protocol_name=cfg.protocol,
            data=DataStamp(**{**source.describe(), "domain": domain}),
            tokenizer=Path(str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)).name,
            tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
            add_special_tokens=bos is not None,
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
            "window_tokens": cfg.seq_len - 1,
            "window_nll": list(result.window_nll),
            "bits_per_byte": None if covered is None else bits_per_byte(result.window_nll, sum(covered)),
            "bytes": None if covered is None else sum(covered),
            "window_bytes": covered,
            "domain": domain,
            "protocol": protocol.model_dump(mode="json"),
        }
