"""Speed: prefill and batch-1 greedy decode throughput, peak memory, and the FLOPs-based ideal speedup.

Each timing is the fastest of a few repeats after a warmup run (``statistic: min``, the default: on a
shared machine interference only ever slows a repeat down, so the minimum is the estimate a rerun
reproduces best, as Python's ``timeit`` advises) or their median. With a dense model in the context the
two models are measured alternately in the same run, so the quoted speedup is a same-run ratio; each
alternating pair also gives one speedup, and their spread (``speedup_spread``: min, quartiles, max) shows
how noisy the machine was.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from pruneframe.toolkit.memory import PeakMemory
from pruneframe.util.devices import dtype_name, hardware_info, model_device
from pruneframe.evaluation.base import EvalContext, Evaluator
from pruneframe.evaluation.protocol import SpeedProtocol
from pruneframe.evaluation.size import LayerWidths, layer_widths

__all__ = [
    "SpeedResult",
    "flops_per_token",
    "model_flops_per_token",
    "ideal_speedup",
    "time_generation",
    "measure_speed",
    "SpeedConfig",
    "SpeedEvaluator",
]


def flops_per_token(widths: Sequence[LayerWidths], context_len: int, vocab_size: int = 0) -> float:
    """Forward FLOPs for one token attending to ``context_len`` positions.

    Per layer: ``2 x`` the q/k/v/o and gate/up/down weight count (one multiply-add per weight) plus the
    attention cost ``4 x q_heads x head_dim x context_len`` (scores and the weighted sum of values);
    plus ``2 x hidden x vocab_size`` for the output head. Norms, activations and biases are ignored.
    """
    if context_len < 0:
        raise ValueError(f"flops_per_token: context_len must be >= 0, got {context_len}")
    total = 0.0
    for w in widths:
        q_dim, kv_dim = w.q_heads * w.head_dim, w.kv_heads * w.head_dim
        linear = w.hidden * q_dim + 2 * w.hidden * kv_dim + q_dim * w.hidden + 3 * w.hidden * w.ffn
        total += 2.0 * linear + 4.0 * q_dim * context_len
    if widths and vocab_size:
        total += 2.0 * widths[0].hidden * vocab_size
    return total


def model_flops_per_token(model: torch.nn.Module, context_len: int = 256) -> float:
    """:func:`flops_per_token` for ``model``'s current widths and output vocabulary."""
    config = getattr(model, "config", None)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    return flops_per_token(layer_widths(model), context_len, vocab)


def ideal_speedup(dense_flops: float, pruned_flops: float) -> float:
    """The speedup if time were proportional to FLOPs: ``dense_flops / pruned_flops``."""
    if dense_flops <= 0 or pruned_flops <= 0:
        raise ValueError(f"ideal_speedup: FLOPs must be positive, got dense={dense_flops}, pruned={pruned_flops}")
    return dense_flops / pruned_flops


@dataclass(frozen=True)
class SpeedResult:
    """Throughput of one model (medians over the repeats).

    Attributes:
        prefill_tokens_per_s: prompt tokens processed per second in one forward.
        decode_tokens_per_s: new tokens per second, greedy, batch 1, with the KV cache.
        prefill_s: median prefill time.
        decode_s: median time for all decode steps.
        peak_rss_bytes: peak resident memory during the measurement.
        delta_rss_bytes: peak minus the resident memory at the start.
        cuda_peak_allocated_bytes: peak CUDA allocation (None off CUDA).
    """

    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    prefill_s: float
    decode_s: float
    peak_rss_bytes: int
    delta_rss_bytes: int
    cuda_peak_allocated_bytes: int | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward(model: torch.nn.Module, **kwargs: Any) -> Any:
    """Call the model, asking for last-position logits only when it supports ``logits_to_keep``."""
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    return model(**kwargs)


