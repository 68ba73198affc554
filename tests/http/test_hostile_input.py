"""Input that one face could accept but another could not deliver is refused at the edge.

A lone surrogate (``"\\ud800"`` in JSON) is valid JSON but not UTF-8: accepted in a header, it
made every AMQP consumer of the queue close its connection with 541 and hid the innocent
messages behind it. Deep JSON was a 500 that reset the keep-alive connection. Definitions
with wrong types were a 500, and definitions for unknown vhosts created them.
"""

from __future__ import annotations

import httpx
import pika
import pytest

from ..serverproc import ServerProcess

JSON = {"content-type": "application/json"}
SURROGATE = b'"\\ud800"'


def _post(http: httpx.Client, method: str, path: str, raw: bytes) -> httpx.Response:
    return http.request(method, path, content=raw, headers=JSON)


def test_a_header_with_a_lone_surrogate_is_refused_and_the_queue_keeps_delivering(
        http: httpx.Client, server: ServerProcess) -> None:
    assert http.put("/api/queues/%2F/hostile-h").status_code in (200, 201)
    refused = _post(http, "POST", "/api/queues/%2F/hostile-h/messages",
                    b'{"json": 1, "headers": {"a": ' + SURROGATE + b'}}')
    assert refused.status_code == 400
    assert refused.json()["error"] == "bad_request"
    assert "headers.a" in refused.json()["message"] and "surrogate" in refused.json()["message"]
    assert http.post("/api/queues/%2F/hostile-h/messages",
                     json={"json": 2, "headers": {"a": "fine"}}).status_code == 201
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
    try:
        method, properties, body = connection.channel().basic_get("hostile-h", auto_ack=True)
        assert method is not None and body == b"2" and properties.headers == {"a": "fine"}
    finally:
        connection.close()
    got = http.post("/api/queues/%2F/hostile-h/receive", json={"max": 5}).json()
    assert got["messages"] == []


@pytest.mark.parametrize(("method", "path", "raw"), [
    ("POST", "/api/queues/%2F/hostile-s/messages", b'{"body": ' + SURROGATE + b'}'),
    ("POST", "/api/queues/%2F/hostile-s/messages",
     b'{"body": "x", "message_id": ' + SURROGATE + b'}'),
    ("POST", "/api/queues/%2F/hostile-s/messages", b'{"json": {' + SURROGATE + b': 1}}'),
    ("PUT", "/api/queues/%2F/hostile-s2", b'{"arguments": {"x-a": ' + SURROGATE + b'}}'),
    ("PUT", "/api/exchanges/%2F/hostile-x", b'{"type": ' + SURROGATE + b'}'),
    ("POST", "/api/bindings/%2F",
     b'{"source": "amq.topic", "destination": "hostile-s", "routing_key": ' + SURROGATE + b'}'),
    ("POST", "/event", b'{"type": ' + SURROGATE + b', "data": 1}'),
    ("POST", "/events/a.b", b'{"x": ' + SURROGATE + b'}'),
])
def test_lone_surrogates_anywhere_are_a_400_with_a_json_error(
        http: httpx.Client, method: str, path: str, raw: bytes) -> None:
    assert http.put("/api/queues/%2F/hostile-s").status_code in (200, 201)
    response = _post(http, method, path, raw)
    assert response.status_code == 400, response.text
    assert "surrogate" in response.json()["message"]
    assert http.get("/api/overview").status_code == 200  # the connection still serves


@pytest.mark.parametrize(("path", "method", "wrap"), [
    ("/events/deep.one", "POST", lambda deep: deep),
    ("/api/queues/%2F/hostile-deep", "PUT", lambda deep: b'{"arguments": {"x": ' + deep + b"}}"),
    ("/event", "POST", lambda deep: b'{"type": "a.b", "data": ' + deep + b"}"),
])
@pytest.mark.parametrize("levels", [100, 5000])
def test_deep_json_is_a_400_and_the_connection_goes_on(
        http: httpx.Client, path: str, method: str, wrap: object, levels: int) -> None:
    deep = b"[" * levels + b"]" * levels
    response = _post(http, method, path, wrap(deep))  # type: ignore[operator]
    assert response.status_code == 400, response.text
    assert "nested" in response.json()["message"]
    assert http.get("/api/overview").status_code == 200


@pytest.mark.parametrize(("definitions", "named"), [
    ({"queues": [{"name": 5}]}, "queues[0].name"),
    ({"queues": [{"name": "q", "durable": "yes"}]}, "queues[0].durable"),
    ({"exchanges": [{"name": "e", "type": 3}]}, "exchanges[0].type"),
    ({"bindings": [{"source": "amq.topic"}]}, "destination"),
    ({"vhosts": [{"name": ["a"]}]}, "vhosts[0].name"),
    ({"queues": "all"}, "queues"),
])
def test_definitions_of_the_wrong_shape_are_a_400_naming_the_field(
        http: httpx.Client, definitions: dict[str, object], named: str) -> None:
    response = http.post("/api/definitions", json=definitions)
    assert response.status_code == 400, response.text
    assert named in response.json()["message"]


def test_definitions_for_a_vhost_that_does_not_exist_are_refused_not_created(
        http: httpx.Client) -> None:
    response = http.post("/api/definitions",
                         json={"queues": [{"name": "ghost-q", "vhost": "ghost"}]})
    assert response.status_code == 400
    assert "'ghost'" in response.json()["message"]
    assert "ghost" not in [v["name"] for v in http.get("/api/vhosts").json()]
    listed = http.post("/api/definitions", json={
        "vhosts": [{"name": "listed"}], "queues": [{"name": "q", "vhost": "listed"}]})
    assert listed.status_code == 200, listed.text
    assert listed.json()["imported"]["queues"] == 1


def test_json_bodies_another_face_accepted_are_delivered_over_http(
        http: httpx.Client, server: ServerProcess) -> None:
    """AMQP takes any bytes: a JSON body with a lone-surrogate escape or nested past the
    parser's recursion is valid to it. HTTP delivers such bodies as text instead of failing
    with a 500 that leased them and hid every message behind."""
    queue = "hostile-amqp"
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
    try:
        ch = connection.channel()
        ch.queue_declare(queue)
        json_type = pika.BasicProperties(content_type="application/json")
        for body in (b'{"a": "\\ud800"}', b"[" * 5000 + b"]" * 5000, b'{"fine": 1}'):
            ch.basic_publish("", queue, body, json_type)
        ch.queue_declare(queue, passive=True)
    finally:
        connection.close()
    got = http.post(f"/api/queues/%2F/{queue}/receive", json={"max": 3})
    assert got.status_code == 200, got.text
    messages = got.json()["messages"]
    assert messages[0]["body"] == '{"a": "\\ud800"}'
    assert messages[1]["body"].startswith("[[[") and messages[2]["json"] == {"fine": 1}
