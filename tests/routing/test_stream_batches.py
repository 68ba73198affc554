"""Kafka record batches inside a stream queue: read record by record over AMQP, served back
as batches with the right offsets, and what happens around an unreadable entry."""

from __future__ import annotations

import logging

import pytest

from tidings.message import Delivery, Message
from tidings.record_batch import decode_records, encode_batch
from tidings.routing.broker import Broker
from tidings.routing.stream import StreamQueue

STREAM = {"x-queue-type": "stream"}


def _batch(*values: bytes) -> bytes:
    return encode_batch(0, [(1_000 + i, b"key", v, [("h", b"1")]) for i, v in enumerate(values)])


def _stream(broker: Broker, name: str) -> StreamQueue:
    broker.declare_queue("/", name, arguments=STREAM)
    queue = broker.vhosts.get_queue("/", name)
    assert isinstance(queue, StreamQueue)
    return queue


def _served(broker: Broker, name: str) -> list[tuple[int, bytes | None]]:
    out = []
    for batch in broker.read_batches("/", name, 0, 1 << 20):
        out += [(r.offset, r.value) for r in decode_records(batch)[1]]
    return out


def _consumed(broker: Broker, name: str) -> list[tuple[int, bytes]]:
    session = broker.open_session()
    got: list[Delivery] = []
    broker.consume(session, name, got.append, prefetch_count=100,
                   arguments={"x-stream-offset": "first"})
    session.close()
    return [(d.message.headers["x-stream-offset"], d.message.body)  # type: ignore[index]
            for d in got]


async def test_batches_and_records_read_the_same_on_both_faces(broker: Broker) -> None:
    _stream(broker, "s")
    assert broker.append_batch("/", "s", _batch(b"a", b"b", b"c"), 3) == 0
    broker.publish("/", "", Message(b"d", routing_key="s"))
    assert broker.append_batch("/", "s", _batch(b"e"), 1) == 4
    assert _served(broker, "s") == [(0, b"a"), (1, b"b"), (2, b"c"), (3, b"d"), (4, b"e")]
    assert _consumed(broker, "s") == [(0, b"a"), (1, b"b"), (2, b"c"), (3, b"d"), (4, b"e")]


async def test_an_unreadable_record_ends_a_run_so_later_offsets_stay_true(
        broker: Broker) -> None:
    queue = _stream(broker, "s")
    broker.publish("/", "", Message(b"a", routing_key="s"))
    queue.append([b"\x07 not a record"], 0.0)  # offset 1: unreadable
    broker.publish("/", "", Message(b"c", routing_key="s"))
    assert _served(broker, "s") == [(0, b"a"), (2, b"c")]


async def test_an_unreadable_batch_is_skipped_once_and_reading_goes_on(
        broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    queue = _stream(broker, "s")
    broker.publish("/", "", Message(b"a", routing_key="s"))
    queue.append_batch(bytes(8) + b"not a batch", 3, 0.0)  # offsets 1-3
    with caplog.at_level(logging.ERROR, "tidings.broker"):
        assert _consumed(broker, "s") == [(0, b"a")]
        broker.publish("/", "", Message(b"e", routing_key="s"))
        assert _consumed(broker, "s") == [(0, b"a"), (4, b"e")]
    skipped = [r for r in caplog.records if "batch at offsets 1-3 skipped" in r.getMessage()]
    assert len(skipped) == 2  # once per reader, not once per read-ahead
