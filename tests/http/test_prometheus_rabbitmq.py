"""Prometheus as RabbitMQ's rabbitmq_prometheus plugin exposes it: every metric and label set
Grafana's RabbitMQ-Overview dashboard queries (tests/http/fixtures) has a sample on
``--prometheus-port``, joined on ``rabbitmq_identity_info``, and the counters count what a
pika client did: publishes, confirms, unroutable messages dropped and returned, deliveries by
consume and get with either ack mode, empty gets, acks, redeliveries, connection churn."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import httpx
import pika
from prometheus_client.parser import text_string_to_metric_families

from ..serverproc import ServerProcess, running

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "grafana-rabbitmq-overview.json")
                     .read_text())


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(value for _, value in samples[name])


def _traffic(server: ServerProcess) -> None:
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        for queue, count in (("prom-get", 2), ("prom-manual", 3), ("prom-auto", 1)):
            ch.queue_declare(queue)
            for i in range(count):
                ch.basic_publish("", queue, f"m{i}".encode())
        ch.basic_publish("amq.direct", "nobody", b"dropped")
        with contextlib.suppress(pika.exceptions.UnroutableError):  # returned, as meant
            ch.basic_publish("amq.direct", "nobody", b"returned", mandatory=True)
        method, _, _ = ch.basic_get("prom-get", auto_ack=False)
        ch.basic_nack(method.delivery_tag, requeue=True)  # comes back redelivered
        method, _, _ = ch.basic_get("prom-get", auto_ack=False)
        ch.basic_ack(method.delivery_tag)
        ch.basic_get("prom-get", auto_ack=True)
        assert ch.basic_get("prom-get")[0] is None  # empty
        for queue, auto_ack in (("prom-manual", False), ("prom-auto", True)):
            for method, _, _ in ch.consume(queue, auto_ack=auto_ack, inactivity_timeout=0.5):
                if method is None:
                    break
                if not auto_ack:
                    ch.basic_ack(method.delivery_tag)
            ch.cancel()


def test_every_metric_the_overview_dashboard_reads_has_data(tmp_path: Path) -> None:
    with running(tmp_path / "data", "--prometheus-port", "0") as server:
        _traffic(server)
        text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    samples = _samples(text)
    missing = [m for m in FIXTURE["metrics"] if m not in samples]
    assert not missing, missing
    [(labels, one)] = samples[FIXTURE["join"]["metric"]]
    assert one == 1 and all(labels.get(k) for k in FIXTURE["join"]["labels"])
    for metric, shown in FIXTURE["table"].items():
        assert all(k in samples[metric][0][0] for k in shown)
    assert samples["rabbitmq_build_info"][0][0]["product"] == "tidings"
    # the counts are the client's traffic, not placeholders
    counted = {name: _value(samples, name) for name in FIXTURE["metrics"]}
    assert counted["rabbitmq_channel_messages_published_total"] == 8
    assert counted["rabbitmq_queue_messages_published_total"] == 6
    assert counted["rabbitmq_channel_messages_confirmed_total"] == 8
    assert counted["rabbitmq_channel_messages_unroutable_dropped_total"] == 1
    assert counted["rabbitmq_channel_messages_unroutable_returned_total"] == 1
    assert counted["rabbitmq_channel_get_ack_total"] == 2
    assert counted["rabbitmq_channel_get_total"] == 1
    assert counted["rabbitmq_channel_get_empty_total"] == 1
    assert counted["rabbitmq_channel_messages_delivered_ack_total"] == 3
    assert counted["rabbitmq_channel_messages_delivered_total"] == 1
    assert counted["rabbitmq_channel_messages_acked_total"] == 4
    assert counted["rabbitmq_channel_messages_redelivered_total"] >= 1
    assert counted["rabbitmq_connections_opened_total"] == 1
    assert counted["rabbitmq_connections_closed_total"] == 1
    assert counted["rabbitmq_channels_opened_total"] == 1
    assert counted["rabbitmq_queues_created_total"] >= 3  # (and the gateway's own)
    queues = {labels["queue"] for labels, _ in samples["tidings_queue_messages_ready"]}
    assert {"prom-get", "prom-manual", "prom-auto"} <= queues
    assert counted["rabbitmq_queues"] == len(queues) and counted["rabbitmq_connections"] == 0
    assert counted["rabbitmq_process_resident_memory_bytes"] > 1e6
    assert 0 < counted["rabbitmq_process_open_fds"] <= counted["rabbitmq_process_max_fds"]
    assert "tidings_queue_messages_ready" in samples  # tidings' own families stay beside


def test_node_wide_families_are_not_shown_to_a_user_of_one_vhost(
        http: httpx.Client, server: ServerProcess) -> None:
    assert http.put("/api/vhosts/solo", json={}).status_code in (201, 204)
    assert http.put("/api/users/solo-user", json={"password": "pw", "tags": ""}
                    ).status_code == 201
    assert http.put("/api/permissions/solo/solo-user", json={
        "configure": ".*", "write": ".*", "read": ".*"}).status_code == 201
    with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}",
                      auth=("solo-user", "pw"), timeout=10) as solo:
        text = solo.get("/metrics").text
    assert "rabbitmq_identity_info" not in text and "tidings_queue" in text
    assert "rabbitmq_identity_info" in http.get("/metrics").text
    assert http.delete("/api/users/solo-user").status_code == 204
