"""The ``rabbitmq_*`` Prometheus families, as RabbitMQ's ``rabbitmq_prometheus`` plugin exposes
them in its default (aggregated) mode, so Grafana's RabbitMQ-Overview dashboard and the alerts
written for RabbitMQ read tidings unchanged.

Every panel of that dashboard joins on ``rabbitmq_identity_info`` (``rabbitmq_node``,
``rabbitmq_cluster``); the rest are node totals without labels. The numbers are tidings' own,
counted where the thing happens: publishes at the exchanges (from every face), deliveries by
consume or get and by ack mode, acks, unroutable messages in the broker; connections,
channels and confirms in the AMQP server; memory, descriptors and sockets of this process.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

import tidings
from tidings.http.management import MANAGEMENT_API_VERSION, NODE, memory_limit_bytes
from tidings.resources import max_descriptors, open_descriptors, rss_mb
from tidings.statistics import BrokerStatistics, QueueStatistics

#: Node counters: family name (``_total`` is added) -> (help, broker operation).
OPERATION_COUNTERS = {
    "rabbitmq_channel_messages_unroutable_dropped": ("Unroutable messages dropped",
                                                     "unroutable_dropped"),
    "rabbitmq_channel_messages_unroutable_returned": ("Unroutable messages returned",
                                                      "unroutable_returned"),
    "rabbitmq_channel_messages_delivered": ("Delivered to consumers with automatic ack",
                                            "consumed_auto_ack"),
    "rabbitmq_channel_messages_delivered_ack": ("Delivered to consumers with manual ack",
                                                "consumed_manual_ack"),
    "rabbitmq_channel_get": ("Fetched with basic.get and automatic ack", "got_auto_ack"),
    "rabbitmq_channel_get_ack": ("Fetched with basic.get and manual ack", "got_manual_ack"),
    "rabbitmq_channel_get_empty": ("basic.get that found the queue empty", "get_empty"),
    "rabbitmq_channel_messages_acked": ("Acknowledged by consumers", "acked"),
    "rabbitmq_queues_declared": ("Queues declared", "queues_declared"),
    "rabbitmq_queues_created": ("Queues created", "queues_created"),
    "rabbitmq_queues_deleted": ("Queues deleted", "queues_deleted"),
}
#: Node counters the AMQP server keeps: family name -> (help, its count).
SERVER_COUNTERS = {
    "rabbitmq_connections_opened": ("Connections opened", "connections_opened"),
    "rabbitmq_connections_closed": ("Connections closed", "connections_closed"),
    "rabbitmq_channels_opened": ("Channels opened", "channels_opened"),
    "rabbitmq_channels_closed": ("Channels closed", "channels_closed"),
    "rabbitmq_channel_messages_confirmed": ("Publishes confirmed", "confirmed"),
}
#: Node gauges the server knows: family name -> (help, its number).
SERVER_GAUGES = {
    "rabbitmq_connections": ("Connections open", "connections"),
    "rabbitmq_channels": ("Channels open", "channels"),
    "rabbitmq_channel_messages_unconfirmed": ("Publishes waiting for their confirm",
                                              "unconfirmed"),
}
#: The server's numbers that are counts (not ``tidings_*`` gauges).
SERVER_COUNTS = frozenset(name for _, name in SERVER_COUNTERS.values())


def _gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_)
    family.add_metric([], value)
    return family


def _counter(name: str, help_: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_)
    family.add_metric([], value)
    return family


def rabbitmq_families(stats: BrokerStatistics, queues: list[QueueStatistics],
                      server: Mapping[str, float]) -> Iterator[Metric]:
    """The ``rabbitmq_*`` families over the whole node (``queues``: those users see)."""
    identity = GaugeMetricFamily("rabbitmq_identity_info", "Node and cluster this is",
                                 labels=["rabbitmq_node", "rabbitmq_cluster",
                                         "rabbitmq_cluster_permanent_id"])
    identity.add_metric([NODE, NODE, f"tidings-{NODE}"], 1)
    yield identity
    build = GaugeMetricFamily("rabbitmq_build_info", "Versions (RabbitMQ's: the API followed)",
                              labels=["rabbitmq_version", "prometheus_plugin_version",
                                      "prometheus_client_version", "erlang_version",
                                      "product", "product_version"])
    build.add_metric([MANAGEMENT_API_VERSION, MANAGEMENT_API_VERSION, "", "", "tidings",
                      tidings.__version__], 1)
    yield build
    yield _gauge("rabbitmq_queues", "Queues", len(queues))
    yield _gauge("rabbitmq_queue_messages_ready", "Messages ready to be delivered",
                 sum(q.ready for q in queues))
    yield _gauge("rabbitmq_queue_messages_unacked", "Messages delivered, not yet acknowledged",
                 sum(q.unacked for q in queues))
    yield _gauge("rabbitmq_queue_messages", "Messages ready and unacknowledged",
                 sum(q.ready + q.unacked for q in queues))
    yield _gauge("rabbitmq_queue_messages_bytes", "Bytes of ready messages",
                 sum(q.ready_bytes for q in queues))
    yield _gauge("rabbitmq_queue_consumers", "Consumers on queues",
                 sum(q.consumers for q in queues))
    yield _gauge("rabbitmq_channel_consumers", "Consumers on channels",
                 sum(q.consumers for q in queues))
    yield _gauge("rabbitmq_consumers", "Consumers", sum(q.consumers for q in queues))
    yield _gauge("rabbitmq_channel_messages_unacked", "Delivered, not yet acknowledged",
                 sum(q.unacked for q in queues))
    for name, (help_, key) in SERVER_GAUGES.items():
        yield _gauge(name, help_, server.get(key, 0.0))
    yield _counter("rabbitmq_channel_messages_published", "Messages published",
                   stats.counts["published"])
    yield _counter("rabbitmq_queue_messages_published", "Messages routed to queues",
                   sum(q.counts["published"] for q in queues))
    yield _counter("rabbitmq_channel_messages_redelivered", "Messages redelivered",
                   sum(q.counts["redelivered"] for q in queues))
    for name, (help_, key) in OPERATION_COUNTERS.items():
        yield _counter(name, help_, stats.operations.get(key, 0))
    for name, (help_, key) in SERVER_COUNTERS.items():
        yield _counter(name, help_, server.get(key, 0.0))
    yield from _process_families(server)


def _process_families(server: Mapping[str, float]) -> Iterator[Metric]:
    """Memory, disk, descriptors and sockets of this process, as RabbitMQ reports its node's."""
    limit = memory_limit_bytes(server)
    yield _gauge("rabbitmq_resident_memory_limit_bytes", "Memory high watermark", limit)
    yield _gauge("rabbitmq_process_resident_memory_bytes", "Resident memory",
                 rss_mb() * 2**20)
    if "disk_free_bytes" in server:
        yield _gauge("rabbitmq_disk_space_available_bytes", "Free disk space of the data "
                     "directory", server["disk_free_bytes"])
        yield _gauge("rabbitmq_disk_space_available_limit_bytes", "Free disk space limit",
                     server.get("disk_free_limit_bytes", 0.0))
    yield _gauge("rabbitmq_alarms_memory_used_watermark", "1 while the memory alarm is on",
                 server.get("memory_alarm", 0.0))
    yield _gauge("rabbitmq_alarms_free_disk_space_watermark", "1 while the disk alarm is on",
                 server.get("disk_alarm", 0.0))
    soft = max_descriptors()
    fds, sockets = open_descriptors()
    yield _gauge("rabbitmq_process_max_fds", "Descriptors this process may open", soft)
    yield _gauge("rabbitmq_process_open_fds", "Descriptors open", fds)
    yield _gauge("rabbitmq_process_max_tcp_sockets", "Sockets this process may open", soft)
    yield _gauge("rabbitmq_process_open_tcp_sockets", "Sockets open", sockets)