def _cache_kwarg(model: torch.nn.Module) -> str:
    """The forward argument that takes the KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


@torch.inference_mode()
def time_generation(model: torch.nn.Module, prompt: torch.Tensor, decode_tokens: int) -> tuple[float, float]:
    """One run: time the prefill forward of ``prompt``, then ``decode_tokens`` greedy cached steps.

    Returns ``(prefill_seconds, decode_seconds)``.
    """
    device = model_device(model)
    prompt = prompt.to(device)
    _sync(device)
    start = time.perf_counter()
    out = _forward(model, input_ids=prompt, use_cache=True)
    _sync(device)
    prefill = time.perf_counter() - start
    cache_arg = _cache_kwarg(model)
    past = _cache_of(out)
    token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    start = time.perf_counter()
    for _ in range(decode_tokens):
        out = _forward(model, input_ids=token, use_cache=True, **{cache_arg: past})
        past = _cache_of(out)
        token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    return prefill, time.perf_counter() - start


def _prompt(model: torch.nn.Module, prefill_len: int, seed: int) -> torch.Tensor:
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 2)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, prefill_len), generator=generator)


Statistic = Literal["min", "median"]
_REDUCE = {"min": min, "median": statistics.median}


def _reduced(
    prefill_times: list[float],
    decode_times: list[float],
    prefill_len: int,
    decode_tokens: int,
    statistic: Statistic,
    peak_rss_bytes: int,
    delta_rss_bytes: int,
    cuda_peak_allocated_bytes: int | None,
) -> SpeedResult:
    """Prefill and decode times reduced by ``statistic``, their throughputs, and the given peak memory."""
    prefill = _REDUCE[statistic](prefill_times)
    decode = _REDUCE[statistic](decode_times)
    return SpeedResult(
        prefill_tokens_per_s=prefill_len / prefill,
        decode_tokens_per_s=decode_tokens / decode,
        prefill_s=prefill,
        decode_s=decode,
        peak_rss_bytes=peak_rss_bytes,
        delta_rss_bytes=delta_rss_bytes,
        cuda_peak_allocated_bytes=cuda_peak_allocated_bytes,
    )


def measure_speed(
    model: torch.nn.Module,
    *,
    prefill_len: int = 256,
    decode_tokens: int = 32,
    warmup: int = 1,
    repeats: int = 3,
    seed: int = 0,
    statistic: Statistic = "min",
) -> SpeedResult:
    """Prefill and decode throughput of ``model`` on a random prompt of ``prefill_len`` tokens (batch 1).

    Runs ``warmup`` untimed runs, then ``repeats`` timed ones; reports the fastest (``statistic="min"``)
    or the median times, and peak memory.
    """
    if prefill_len < 1 or decode_tokens < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            f"measure_speed: need prefill_len, decode_tokens, repeats >= 1 and warmup >= 0; got {prefill_len}, {decode_tokens}, {repeats}, {warmup}"
        )
    prompt = _prompt(model, prefill_len, seed)
    for _ in range(warmup):
        time_generation(model, prompt, decode_tokens)
    with PeakMemory(device=str(model_device(model))) as mem:
        times = [time_generation(model, prompt, decode_tokens) for _ in range(repeats)]
    report = mem.report
    return _reduced(
        [t[0] for t in times], [t[1] for t in times], prefill_len, decode_tokens, statistic, report.peak_rss, report.delta_rss, report.cuda_peak_allocated
    )


class SpeedConfig(BaseModel):
    """Speed settings: prompt length, new tokens, warmup runs, timed repeats and how repeats are reduced."""

    model_config = ConfigDict(extra="forbid")

    prefill_len: Annotated[int, Field(ge=1)] = 256
    decode_tokens: Annotated[int, Field(ge=1)] = 32
    warmup: Annotated[int, Field(ge=0)] = 1
    repeats: Annotated[int, Field(ge=1)] = 3
    statistic: Statistic = Field("min", description="min: each model's fastest repeat (what a rerun reproduces best on a shared machine); median")


class SpeedEvaluator(Evaluator):
    """Throughput and memory; with ``context.dense_model`` also the measured and ideal speedups."""

    name: ClassVar[str] = "speed"
    Config: ClassVar[type[BaseModel]] = SpeedConfig
    #: measures the dense model next to the pruned one (alternating repeats), so it needs both loaded
    pairs_with_dense: ClassVar[bool] = True
    shape_only: ClassVar[bool] = True

    def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, Any]:
        """Measure ``model`` (and the dense model, alternating repeats, when one is given)."""
        cfg: SpeedConfig = self.config  # type: ignore[assignment]
        kwargs = dict(prefill_len=cfg.prefill_len, decode_tokens=cfg.decode_tokens, warmup=cfg.warmup, seed=context.seed)
        dense = context.dense_model
        if dense is None:
            result: dict[str, Any] = {"model": asdict(measure_speed(model, repeats=cfg.repeats, statistic=cfg.statistic, **kwargs))}
        else:
            runs: dict[str, list[SpeedResult]] = {"model": [], "dense": []}
            for _ in range(cfg.repeats):  # alternate single-repeat measurements, reduced below
                runs["dense"].append(measure_speed(dense, repeats=1, **kwargs))
                runs["model"].append(measure_speed(model, repeats=1, **kwargs))
                kwargs["warmup"] = 0
            result = {name: asdict(_reduce(values, cfg.prefill_len, cfg.decode_tokens, cfg.statistic)) for name, values in runs.items()}
            context_len = cfg.prefill_len
            result["measured_speedup"] = {
                "prefill": result["model"]["prefill_tokens_per_s"] / result["dense"]["prefill_tokens_per_s"],
                "decode": result["model"]["decode_tokens_per_s"] / result["dense"]["decode_tokens_per_s"],
            }
            pairs = list(zip(runs["dense"], runs["model"]))
            result["repeat_speedups"] = {
                "prefill": [d.prefill_s / m.prefill_s for d, m in pairs],
                "decode": [d.decode_s / m.decode_s for d, m in pairs],
            }
            result["speedup_spread"] = {k: _spread(v) for k, v in result["repeat_speedups"].items()}
            result["ideal_speedup"] = ideal_speedup(model_flops_per_token(dense, context_len), model_flops_per_token(model, context_len))
        result["flops_per_token"] = model_flops_per_token(model, cfg.prefill_len)
        protocol = SpeedProtocol(
            device=str(model_device(model)),
            dtype=dtype_name(model),
            threads=torch.get_num_threads(),
            prefill_len=cfg.prefill_len,
            decode_tokens=cfg.decode_tokens,
            warmup=cfg.warmup,
            repeats=cfg.repeats,
            statistic=cfg.statistic,
        )
        result["protocol"] = protocol.model_dump(mode="json")
        result["hardware"] = hardware_info(model_device(model))
        return result


def _spread(values: list[float]) -> dict[str, float]:
    """``min``, ``q25``, ``median``, ``q75``, ``max`` and the relative half-width of the quartiles."""
    ordered = sorted(values)
    if len(ordered) == 1:
        q25 = q75 = ordered[0]
    else:
        q25, _, q75 = statistics.quantiles(ordered, n=4, method="inclusive")
    median = statistics.median(ordered)
    return {"min": ordered[0], "q25": q25, "median": median, "q75": q75, "max": ordered[-1], "iqr_rel": (q75 - q25) / (2 * median) if median else 0.0}


def _reduce(results: list[SpeedResult], prefill_len: int, decode_tokens: int, statistic: Statistic) -> SpeedResult:
    """Single-repeat results reduced to one (fastest or median times; peak memory: the maximum)."""
    cuda = [r.cuda_peak_allocated_bytes for r in results if r.cuda_peak_allocated_bytes is not None]
    return _reduced(
        [r.prefill_s for r in results],
        [r.decode_s for r in results],
        prefill_len,
        decode_tokens,
        statistic,
        max(r.peak_rss_bytes for r in results),
        max(r.delta_rss_bytes for r in results),
        max(cuda, default=None),
    )
