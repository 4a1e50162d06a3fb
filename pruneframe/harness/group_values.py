"""Per-group values that the report's table and its figures both show, each computed by one function.

A :class:`~pruneframe.harness.summary.Group` holds a method's runs at a budget (one per seed). Its
perplexity and accuracy numbers are :class:`~pruneframe.harness.summary.Measure` objects; the values
here are the rest: kept parameters and measured speedups. The table's cells and the figures' points
call these functions, so a figure cannot show another number than the table beside it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Literal

from pruneframe.evaluation.stats import LEVEL
from pruneframe.harness.summary import Group, nested_get

__all__ = [
    "Speedup",
    "bytes_per_token",
    "engine_speedup",
    "kept_params",
    "kept_fraction",
    "per_byte",
    "speedup",
    "llamacpp_speedup",
    "llamacpp_prefill_len",
    "wilson_interval",
]


def _mean(values: list[Any]) -> float | None:
    known = [float(v) for v in values if v is not None]
    return statistics.fmean(known) if known else None


def kept_params(group: Group) -> float | None:
    """Mean kept parameter count over the group's runs (equal for every seed of a budget in practice)."""
    return _mean([nested_get(r, "prune", "kept_params") for r in group.records])


def kept_fraction(group: Group) -> float | None:
    """Mean kept fraction of the model's total parameters over the group's runs."""
    return _mean([nested_get(r, "prune", "kept_fraction_of_total") for r in group.records])


@dataclass(frozen=True)
class Speedup:
    """A group's measured speedup (dense time / pruned time) over its seeds.

    Attributes:
        value: the mean over seeds of each run's speedup.
        low, high: its spread: ``value * (1 -/+ width)`` with ``width`` the largest relative half
            interquartile range of a run's per-repeat speedups; without per-repeat speedups (llama.cpp,
            fastest repeat only), the min and max over seeds.
        width: that relative half-width, ``None`` when the records carry none.
        ideal: the mean over seeds of the ideal speedup (FLOPs, or bytes of weights for llama.cpp decode).
        seeds: how many runs carry the speedup.
    """

    value: float
    low: float
    high: float
    width: float | None
    ideal: float | None
    seeds: int


def speedup(group: Group, phase: Literal["prefill", "decode"]) -> Speedup | None:
    """The ``speed`` evaluator's measured speedup of ``phase`` for ``group``, or ``None`` when not measured."""
    values = [v for v in (nested_get(r, "eval", "speed", "measured_speedup", phase) for r in group.records) if v is not None]
    if not values:
        return None
    value = statistics.fmean(values)
    widths = [w for w in (nested_get(r, "eval", "speed", "speedup_spread", phase, "iqr_rel") for r in group.records) if w is not None]
    width = max(widths) if widths else None
    low, high = (value * (1 - width), value * (1 + width)) if width is not None else (min(values), max(values))
    ideal = _mean([nested_get(r, "eval", "speed", "ideal_speedup") for r in group.records])
    return Speedup(value, low, high, width, ideal, len(values))


def bytes_per_token(record: dict[str, Any]) -> float | None:
    """UTF-8 bytes of text per predicted token over every perplexity source of ``record`` (None without byte counts)."""
    sources = (nested_get(record, "eval", "perplexity", "sources") or {}).values()
    known = [(s["bytes"], s["tokens"]) for s in sources if s.get("bytes") and s.get("tokens")]
    return sum(b for b, _ in known) / sum(t for _, t in known) if known else None


def per_byte(value: Speedup | None, group: Group, dense: dict[str, Any]) -> Speedup | None:
    """``value``, a speedup in tokens per second, as a speedup in bytes of text per second.

    A trimmed vocabulary spends more tokens on the same text, so each of its tokens carries fewer bytes:
    the speedup per byte is the speedup per token times the runs' mean bytes per token over the dense
    model's (both counted on the perplexity sources). None when either count is missing.
    """
    dense_bpt = bytes_per_token(dense)
    factor = _mean([bytes_per_token(r) for r in group.records])
    if value is None or not dense_bpt or factor is None:
        return None
    scale = factor / dense_bpt
    return Speedup(value.value * scale, value.low * scale, value.high * scale, value.width, value.ideal, value.seeds)


def llamacpp_prefill_len(group: Group) -> int | None:
    """The shortest prompt length llama.cpp timed for the group (its prefill ideal is taken there)."""
    lengths = [n for r in group.records for n in (nested_get(r, "eval", "llamacpp-speed", "protocol", "prefill_lens") or [])]
    return min(lengths) if lengths else None


def llamacpp_speedup(group: Group, phase: Literal["prefill", "decode"]) -> Speedup | None:
    """The ``llamacpp-speed`` evaluator's speedup of ``phase`` (prefill at the shortest prompt), or ``None``."""
    key = phase if phase == "decode" else f"prefill_{llamacpp_prefill_len(group)}"
    values = [v for v in (nested_get(r, "eval", "llamacpp-speed", "measured_speedup", key) for r in group.records) if v is not None]
    if not values:
        return None
    ideal = _mean([nested_get(r, "eval", "llamacpp-speed", "ideal_speedup", phase) for r in group.records])
    return Speedup(statistics.fmean(values), min(values), max(values), None, ideal, len(values))


def engine_speedup(group: Group, phase: Literal["prefill", "decode"], engine: Literal["torch", "llamacpp"]) -> Speedup | None:
    """The group's measured ``phase`` speedup in ``engine``: transformers (the ``speed`` evaluator) or llama.cpp."""
    return speedup(group, phase) if engine == "torch" else llamacpp_speedup(group, phase)


def wilson_interval(accuracy: float, items: int) -> tuple[float, float]:
    """The Wilson score interval (level :data:`~pruneframe.evaluation.stats.LEVEL`) of an accuracy over ``items`` items.

    With one seed it equals the interval the zero-shot evaluator records (``acc_ci``); with several it is
    taken at the seeds' mean accuracy, over the same items (the seeds answer the same questions).
    """
    if items <= 0:
        raise ValueError(f"wilson_interval: items must be positive, got {items}")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + LEVEL / 2))
    z2 = z * z
    centre = (accuracy + z2 / (2 * items)) / (1 + z2 / items)
    half = z / (1 + z2 / items) * math.sqrt(max(accuracy * (1 - accuracy), 0.0) / items + z2 / (4 * items * items))
    return max(0.0, centre - half), min(1.0, centre + half)
