"""Hostile or unusual input over real sockets: it gets a clear AMQP error, never bricks the data
directory, never grows the server's memory past its bounds, and the server keeps serving."""

from __future__ import annotations

import datetime
import decimal
from pathlib import Path

import pika

from ..serverproc import ServerProcess


def params(server: ServerProcess, **kw: object) -> pika.ConnectionParameters:
    return pika.ConnectionParameters("127.0.0.1", server.port, **kw)  # type: ignore[arg-type]


def test_a_confirmed_message_with_tag_shaped_headers_survives_kill_9(tmp_path: Path) -> None:
    """A timestamp (or decimal) beside a table shaped like the store codec's own tags once made
    every restart fail; now it comes back as it was sent."""
    headers = {"at": datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC),
               "price": decimal.Decimal("9.99"), "t": {"$b": "a"}, "u": [{"$dt": "x"}]}
    server = ServerProcess(tmp_path / "data").start()
    try:
        with pika.BlockingConnection(params(server)) as conn:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare("tagged", durable=True)
            ch.basic_publish("", "tagged", b"payload",
                             pika.BasicProperties(headers=headers, delivery_mode=2))
    finally:
        server.kill()
    server.start()
    try:
        with pika.BlockingConnection(params(server)) as conn:
            method, props, body = conn.channel().basic_get("tagged", auto_ack=True)
            assert method is not None and body == b"payload"
            assert props.headers == headers
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()
