"""Latency summaries: percentiles from log buckets, exact at the extremes."""

from __future__ import annotations

import pytest

from tidings.statistics import RATE_WINDOW_S, Histogram, TransitionNumbers


def test_a_single_samples_percentiles_equal_that_sample() -> None:
    h = Histogram()
    h.observe(123.4)
    s = h.summary()
    assert s.count == 1 and s.mean_ms == s.p50_ms == s.p95_ms == s.p99_ms == 123.4


def test_percentiles_stay_within_the_samples_and_near_the_truth() -> None:
    h = Histogram()
    for ms in range(1, 1001):
        h.observe(float(ms))
    s = h.summary()
    assert 500 <= (s.p50_ms or 0) <= 500 * 1.1
    assert 990 <= (s.p99_ms or 0) <= 1000  # never above the largest sample


def test_a_transitions_rate_counts_the_last_whole_seconds() -> None:
    numbers = TransitionNumbers()
    for at in (100.2, 100.7, 100.9, 101.5, 101.6):
        numbers.committed(at, handler_ms=2.0)
    assert numbers.rate(100.95) == 0.0  # the second under way is not whole yet
    assert numbers.rate(101.9) == pytest.approx(3 / RATE_WINDOW_S)
    assert numbers.rate(102.0) == pytest.approx(5 / RATE_WINDOW_S)
    assert numbers.rate(100 + RATE_WINDOW_S + 1.5) == pytest.approx(2 / RATE_WINDOW_S)
    assert numbers.rate(100 + RATE_WINDOW_S + 2.0) == 0.0
    assert numbers.as_dict(102.0)["count"] == 5
