"""``GET /metrics``: Prometheus text from prometheus-client, collected from broker statistics
at scrape time (nothing is updated on the hot path).

Log-scale latency buckets are folded into fixed Prometheus buckets (seconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tidings.http.event_log import is_internal_queue
from tidings.http.management import message_stats, totals
from tidings.http.prometheus_rabbitmq import SERVER_COUNTS, rabbitmq_families
from tidings.routing.front_door import FrontDoor
from tidings.statistics import COUNTERS, BrokerStatistics, Histogram, QueueStatistics
from tidings.transitions import read_row, state_numbers

#: The Prometheus text format's media type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Bucket bounds, seconds, for waiting and processing time.
BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)


def fold(histogram: Histogram) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (le, count) pairs and the sum in seconds."""
    from tidings.statistics import _FLOOR_MS, _GROWTH

    edges = sorted((_FLOOR_MS * _GROWTH**i / 1000.0, n) for i, n in histogram.buckets.items())
    out, seen, i = [], 0, 0
    for bound in BUCKETS_S:
        while i < len(edges) and edges[i][0] <= bound:
            seen += edges[i][1]
            i += 1
        out.append((repr(bound), float(seen)))
    out.append(("+Inf", float(histogram.count)))
    return out, histogram.total_ms / 1000.0


def visible_queues(stats: BrokerStatistics) -> list[QueueStatistics]:
    """The user-facing queues among ``stats``."""
    return [q for q in stats.queues if not is_internal_queue(q.name)]


class BrokerCollector(Collector):
    def __init__(self, broker: FrontDoor, extra: Callable[[], dict[str, float]] | None,
                 vhosts: set[str] | None = None) -> None:
        self.broker, self.extra, self.vhosts = broker, extra, vhosts

    def machine_metrics(self) -> Iterator[Metric]:
        shown = [v for v in self.broker.vhost_names() if self.vhosts is None or v in self.vhosts]
        return _machine_families(self.broker, shown)

    def collect(self) -> Iterator[Metric]:
        labels = ["vhost", "queue"]
        gauges = {name: GaugeMetricFamily(f"tidings_queue_{name}", help_, labels=labels)
                  for name, help_ in (("messages_ready", "Messages ready for delivery"),
                                      ("messages_unacked", "Delivered, not yet acknowledged"),
                                      ("messages_delayed", "Waiting for their due time"),
                                      ("consumers", "Consumers"),
                                      ("oldest_ready_age_seconds", "Age of the oldest ready "
                                                                   "message"))}
        counters = {name: CounterMetricFamily(f"tidings_queue_{name}", f"Messages {name}",
                                              labels=labels) for name in COUNTERS}
        waiting = HistogramMetricFamily("tidings_queue_waiting_seconds",
                                        "Enqueue to first delivery", labels=labels)
        processing = HistogramMetricFamily("tidings_queue_processing_seconds",
                                           "Delivery to acknowledgement", labels=labels)
        stats = self.broker.statistics(self.vhosts)
        for s in visible_queues(stats):
            key = [s.vhost, s.name]
            gauges["messages_ready"].add_metric(key, s.ready)
            gauges["messages_unacked"].add_metric(key, s.unacked)
            gauges["messages_delayed"].add_metric(key, s.delayed)
            gauges["consumers"].add_metric(key, s.consumers)
            gauges["oldest_ready_age_seconds"].add_metric(key, s.oldest_ready_age_s or 0.0)
            for name in COUNTERS:
                counters[name].add_metric(key, s.counts[name])
            for family, hist in zip((waiting, processing),
                                    self.broker.queue_histograms(s.vhost, s.name), strict=True):
                buckets, total = fold(hist)
                family.add_metric(key, buckets, total)
        yield from gauges.values()
        yield from counters.values()
        yield waiting
        yield processing
        yield from stream_metrics(stats)
        yield from self.machine_metrics()
        server = self.extra() if self.extra else {}
        for name, value in server.items():
            if name not in SERVER_COUNTS:
                g = GaugeMetricFamily(f"tidings_{name}", name.replace("_", " "))
                g.add_metric([], value)
                yield g
        if self.vhosts is None:  # node-wide: for those who see every vhost
            yield from rabbitmq_families(stats, visible_queues(stats), server)


def _machine_families(broker: FrontDoor, vhosts: list[str]) -> Iterator[Metric]:
    """Per state machine and state: its instances and the age of the one there longest."""
    labels = ["vhost", "machine", "state"]
    count = GaugeMetricFamily("tidings_machine_instances", "Instances in the state",
                              labels=labels)
    oldest = GaugeMetricFamily("tidings_machine_oldest_seconds", "Seconds the instance "
                               "longest in the state has been there", labels=labels)
    now = time.time()
    for v in vhosts:
        for name in broker.machine_names(v):
            rows = [read_row(row) for _, row in broker.list_instances(v, name)]
            for state, n in state_numbers(rows, now).items():
                count.add_metric([v, name, state], n["instances"])
                oldest.add_metric([v, name, state], n["oldest_s"])
    yield count
    yield oldest
    yield from _transition_families(broker, vhosts)


