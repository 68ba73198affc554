"""Numbers you can see: counters, latency histograms and rates, per queue and broker-wide.

Hot paths only increment integers and drop one sample into a log-scale bucket. Percentiles are
read from the buckets (relative error under 5%); rates come from counter samples taken by the
broker once a second, so nothing per message touches a clock or a lock.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

#: Bucket growth factor: each bucket covers 10% more than the previous one.
_GROWTH = 1.1
_LOG_GROWTH = math.log(_GROWTH)
#: Values below 10 µs share the first bucket.
_FLOOR_MS = 0.01

COUNTERS = ("published", "delivered", "acked", "redelivered", "dead_lettered", "expired")
#: Seconds of counter samples kept for rates.
RATE_WINDOW_S = 5


class Histogram:
    """Log-bucketed histogram of milliseconds."""

    __slots__ = ("buckets", "count", "max_ms", "min_ms", "total_ms")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total_ms = 0.0
        self.min_ms = math.inf
        self.max_ms = 0.0

    def observe(self, ms: float) -> None:
        index = 0 if ms <= _FLOOR_MS else 1 + int(math.log(ms / _FLOOR_MS) / _LOG_GROWTH)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.total_ms += ms
        if ms < self.min_ms:
            self.min_ms = ms
        if ms > self.max_ms:
            self.max_ms = ms

    def percentile(self, q: float) -> float | None:
        """Upper edge of the bucket holding the q-th quantile (0 < q <= 1), kept within the
        smallest and largest samples (so one sample's percentiles are that sample), or None
        if empty."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(max(_FLOOR_MS * _GROWTH**index, self.min_ms), self.max_ms)
        return None

    def summary(self) -> LatencySummary:
        return LatencySummary(
            count=self.count,
            mean_ms=self.total_ms / self.count if self.count else None,
            p50_ms=self.percentile(0.5),
            p95_ms=self.percentile(0.95),
            p99_ms=self.percentile(0.99),
        )


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


#: Broker-wide operation counts: what RabbitMQ's channel and queue counters count
#: (``rabbitmq_channel_messages_unroutable_dropped_total`` and the rest, see
#: ``http/prometheus_rabbitmq.py``).
OPERATIONS = ("unroutable_dropped", "unroutable_returned", "consumed_auto_ack",
              "consumed_manual_ack", "got_auto_ack", "got_manual_ack", "get_empty", "acked",
              "queues_declared", "queues_created", "queues_deleted")


class Tally:
    """Monotonic counts of :data:`OPERATIONS` (plain integers: kept on the hot path)."""

    __slots__ = OPERATIONS

    def __init__(self) -> None:
        for name in OPERATIONS:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in OPERATIONS}


class TransitionNumbers:
    """One state machine transition's numbers: committed, failed, handler and commit time
    (ms), and a per-second count of the last minute for its rate."""

    __slots__ = ("_seconds", "commit", "count", "failures", "handler")

    def __init__(self) -> None:
        self.count = self.failures = 0
        self.handler, self.commit = Histogram(), Histogram()
        self._seconds: deque[list[int]] = deque(maxlen=60)

    def committed(self, now: float, handler_ms: float | None = None) -> None:
        self.count += 1
        if handler_ms is not None:
            self.handler.observe(handler_ms)
        second = int(now)
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1][1] += 1
        else:
            self._seconds.append([second, 1])

    def rate(self, now: float) -> float:
        """Per second over the last :data:`RATE_WINDOW_S` whole seconds."""
        end = int(now)
        return sum(n for s, n in self._seconds if end - RATE_WINDOW_S <= s < end) / RATE_WINDOW_S

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"count": self.count, "failures": self.failures,
                "rate": round(self.rate(now), 3),
                "handler_ms": dataclasses.asdict(self.handler.summary()),
                "commit_ms": dataclasses.asdict(self.commit.summary())}


class Counters:
    """Monotonic event counts with a short history of samples for rates."""

    __slots__ = ("acked", "dead_lettered", "delivered", "expired", "published", "redelivered",
                 "samples")

    def __init__(self) -> None:
        self.published = self.delivered = self.acked = 0
        self.redelivered = self.dead_lettered = self.expired = 0
        self.samples: deque[tuple[float, tuple[int, ...]]] = deque(maxlen=RATE_WINDOW_S + 1)

    def values(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in COUNTERS)

    def sample(self, now: float) -> None:
        self.samples.append((now, self.values()))

    def rates(self) -> dict[str, float]:
        if len(self.samples) < 2:
            return {name: 0.0 for name in COUNTERS}
        (t0, v0), (t1, v1) = self.samples[0], self.samples[-1]
        span = max(t1 - t0, 1e-9)
        return {name: (b - a) / span for name, a, b in zip(COUNTERS, v0, v1, strict=True)}


@dataclass(frozen=True, slots=True)
class QueueStatistics:
    vhost: str
    name: str
    ready: int
    unacked: int
    delayed: int
    consumers: int
    ready_bytes: int
    #: Age in seconds of the oldest ready message (backlog age), or None when empty.
    oldest_ready_age_s: float | None
    counts: dict[str, int]
    #: Per-second rates over the last few seconds.
    rates: dict[str, float]
    waiting_time: LatencySummary
    processing_time: LatencySummary


@dataclass(frozen=True, slots=True)
class ReaderStatistics:
    """Where one reader of a stream stands: a named reader's committed offset, or a live
    consumer's position (``live``; named by its consumer tag)."""

    name: str
    #: The next offset it reads.
    offset: int
    live: bool
    #: Records between it and the tail.
    lag: int
    #: Seconds since its next unread record was appended (0 when it has read everything).
    lag_s: float


@dataclass(frozen=True, slots=True)
class StreamStatistics:
    vhost: str
    name: str
    #: Records kept (retention removes whole segments of the oldest).
    records: int
    bytes: int
    segments: int
    #: Offsets of the first and last record kept (None when it keeps none).
    first_offset: int | None
    last_offset: int | None
    #: Seconds since the epoch when the first and last kept records were appended.
    first_timestamp: float | None
    last_timestamp: float | None
    #: The retention in force: ``x-max-length-bytes``, ``x-max-age`` (seconds), segment size.
    max_bytes: int | None
    max_age_s: float | None
    segment_bytes: int
    readers: tuple[ReaderStatistics, ...]


@dataclass(frozen=True, slots=True)
class BrokerStatistics:
    queues: tuple[QueueStatistics, ...]
    exchanges: int
    sessions: int
    consumers: int
    ready: int
    unacked: int
    delayed: int
    counts: dict[str, int]
    rates: dict[str, float]
    #: Stored records that could not be read and were moved aside (``tidings quarantine``).
    quarantined: int = 0
    #: Stream queues' own numbers (they are among ``queues`` too).
    streams: tuple[StreamStatistics, ...] = ()
    #: Broker-wide :data:`OPERATIONS` counts (empty where the broker is another engine).
    operations: dict[str, int] = field(default_factory=dict)

    def queue(self, name: str, vhost: str = "/") -> QueueStatistics:
        for q in self.queues:
            if q.name == name and q.vhost == vhost:
                return q
        raise KeyError(name)

    def stream(self, name: str, vhost: str = "/") -> StreamStatistics:
        for s in self.streams:
            if s.name == name and s.vhost == vhost:
                return s
        raise KeyError(name)
