"""The HTTP gateway over a real socket: events in, SSE out, queues over REST, errors, auth,
metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest

from ..serverproc import ServerProcess


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def is_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and isinstance(body["message"], str) and body["message"]
    return body


def test_only_healthz_answers_without_credentials(server: ServerProcess) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    for path in ("/", "/api/overview", "/metrics", "/api/queues", "/openapi.json"):
        is_error(httpx.get(f"{base}{path}"), 401, "unauthorized")
    is_error(httpx.get(f"{base}/api/overview", auth=("guest", "bad")), 401, "unauthorized")
    is_error(httpx.get(f"{base}/api/overview", headers={"Authorization": "Bearer nope"}),
             401, "unauthorized")


def test_bearer_token_from_the_cli(server: ServerProcess) -> None:
    out = subprocess.run([sys.executable, "-m", "tidings", "--data-dir", str(server.data_dir),
                          "tokens", "create", "guest", "--name", "ci"],
                         capture_output=True, text=True, timeout=60, check=True)
    token = out.stdout.strip()
    r = httpx.get(f"http://127.0.0.1:{server.http_port}/api/overview",
                  headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and "ready" in r.json()


def test_post_event_is_durable_and_acknowledged_by_name(http: httpx.Client) -> None:
    r = http.post("/event", json={"type": "orders.created", "data": {"order": 42}})
    assert r.status_code == 202
    body = r.json()
    assert body["type"] == "orders.created" and "orders.created" in body["message"]
    assert len(body["id"]) >= 16
    r = http.post("/events/orders.shipped", json={"order": 42})
    assert r.status_code == 202 and r.json()["topic"] == "orders.shipped"
    r = http.post("/events/raw.bytes", content=b"\x00\x01", headers={"Content-Type":
                                                                    "application/octet-stream"})
    assert r.status_code == 202


def test_idempotency_key_accepts_an_event_once(http: httpx.Client) -> None:
    key = {"Idempotency-Key": unique("key")}
    first = http.post("/events/payments.taken", json={"n": 1}, headers=key)
    again = http.post("/events/payments.taken", json={"n": 1}, headers=key)
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize(("kwargs", "status", "code"), [
    ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400,
     "bad_request"),
    ({"content": b"<x/>", "headers": {"Content-Type": "application/xml"}}, 415,
     "unsupported_media_type"),
    ({"json": {"type": "t"}}, 400, "bad_request"),
    ({"json": ["not", "an", "object"]}, 400, "bad_request"),
    ({"json": {"type": "x" * 300, "data": 1}}, 400, "bad_request"),
    ({"content": b"{" + b" " * 70_000 + b"}", "headers": {"Content-Type": "application/json"}},
     413, "payload_too_large"),
])
def test_bad_event_input_is_a_clear_json_4xx(http: httpx.Client, kwargs: dict[str, Any],
                                              status: int, code: str) -> None:
    is_error(http.post("/event", **kwargs), status, code)


def read_sse(response: httpx.Response, count: int) -> list[dict[str, Any]]:
    events, current = [], {}
    for line in response.iter_lines():
        if not line:
            if current.get("data") is not None:
                events.append(current)
                if len(events) == count:
                    return events
            current = {}
            continue
        field, _, value = line.partition(": ")
        current[field] = value
    return events


def test_sse_streams_matching_events_and_resumes_with_last_event_id(
    server: ServerProcess, http: httpx.Client
) -> None:
    topic = unique("sse")
    got: list[dict[str, Any]] = []
    opened = threading.Event()

    def listen(count: int, last: str | None = None) -> None:
        headers = {"Last-Event-ID": last} if last else {}
        with http.stream("GET", "/events/stream", params={"topic": f"{topic}.*"},
                         headers=headers, timeout=20) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            opened.set()
            got.extend(read_sse(r, count))

    t = threading.Thread(target=listen, args=(2,))
    t.start()
    assert opened.wait(10)
    time.sleep(0.2)
    http.post(f"/events/{topic}.created", json={"n": 1})
    http.post("/events/other.created", json={"n": 0})
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port)) as conn:
        ch = conn.channel()  # an event published over AMQP shows up on the stream too
        ch.basic_publish("tidings.events", f"{topic}.updated", b'{"n": 2}',
                         pika.BasicProperties(content_type="application/json"))
    t.join(20)
    assert [json.loads(e["data"])["json"]["n"] for e in got] == [1, 2]
    assert [json.loads(e["data"])["topic"] for e in got] == [f"{topic}.created",
                                                              f"{topic}.updated"]
    first_id = got[0]["id"]
    http.post(f"/events/{topic}.deleted", json={"n": 3})
    got.clear()
    opened.clear()
    t = threading.Thread(target=listen, args=(2, first_id))
    t.start()
    t.join(20)
    assert [json.loads(e["data"])["json"]["n"] for e in got] == [2, 3]


def test_sse_resumes_from_last_event_id_across_a_server_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    topic = unique("durable")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}",
                          auth=("guest", "guest"), timeout=10) as http:
            for n in range(4):
                assert http.post(f"/events/{topic}.n", json={"n": n}).status_code == 202
            with http.stream("GET", "/events/stream", params={"topic": f"{topic}.*"},
                             headers={"Last-Event-ID": "-1"}, timeout=20) as r:
                ids = [e["id"] for e in read_sse(r, 4)]  # -1: from the first kept event
        assert ids == sorted(ids, key=int)
        server.stop()
        server.start()
        with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}",
                          auth=("guest", "guest"), timeout=10) as http, \
                http.stream("GET", "/events/stream", params={"topic": f"{topic}.*"},
                            headers={"Last-Event-ID": ids[1]}, timeout=20) as r:
            got = read_sse(r, 2)
        assert [json.loads(e["data"])["json"]["n"] for e in got] == [2, 3]
        assert [e["id"] for e in got] == ids[2:]  # an event's id is its offset, for good
    finally:
        server.stop()


def test_sse_bad_pattern_is_400(http: httpx.Client) -> None:
    is_error(http.get("/events/stream", params={"topic": "orders.*x"}), 400, "bad_request")


def test_slow_sse_reader_is_cut_off_with_a_clear_event(server: ServerProcess) -> None:
    import socket

    topic = unique("slow")
    sock = socket.create_connection(("127.0.0.1", server.http_port))
    try:
        sock.sendall(f"GET /events/stream?topic={topic} HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\r\n".encode())
        time.sleep(0.3)  # ... and read nothing while 24 MB of events go by
        with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1",
                                                               server.port)) as conn:
            ch = conn.channel()
            for _ in range(400):
                ch.basic_publish("tidings.events", topic, b"e" * 60_000)
        sock.settimeout(10)
        data = b""
        while b"event: error" not in data:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        assert b"event: error" in data and b"too_slow" in data
        assert data.count(b"event: message") < 400
    finally:
        sock.close()


def test_queue_rest_round_trip_with_leases(http: httpx.Client) -> None:
    name = unique("jobs")
    q = f"/api/queues/%2F/{name}"
    assert http.put(q, json={"arguments": {"x-dead-letter-exchange": ""}}).status_code == 201
    assert http.put(q, json={"arguments": {"x-dead-letter-exchange": ""}}).status_code == 200
    for n in range(3):
        r = http.post(f"{q}/messages", json={"json": {"n": n}, "headers": {"h": "v"}})
        assert r.status_code == 201 and r.json()["id"]
    r = http.post(f"{q}/receive", json={"max": 2, "visibility_ms": 60_000})
    first, second = r.json()["messages"]
    assert first["json"] == {"n": 0} and first["headers"] == {"h": "v"}
    assert first["delivery_count"] == 1 and not first["redelivered"]
    assert http.post(f"/api/receipts/{first['receipt']}/ack").json() == {"status": "acked"}
    is_error(http.post(f"/api/receipts/{first['receipt']}/ack"), 404, "not_found")
    assert http.post(f"/api/receipts/{second['receipt']}/extend",
                     json={"visibility_ms": 60_000}).status_code == 200
    assert http.post(f"/api/receipts/{second['receipt']}/nack",
                     json={"requeue": True}).status_code == 200
    r = http.post(f"{q}/receive", json={"max": 5, "visibility_ms": 200})
    again = r.json()["messages"]
    assert [m["json"]["n"] for m in again] == [1, 2] and again[0]["redelivered"]
    time.sleep(0.5)  # the leases run out: both come back
    info = http.get(q).json()
    assert info["ready"] == 2 and info["unacked"] == 0
    assert info["waiting_time"]["count"] >= 3


def test_receive_long_polls_until_a_message_arrives(http: httpx.Client) -> None:
    name = unique("poll")
    q = f"/api/queues/%2F/{name}"
    http.put(q, json={})
    threading.Timer(0.3, lambda: http.post(f"{q}/messages", json={"body": "late"})).start()
    started = time.monotonic()
    r = http.post(f"{q}/receive", json={"wait_ms": 5000})
    assert r.json()["messages"][0]["body"] == "late"
    assert 0.2 < time.monotonic() - started < 4
    assert http.post(f"{q}/receive", json={"wait_ms": 100}).json() == {"messages": []}


def test_dead_letters_list_replay_purge(http: httpx.Client) -> None:
    name = unique("work")
    q = f"/api/queues/%2F/{name}"
    http.put(f"/api/queues/%2F/{name}.dead", json={})
    http.put(q, json={"arguments": {"x-dead-letter-exchange": "",
                                    "x-dead-letter-routing-key": f"{name}.dead"}})
    for n in range(2):
        http.post(f"{q}/messages", json={"json": {"n": n}})
    for m in http.post(f"{q}/receive", json={"max": 2}).json()["messages"]:
        http.post(f"/api/receipts/{m['receipt']}/nack", json={"requeue": False})
    dead = http.get(f"{q}/dead-letters").json()
    assert [d["json"]["n"] for d in dead] == [0, 1]
    assert dead[0]["headers"]["x-death"][0]["reason"] == "rejected"
    assert http.post(f"{q}/dead-letters/replay", json={"ids": [dead[1]["id"]]}).json() == \
        {"replayed": 1}
    assert http.delete(f"{q}/dead-letters").json() == {"purged": 1}
    assert http.get(q).json()["ready"] == 1


def test_rest_errors_name_the_thing(http: httpx.Client) -> None:
    body = is_error(http.get("/api/queues/%2F/no-such-queue"), 404, "not_found")
    assert body["message"] == "no queue 'no-such-queue' in vhost '/'"
    is_error(http.post("/api/queues/%2F/no-such-queue/messages", json={"body": "x"}), 404,
             "not_found")
    name = unique("q")
    http.put(f"/api/queues/%2F/{name}", json={"durable": True})
    is_error(http.put(f"/api/queues/%2F/{name}", json={"durable": False}), 409,
             "precondition_failed")
    is_error(http.post(f"/api/queues/%2F/{name}/messages", json={"body": "x", "json": 1}),
             400, "bad_request")
    is_error(http.post(f"/api/queues/%2F/{name}/receive", json={"max": 0}), 400, "bad_request")
    is_error(http.get("/no/such/path"), 404, "not_found")
    is_error(http.delete("/healthz"), 405, "method_not_allowed")
    is_error(http.put("/api/exchanges/%2F/amq.bad", json={}), 403, "access_refused")


def test_exchanges_and_bindings_over_rest(http: httpx.Client) -> None:
    ex, queue = unique("ex"), unique("bound")
    assert http.put(f"/api/exchanges/%2F/{ex}", json={"type": "topic"}).status_code == 201
    http.put(f"/api/queues/%2F/{queue}", json={})
    binding = {"source": ex, "destination": queue, "routing_key": "a.#"}
    assert http.post("/api/bindings/%2F", json=binding).status_code == 201
    assert binding["source"] in [b["source"] for b in http.get("/api/bindings").json()]
    assert ex in [e["name"] for e in http.get("/api/exchanges").json()]
    assert http.request("DELETE", "/api/bindings/%2F", json=binding).status_code == 200
    assert http.delete(f"/api/exchanges/%2F/{ex}").status_code == 200


def test_metrics_and_overview_show_queue_numbers(server: ServerProcess,
                                                 http: httpx.Client) -> None:
    name = unique("metered")
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port)) as conn:
        ch = conn.channel()
        ch.queue_declare(name)
        for _ in range(3):
            ch.basic_publish("", name, b"x")
        ch.queue_declare(name, passive=True)
        text = http.get("/metrics").text
        assert f'tidings_queue_messages_ready{{queue="{name}",vhost="/"}} 3.0' in text
        assert "tidings_connections 1.0" in text
        assert "tidings_queue_waiting_seconds_bucket" in text
        assert "process_resident_memory_bytes" in text
        overview = http.get("/api/overview").json()
        assert overview["connections"] >= 1 and overview["ready"] >= 3
        [mine] = [c for c in http.get("/api/connections").json() if c["channels"] == 1]
        assert mine["user"] == "guest" and mine["vhost"] == "/"
        assert mine["client"] == "Pika Python Client Library"


def test_permissions_apply_over_http(server: ServerProcess, http: httpx.Client) -> None:
    data = str(server.data_dir)
    run = [sys.executable, "-m", "tidings", "--data-dir", data, "users"]
    subprocess.run([*run, "add", "reader", "pw"], check=True, timeout=60)
    subprocess.run([*run, "set-permissions", "reader", "^$", "^$", ".*"], check=True,
                   timeout=60)
    with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}", auth=("reader", "pw"),
                      timeout=10) as reader:
        body = is_error(reader.post("/event", json={"type": "t", "data": 1}), 403,
                        "access_refused")
        assert "write access to exchange 'tidings.events'" in body["message"]
        is_error(reader.put("/api/queues/%2F/mine", json={}), 403, "access_refused")
        assert reader.get("/api/overview").status_code == 200


async def test_websocket_twin_streams_events_and_refuses_strangers(server: ServerProcess) -> None:
    import asyncio
    import base64

    import websockets

    topic = unique("ws")
    url = f"ws://127.0.0.1:{server.http_port}/events/ws?topic={topic}.%23"
    auth = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}
    async with websockets.connect(url, additional_headers=auth) as ws:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}",
                                     auth=("guest", "guest")) as client:
            await client.post(f"/events/{topic}.a", json={"n": 1})
            await client.post(f"/events/other.{topic}", json={"n": 0})
            await client.post(f"/events/{topic}.b.c", json={"n": 2})
        got = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
        assert [g["json"]["n"] for g in got] == [1, 2]
        assert got[0]["topic"] == f"{topic}.a" and got[0]["event_id"]
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(url):
            pass
    assert refused.value.response.status_code == 403


def test_dead_letters_follow_the_queues_dead_letter_routing_key(http: httpx.Client) -> None:
    name, grave = unique("work"), unique("graveyard")
    q = f"/api/queues/%2F/{name}"
    http.put(f"/api/queues/%2F/{grave}", json={})
    http.put(q, json={"arguments": {"x-dead-letter-exchange": "",
                                    "x-dead-letter-routing-key": grave}})
    http.post(f"{q}/messages", json={"body": "doomed"})
    [m] = http.post(f"{q}/receive", json={}).json()["messages"]
    http.post(f"/api/receipts/{m['receipt']}/nack", json={"requeue": False})
    [dead] = http.get(f"{q}/dead-letters").json()
    assert dead["body"] == "doomed" and "x-death" in dead["headers"]
    assert http.post(f"{q}/dead-letters/replay", json={}).json() == {"replayed": 1}
    [back] = http.post(f"{q}/receive", json={}).json()["messages"]
    assert back["body"] == "doomed" and "x-death" not in back["headers"]
    is_error(http.get(f"{q}/dead-letters", params={"limit": "many"}), 400, "bad_request")
    is_error(http.get(f"/api/queues/%2F/{grave}/dead-letters"), 404, "not_found")


def test_deep_or_unsendable_json_is_a_400_not_a_500(http: httpx.Client) -> None:
    name = unique("deepq")
    http.put(f"/api/queues/%2F/{name}", json={}).raise_for_status()
    deep = "[" * 5000 + "]" * 5000
    for path in ("/event", f"/api/queues/%2F/{name}/messages"):
        body = is_error(http.post(path, content=deep,
                                  headers={"content-type": "application/json"}), 400,
                        "bad_request")
        assert "nested too deeply" in body["message"]
    nested: dict[str, Any] = {}
    for _ in range(20):
        nested = {"a": nested}
    for headers, says in ((nested, "nested deeper than 16"), ({"n": 2**70}, "beyond 64 bits")):
        body = is_error(http.post(f"/api/queues/%2F/{name}/messages",
                                  json={"body": "x", "headers": headers}), 400, "bad_request")
        assert says in body["message"]
    assert http.get(f"/api/queues/%2F/{name}").json()["ready"] == 0


def test_management_api_fields_mirror_rabbitmqs(http: httpx.Client) -> None:
    """What rabbitmqadmin, KEDA's RabbitMQ scaler and Grafana read, beside tidings' own."""
    name = unique("mgmt")
    http.put(f"/api/queues/%2F/{name}", json={}).raise_for_status()
    for n in range(3):
        http.post(f"/api/queues/%2F/{name}/messages", json={"body": str(n)})
    http.post(f"/api/queues/%2F/{name}/receive", json={}).raise_for_status()
    q = http.get(f"/api/queues/%2F/{name}").json()
    assert (q["messages"], q["messages_ready"], q["messages_unacknowledged"]) == (3, 2, 1)
    assert q["ready"] == 2 and q["unacked"] == 1 and q["consumers"] == 0
    assert q["message_stats"]["publish"] == 3 and "rate" in q["message_stats"]["publish_details"]
    assert q["message_stats"]["deliver_get"] == 1 and q["type"] == "classic"
    assert set(q["waiting_time"]) == {"count", "mean_ms", "p50_ms", "p95_ms", "p99_ms"}
    in_vhost = http.get("/api/queues/%2F").json()
    assert name in {x["name"] for x in in_vhost} and {x["vhost"] for x in in_vhost} == {"/"}
    [root] = [v for v in http.get("/api/vhosts").json() if v["name"] == "/"]
    assert root["messages"] >= 3
    overview = http.get("/api/overview").json()
    assert overview["queue_totals"]["messages"] >= 3
    assert overview["object_totals"]["queues"] >= 1 and "publish" in overview["message_stats"]


def test_stream_numbers_in_the_api_prometheus_and_the_cli(server: ServerProcess,
                                                          http: httpx.Client) -> None:
    name = unique("audit")
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port)) as conn:
        ch = conn.channel()
        ch.queue_declare(name, durable=True, arguments={
            "x-queue-type": "stream", "x-max-age": "2D", "x-max-length-bytes": 10**9})
        ch.confirm_delivery()
        for i in range(5):
            ch.basic_publish("", name, f"r{i}".encode())
        ch.basic_qos(prefetch_count=2)  # a live consumer that reads two and stops
        ch.basic_consume(name, lambda *a: None, arguments={"x-stream-offset": "first"},
                         consumer_tag="dashboard-check")
        conn.process_data_events(0.5)
        stream = http.get(f"/api/streams/%2F/{name}").json()
        assert (stream["records"], stream["first_offset"], stream["last_offset"]) == (5, 0, 4)
        assert stream["max_age_s"] == 2 * 86400 and stream["max_bytes"] == 10**9
        (reader,) = stream["readers"]
        assert (reader["name"], reader["live"], reader["offset"], reader["lag"]) == \
            ("dashboard-check", True, 2, 3)  # two delivered (its prefetch), three to go
        assert name in [s["name"] for s in http.get("/api/streams").json()]
        metrics = http.get("/metrics").text
        assert f'tidings_stream_records{{stream="{name}",vhost="/"}} 5.0' in metrics
        assert (f'tidings_stream_reader_lag_records{{reader="dashboard-check",stream="{name}",'
                f'vhost="/"}} 3.0') in metrics
    out = subprocess.run([sys.executable, "-m", "tidings", "--data-dir", str(server.data_dir),
                          "streams"], capture_output=True, text=True, timeout=60, check=True)
    line = next(x for x in out.stdout.splitlines() if name in x)
    assert line.split()[2:6] == ["5", line.split()[3], "0", "4"]
    is_error(http.get("/api/streams/%2F/no-such-stream"), 404, "not_found")
