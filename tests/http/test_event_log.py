"""The HTTP event history and each live stream are bounded in bytes as well as in events."""

from __future__ import annotations

import asyncio

from tidings.client.transport import EVENTS_EXCHANGE
from tidings.http.event_log import DEFAULT_RETAIN_BYTES, EventLog, LoggedEvent, Stream
from tidings.message import Message
from tidings.routing.broker import Broker

MB = 2**20


def test_large_events_with_no_reader_keep_the_history_within_its_byte_budget(
    broker: Broker,
) -> None:
    log = EventLog(broker)
    log.start()
    for i in range(200):  # 200 MB published, nobody reading
        broker.publish("/", EVENTS_EXCHANGE, Message(bytes([i % 256]) * MB, f"big.{i}"))
    assert log.retained_bytes <= DEFAULT_RETAIN_BYTES
    assert sum(len(e.message.body) for e in log.events) == log.retained_bytes
    assert log.events[-1].topic == "big.199"  # the newest are the ones kept
    assert len(log.events) == DEFAULT_RETAIN_BYTES // MB
    broker.publish("/", EVENTS_EXCHANGE, Message(b"x" * (DEFAULT_RETAIN_BYTES + 1), "huge"))
    assert [e.topic for e in log.events] == ["huge"]  # one event is always kept


async def test_a_stream_that_falls_behind_in_bytes_is_cut_off() -> None:
    stream = Stream("#", limit=1000, limit_bytes=4 * MB)
    for seq in range(10):
        stream.push(LoggedEvent(seq, "t", Message(b"x" * MB)))
    assert stream.overflowed and stream.queue.qsize() == 4
    taken = await asyncio.wait_for(stream.queue.get(), 1)
    stream.taken(taken)
    assert stream.queued_bytes == 3 * MB