def _transition_families(broker: FrontDoor, vhosts: list[str]) -> Iterator[Metric]:
    """Per state machine transition: committed, failed, handler and commit time."""
    labels = ["vhost", "machine", "transition"]
    done = CounterMetricFamily("tidings_machine_transitions", "Transitions committed",
                               labels=labels)
    failed = CounterMetricFamily("tidings_machine_transition_failures",
                                 "Times the transition's handler raised", labels=labels)
    times = {"handler": HistogramMetricFamily(
                 "tidings_machine_handler_seconds", "Time the transition's handler ran",
                 labels=labels),
             "commit": HistogramMetricFamily(
                 "tidings_machine_commit_seconds", "Time from the broker taking a transition "
                 "to its being durable", labels=labels)}
    dead = CounterMetricFamily("tidings_machine_dead_letters", "Events the machine's states "
                               "did not take, dead-lettered", labels=["vhost", "machine"])
    for v in vhosts:
        for machine in broker.machine_names(v):
            dead.add_metric([v, machine], broker.machine_statistics(v, machine)["dead_lettered"])
        for machine, transition, n in broker.transition_numbers(v):
            key = [v, machine, transition]
            done.add_metric(key, n.count)
            failed.add_metric(key, n.failures)
            for name, hist in (("handler", n.handler), ("commit", n.commit)):
                buckets, total = fold(hist)
                times[name].add_metric(key, buckets, total)
    yield done
    yield failed
    yield dead
    yield from times.values()


def stream_metrics(stats: BrokerStatistics) -> Iterator[Metric]:
    """Each stream's size, offsets and retention, and each reader's lag."""
    labels = ["vhost", "stream"]
    gauges = {name: GaugeMetricFamily(f"tidings_stream_{name}", help_, labels=labels)
              for name, help_ in (("records", "Records the stream keeps"),
                                  ("bytes", "Bytes of its segment files"),
                                  ("segments", "Segment files"),
                                  ("first_offset", "Offset of the oldest record kept"),
                                  ("last_offset", "Offset of the newest record"),
                                  ("last_timestamp_seconds", "When the newest was appended"),
                                  ("max_bytes", "Retention: x-max-length-bytes"),
                                  ("max_age_seconds", "Retention: x-max-age"))}
    reader_labels = ["vhost", "stream", "reader"]
    lag = GaugeMetricFamily("tidings_stream_reader_lag_records",
                            "Records between a reader and the tail", labels=reader_labels)
    lag_s = GaugeMetricFamily("tidings_stream_reader_lag_seconds",
                              "Age of a reader's next unread record", labels=reader_labels)
    for st in stats.streams:
        key = [st.vhost, st.name]
        for name, value in (("records", st.records), ("bytes", st.bytes),
                            ("segments", st.segments), ("first_offset", st.first_offset),
                            ("last_offset", st.last_offset),
                            ("last_timestamp_seconds", st.last_timestamp),
                            ("max_bytes", st.max_bytes), ("max_age_seconds", st.max_age_s)):
            if value is not None:
                gauges[name].add_metric(key, value)
        for r in st.readers:
            lag.add_metric([st.vhost, st.name, r.name], r.lag)
            lag_s.add_metric([st.vhost, st.name, r.name], r.lag_s)
    yield from gauges.values()
    yield lag
    yield lag_s


def metrics_text(broker: FrontDoor, extra: Callable[[], dict[str, float]] | None = None,
                 vhosts: set[str] | None = None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(broker, extra, vhosts))
    from prometheus_client import ProcessCollector

    ProcessCollector(registry=registry)
    return generate_latest(registry)


def overview(broker: FrontDoor, extra: dict[str, Any], vhosts: set[str] | None = None
             ) -> dict[str, Any]:
    """Totals over the queues of ``vhosts`` (None: all) that users see."""
    stats = broker.statistics(vhosts)
    queues = visible_queues(stats)
    counts = {name: sum(q.counts[name] for q in queues) for name in COUNTERS}
    rates = {name: sum(q.rates[name] for q in queues) for name in COUNTERS}
    if vhosts is None:  # publishes counted at the exchanges, routed or not
        counts["published"] = stats.counts["published"]
        rates["published"] = stats.rates["published"]
    return {
        "queues": len(queues), "exchanges": stats.exchanges, "sessions": stats.sessions,
        "consumers": sum(q.consumers for q in queues), "ready": sum(q.ready for q in queues),
        "unacked": sum(q.unacked for q in queues),
        "delayed": stats.delayed,
        "counts": counts, "rates": rates, **extra,
        # RabbitMQ's management API names for the same numbers
        "queue_totals": totals(sum(q.ready for q in queues), sum(q.unacked for q in queues)),
        "object_totals": {"queues": len(queues), "exchanges": stats.exchanges,
                          "consumers": sum(q.consumers for q in queues),
                          **{k: int(v) for k, v in extra.items()
                             if k in ("connections", "channels")}},
        "message_stats": message_stats(counts, rates),
    }
