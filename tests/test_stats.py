"""Uncertainty helpers (pruneframe.evaluation.stats) against hand computations and known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pruneframe.evaluation.stats import (
    bootstrap_indices,
    excludes_zero,
    kendall_tau,
    log_ppl_draws,
    proportion_interval,
    ratio_interval,
)


def test_ratio_point_is_the_perplexity_ratio_by_hand() -> None:
    method, dense, tokens = [30.0, 42.0, 25.0], [20.0, 40.0, 24.0], [10, 10, 10]
    expected = math.exp((30 + 42 + 25) / 30) / math.exp((20 + 40 + 24) / 30)
    assert ratio_interval(method, dense, tokens).value == pytest.approx(expected, rel=1e-12)


def test_a_constant_shift_per_window_has_a_zero_width_interval() -> None:
    rng = np.random.default_rng(3)
    dense = rng.uniform(20, 60, size=40)
    result = ratio_interval(list(dense + 5.0), list(dense), [10] * 40)
    assert result.value == pytest.approx(math.exp(0.5), rel=1e-12)
    assert result.low == pytest.approx(result.value, rel=1e-9) and result.high == pytest.approx(result.value, rel=1e-9)


def test_two_windows_span_their_own_ratios() -> None:
    # resamples of 2 windows: both first (p 1/4), one each (1/2), both second (1/4); the 2.5% and 97.5%
    # percentiles of 2,000 draws are the two extremes: the ratios on window 0 alone and window 1 alone
    result = ratio_interval([12.0, 30.0], [10.0, 10.0], [4, 4])
    assert result.low == pytest.approx(math.exp(2 / 4), rel=1e-12)
    assert result.high == pytest.approx(math.exp(20 / 4), rel=1e-12)


def test_interval_matches_the_normal_approximation_for_many_windows() -> None:
    rng = np.random.default_rng(0)
    dense = rng.uniform(100, 200, size=400)
    diff = rng.normal(3.0, 4.0, size=400)
    result = ratio_interval(list(dense + diff), list(dense), [50] * 400)
    se = diff.std(ddof=1) / math.sqrt(400) / 50
    centre = diff.mean() / 50
    assert math.log(result.low) == pytest.approx(centre - 1.96 * se, abs=0.25 * se)
    assert math.log(result.high) == pytest.approx(centre + 1.96 * se, abs=0.25 * se)


def test_bootstrap_is_reproducible_and_paired() -> None:
    first, second = bootstrap_indices(7, 50, seed=4), bootstrap_indices(7, 50, seed=4)
    assert np.array_equal(first, second) and first.shape == (50, 7) and first.max() < 7
    draws = log_ppl_draws([1.0, 2.0, 3.0], [1, 1, 2], np.array([[0, 0, 0], [2, 1, 2]]))
    assert draws.tolist() == pytest.approx([1.0, 8.0 / 5.0])
    with pytest.raises(ValueError, match="windows"):
        ratio_interval([1.0], [1.0, 2.0], [1])


def test_proportion_interval_by_hand() -> None:
    outcome = proportion_interval([1, 0, 1, 1])
    p, n = 0.75, 4
    assert outcome["acc"] == p and outcome["se"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    z = 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert outcome["low"] == pytest.approx(centre - half, rel=1e-9) and outcome["high"] == pytest.approx(centre + half, rel=1e-9)
    with pytest.raises(ValueError, match="0/1"):
        proportion_interval([1, 2])


def test_excludes_zero_and_kendall_tau() -> None:
    assert excludes_zero(np.linspace(0.1, 1.0, 100)) and not excludes_zero(np.linspace(-1.0, 1.0, 100))
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    # one discordant pair of six: (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    assert kendall_tau([1.0], [2.0]) is None
