"""The numbers of queues and of the broker, read from live state into the records of
:mod:`tidings.statistics` (what every face shows: Python API, CLI, HTTP, Prometheus)."""

from __future__ import annotations

from collections.abc import Iterable

from tidings.routing.queue import Queue
from tidings.statistics import (
    COUNTERS,
    BrokerStatistics,
    Counters,
    QueueStatistics,
    StreamStatistics,
)


def queue_statistics(queue: Queue, delayed: int, now: float) -> QueueStatistics:
    """``queue``'s numbers; ``delayed`` is how many delayed messages wait for it."""
    oldest = queue.ready.oldest_enqueued_at()
    c = queue.counters
    return QueueStatistics(
        vhost=queue.vhost,
        name=queue.name,
        ready=queue.ready_count,
        unacked=len(queue.unacked),
        delayed=delayed,
        consumers=len(queue.consumers),
        ready_bytes=queue.ready.total_bytes(),
        oldest_ready_age_s=None if oldest is None else max(0.0, now - oldest),
        counts=dict(zip(COUNTERS, c.values(), strict=True)),
        rates=c.rates(),
        waiting_time=queue.waiting.summary(),
        processing_time=queue.processing.summary(),
    )


def broker_statistics(queues: Iterable[QueueStatistics], counters: Counters | None, *,
                      exchanges: int, sessions: int, delayed: int,
                      quarantined: int,
                      streams: tuple[StreamStatistics, ...] = (),
                      operations: dict[str, int] | None = None) -> BrokerStatistics:
    """Totals over ``queues``. With the broker's ``counters``, publishes are those counted
    at the exchanges (routed or not); without, those that reached the queues."""
    queues = tuple(queues)
    counts = {name: sum(q.counts[name] for q in queues) for name in COUNTERS}
    rates = {name: sum(q.rates[name] for q in queues) for name in COUNTERS}
    if counters is not None:
        counts["published"] = counters.published
        rates["published"] = counters.rates()["published"]
    return BrokerStatistics(
        queues=queues,
        exchanges=exchanges,
        sessions=sessions,
        consumers=sum(q.consumers for q in queues),
        ready=sum(q.ready for q in queues),
        unacked=sum(q.unacked for q in queues),
        delayed=delayed,
        counts=counts,
        rates=rates,
        quarantined=quarantined,
        streams=streams,
        operations=operations or {},
    )
