"""Latency summaries: percentiles from log buckets, exact at the extremes."""

from __future__ import annotations

from tidings.statistics import Histogram


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
