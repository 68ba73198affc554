"""RabbitMQ's own command-line tool, rabbitmqadmin, unchanged against ``tidings serve``'s
management API: declare a queue, an exchange and a binding, publish, get, list, delete a
binding by its properties key, purge and delete; and the API's RabbitMQ conventions it relies
on (booleans and numbers as strings, errors with a ``reason``, one exchange by name)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import httpx
import pika
import pytest

from ..serverproc import ServerProcess

ADMIN = shutil.which("rabbitmqadmin")


def admin(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    assert ADMIN is not None
    return subprocess.run([ADMIN, "-H", "127.0.0.1", "-P", str(server.http_port), "-u", "guest",
                           "-p", "guest", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(ADMIN is None, reason="rabbitmqadmin is not installed (it comes with "
                                          "RabbitMQ's management plugin)")
def test_rabbitmqadmin_operates_tidings(server: ServerProcess) -> None:
    q, x = f"adm-{uuid.uuid4().hex[:8]}", f"admx-{uuid.uuid4().hex[:8]}"
    for args, said in [
        (("declare", "queue", f"name={q}", "durable=true"), "queue declared"),
        (("declare", "exchange", f"name={x}", "type=direct"), "exchange declared"),
        (("declare", "binding", f"source={x}", f"destination={q}", "routing_key=k"),
         "binding declared"),
        (("publish", f"exchange={x}", "routing_key=k", "payload=via the exchange"),
         "Message published"),
        (("publish", "exchange=amq.default", f"routing_key={q}", "payload=direct"),
         "Message published"),
    ]:
        done = admin(server, *args)
        assert done.returncode == 0 and said in done.stdout, (args, done.stdout, done.stderr)
    bindings = json.loads(admin(server, "-f", "raw_json", "list", "bindings").stdout)
    assert {"source": x, "destination": q, "routing_key": "k"}.items() <= \
        next(b for b in bindings if b["source"] == x).items()
    peeked = json.loads(admin(server, "-f", "raw_json", "get", f"queue={q}",
                              "ackmode=ack_requeue_true", "count=5").stdout)
    assert [m["payload"] for m in peeked] == ["via the exchange", "direct"]
    assert [m["routing_key"] for m in peeked] == ["k", q]
    taken = json.loads(admin(server, "-f", "raw_json", "get", f"queue={q}",
                             "ackmode=ack_requeue_false", "count=1").stdout)
    assert taken[0]["payload"] == "via the exchange" and taken[0]["redelivered"] is True
    assert taken[0]["message_count"] == 1
    done = admin(server, "delete", "binding", f"source={x}", f"destination={q}",
                 "destination_type=queue", "properties_key=k")
    assert done.returncode == 0, done.stderr
    assert admin(server, "publish", f"exchange={x}", "routing_key=k",
                 "payload=x").stdout.strip() == "Message published but NOT routed"
    assert admin(server, "purge", "queue", f"name={q}").returncode == 0
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port)) as conn:
        assert conn.channel().queue_declare(q, passive=True).method.message_count == 0
    assert admin(server, "delete", "queue", f"name={q}").returncode == 0
    missing = admin(server, "delete", "queue", f"name={q}")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr


def test_the_management_api_takes_rabbitmqs_conventions(http: httpx.Client) -> None:
    q = f"conv-{uuid.uuid4().hex[:8]}"
    made = http.put(f"/api/queues/%2F/{q}", json={"durable": "true", "auto_delete": "false"})
    assert made.status_code == 201, made.text
    wrong = http.put(f"/api/queues/%2F/{q}-2", json={"durable": "yes"})
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "bad_request" and "durable" in wrong.json()["reason"]
    assert http.get("/api/exchanges/%2F/amq.direct").json()["type"] == "direct"
    assert http.get("/api/exchanges/%2F/amq.default").json()["name"] == "amq.default"
    assert http.get("/api/exchanges/%2F/no-such").status_code == 404
    sent = http.post("/api/exchanges/%2F/amq.default/publish", json={
        "routing_key": q, "payload": "aGk=", "payload_encoding": "base64",
        "properties": {"delivery_mode": 2, "headers": {"h": "v"}, "message_id": "m1"}})
    assert sent.json() == {"routed": True}
    got = http.post(f"/api/queues/%2F/{q}/get", json={"count": "2", "ackmode":
                                                      "reject_requeue_false",
                                                      "encoding": "auto"}).json()
    assert [(m["payload"], m["properties"]["message_id"], m["properties"]["headers"])
            for m in got] == [("hi", "m1", {"h": "v"})]
    assert http.post(f"/api/queues/%2F/{q}/get", json={"count": 1, "ackmode": "maybe"}) \
        .status_code == 400
