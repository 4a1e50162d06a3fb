"""Uncertainty of reported numbers: paired bootstrap over windows or items, binomial intervals, rank agreement.

Everything here is a pure function of recorded per-window NLL sums and per-item correctness, so anyone
can recompute a report's intervals from ``results.json``.

The bootstrap is *paired*: one matrix of resampled indices is drawn per source (or task) and applied to
every model scored on it, the dense model included. A perplexity ratio to dense, a difference between
two methods, or a mean over seeds are all computed on the same resampled windows, so the window-to-window
difficulty that every model shares cancels, and only how the models differ on each window is left.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BOOTSTRAP_SEED",
    "BOOTSTRAP_RESAMPLES",
    "LEVEL",
    "Interval",
    "exp_or_inf",
    "bootstrap_indices",
    "log_ppl_draws",
    "percentile_interval",
    "ratio_interval",
    "proportion_interval",
    "excludes_zero",
    "kendall_tau",
]

#: The fixed seed of every bootstrap in reports (so a rerun gives the same intervals).
BOOTSTRAP_SEED = 0
#: Resamples per bootstrap.
BOOTSTRAP_RESAMPLES = 2000
#: Coverage of every reported interval.
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval ``[low, high]`` at ``level``."""

    value: float
    low: float
    high: float
    level: float = LEVEL

    def as_dict(self) -> dict[str, float]:
        """``{"value", "low", "high", "level"}`` for JSON."""
        return {"value": self.value, "low": self.low, "high": self.high, "level": self.level}


#: The largest ``x`` whose ``exp(x)`` is a finite float.
_LOG_FLOAT_MAX = math.log(sys.float_info.max)


def exp_or_inf(value: float) -> float:
    """``exp(value)``, or ``inf`` where it exceeds the largest float (a perplexity or ratio of a broken model)."""
    return math.exp(value) if value < _LOG_FLOAT_MAX else math.inf


def bootstrap_indices(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``[resamples, n]`` indices drawn uniformly with replacement from ``range(n)`` (``numpy`` PCG64, ``seed``)."""
    if n < 1 or resamples < 1:
        raise ValueError(f"bootstrap_indices: need n >= 1 and resamples >= 1, got n={n}, resamples={resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def log_ppl_draws(window_nll: Sequence[float], window_tokens: Sequence[int], indices: np.ndarray) -> np.ndarray:
    """Log perplexity on each resample: ``sum(nll[idx]) / sum(tokens[idx])`` per row of ``indices``."""
    nll = np.asarray(window_nll, dtype=np.float64)
    tokens = np.asarray(window_tokens, dtype=np.float64)
    if nll.shape != tokens.shape or nll.ndim != 1:
        raise ValueError(f"log_ppl_draws: window_nll {nll.shape} and window_tokens {tokens.shape} must be equal 1-D shapes")
    return nll[indices].sum(axis=1) / tokens[indices].sum(axis=1)


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of ``draws``."""
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(np.asarray(draws, dtype=np.float64), [tail, 100.0 - tail])
    return float(low), float(high)


def ratio_interval(
    method_nll: Sequence[float],
    dense_nll: Sequence[float],
    window_tokens: Sequence[int],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
) -> Interval:
    """The perplexity ratio method / dense with a paired-bootstrap percentile interval over windows.

    ``method_nll[i]`` and ``dense_nll[i]`` are the NLL sums of the *same* window ``i`` (``window_tokens[i]``
    predicted tokens). The ratio is ``exp((sum(method) - sum(dense)) / sum(tokens))``; each resample draws
    windows with replacement and recomputes it on the drawn windows for both models.
    """
    if len(method_nll) != len(dense_nll):
        raise ValueError(f"ratio_interval: {len(method_nll)} method windows but {len(dense_nll)} dense windows")
    indices = bootstrap_indices(len(method_nll), resamples, seed)
    log_ratio = log_ppl_draws(method_nll, window_tokens, indices) - log_ppl_draws(dense_nll, window_tokens, indices)
    point = (math.fsum(method_nll) - math.fsum(dense_nll)) / float(sum(window_tokens))
    low, high = percentile_interval(log_ratio, level)
    return Interval(exp_or_inf(point), exp_or_inf(low), exp_or_inf(high), level)


def proportion_interval(correct: Sequence[bool | int | float], level: float = LEVEL) -> dict[str, float]:
    """Accuracy of per-item 0/1 outcomes: ``acc``, its standard error and the Wilson score interval.

    ``se`` is ``sqrt(p (1 - p) / (n - 1))`` (the sample standard deviation over ``sqrt(n)``, as lm-eval
    reports it); the interval is Wilson's, which stays inside [0, 1] for small ``n`` and extreme ``p``.
    """
    n = len(correct)
    if n < 1:
        raise ValueError("proportion_interval: no items")
    values = [float(c) for c in correct]
    if any(v not in (0.0, 1.0) for v in values):
        raise ValueError("proportion_interval: outcomes must be 0/1")
    k = int(sum(values))
    p = k / n
    se = math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else 0.0
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return {"acc": p, "se": se, "low": float(ci.low), "high": float(ci.high), "n": n, "level": level}


def excludes_zero(draws: np.ndarray, level: float = LEVEL) -> bool:
    """Whether the central ``level`` interval of ``draws`` (e.g. of a paired difference) lies off zero."""
    low, high = percentile_interval(draws, level)
    return low > 0.0 or high < 0.0


def kendall_tau(first: Sequence[float], second: Sequence[float]) -> float | None:
    """Kendall's tau-b between two rankings of the same items (None for fewer than two items or a constant one)."""
    if len(first) != len(second):
        raise ValueError(f"kendall_tau: {len(first)} and {len(second)} values")
    if len(first) < 2:
        return None
    from scipy.stats import kendalltau

    tau = kendalltau(first, second).statistic
    return None if tau is None or math.isnan(tau) else float(tau)
