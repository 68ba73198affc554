"""tidings serve's AMQP extensions, driven by pika (any client can use them): browse by a
consumer argument, delete by id and extend through amq.tidings.control; hostile or wrong use
is a channel error with the usual codes, and every operation checks permissions."""

from __future__ import annotations

import uuid

import pika
import pytest

from ..serverproc import ServerProcess
from .test_security_and_flow import params, tidings_cli

CONTROL = "amq.tidings.control"


def _queue(ch: pika.adapters.blocking_connection.BlockingChannel, *bodies: bytes) -> str:
    name = f"ext-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(name)
    for i, body in enumerate(bodies):
        ch.basic_publish("", name, body, pika.BasicProperties(message_id=f"m{i}"))
    return name


def test_browse_delete_and_extend_with_a_plain_client(server: ServerProcess) -> None:
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        q = _queue(ch, b"a", b"b", b"c")
        seen: list[bytes] = []
        for _method, props, body in ch.consume(q, auto_ack=True,
                                               arguments={"x-tidings-browse": 2}):
            if (props.headers or {}).get("x-tidings-browse-end"):
                break
            seen.append(body)
        ch.cancel()
        assert seen == [b"a", b"b"]
        ch.basic_publish(CONTROL, "delete", b"", pika.BasicProperties(
            headers={"x-queue": q, "x-message-id": "m1"}), mandatory=True)
        with pytest.raises(pika.exceptions.UnroutableError):  # nothing waiting by that id
            ch.basic_publish(CONTROL, "delete", b"", pika.BasicProperties(
                headers={"x-queue": q, "x-message-id": "m1"}), mandatory=True)
        method, _, body = ch.basic_get(q)
        assert method is not None and body == b"a" and not method.redelivered
        ch.basic_publish(CONTROL, "extend", b"", pika.BasicProperties(
            headers={"x-delivery-tag": method.delivery_tag}))
        ch.basic_ack(method.delivery_tag)
        method, _, body = ch.basic_get(q, auto_ack=True)
        assert body == b"c"


@pytest.mark.parametrize(("action", "code"), [
    ("unknown operation", 404), ("delete without headers", 406),
    ("extend of an unknown tag", 406), ("browse count not a number", 406),
    ("browse with acks", 406),
])
def test_wrong_use_closes_the_channel_with_a_clear_code(server: ServerProcess, action: str,
                                                        code: int) -> None:
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        q = _queue(ch, b"x")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            if action == "unknown operation":
                ch.basic_publish(CONTROL, "explode", b"")
            elif action == "delete without headers":
                ch.basic_publish(CONTROL, "delete", b"")
            elif action == "extend of an unknown tag":
                ch.basic_publish(CONTROL, "extend", b"",
                                 pika.BasicProperties(headers={"x-delivery-tag": 99}))
            elif action == "browse count not a number":
                ch.basic_consume(q, lambda *a: None, auto_ack=True,
                                 arguments={"x-tidings-browse": "all"})
            else:
                ch.basic_consume(q, lambda *a: None, arguments={"x-tidings-browse": 5})
            ch.queue_declare(q, passive=True)  # a round trip: the close arrives by then
        assert info.value.reply_code == code
        assert conn.channel().queue_declare(q, passive=True).method.message_count == 1


def test_extensions_check_read_permission(server: ServerProcess) -> None:
    data = server.data_dir
    assert tidings_cli(data, "users", "add", "mallory", "secret").returncode == 0
    assert tidings_cli(data, "users", "set-permissions", "mallory", "^mallory-.*",
                       "^mallory-.*|amq.tidings.control", "^mallory-.*").returncode == 0
    with pika.BlockingConnection(params(server)) as conn:
        q = _queue(conn.channel(), b"secret")
    mallory = pika.PlainCredentials("mallory", "secret")
    for attempt in ("browse", "delete"):
        with pika.BlockingConnection(params(server, credentials=mallory)) as conn:
            ch = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                if attempt == "browse":
                    ch.basic_consume(q, lambda *a: None, auto_ack=True,
                                     arguments={"x-tidings-browse": 5})
                else:
                    ch.basic_publish(CONTROL, "delete", b"", pika.BasicProperties(
                        headers={"x-queue": q, "x-message-id": "m0"}))
                ch.queue_declare("mallory-x")
            assert info.value.reply_code == 403
    with pika.BlockingConnection(params(server)) as conn:
        assert conn.channel().queue_declare(q, passive=True).method.message_count == 1
