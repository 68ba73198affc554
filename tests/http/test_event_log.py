"""The HTTP event history is a stream on disk: resuming with ``Last-Event-ID`` works across a
restart of the broker, for as long as retention keeps the events; each live stream is
bounded in bytes as well as in events."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tidings.client.transport import EVENTS_EXCHANGE
from tidings.http.event_log import (
    EVENTS_LOG,
    HISTORY_MAX_AGE,
    EventLog,
    LoggedEvent,
    Stream,
)
from tidings.message import Message
from tidings.routing.broker import Broker
from tidings.storage import SqliteStore
from tidings.testing import FakeClock

MB = 2**20


async def collect(log: EventLog, pattern: str, last: str | None, n: int) -> list[LoggedEvent]:
    got: list[LoggedEvent] = []

    async def run() -> None:
        async for item in log.follow(pattern, last):
            if isinstance(item, LoggedEvent):
                got.append(item)
                if len(got) == n:
                    return

    await asyncio.wait_for(run(), 5)
    return got


async def test_resuming_reads_what_was_missed_from_the_log_across_a_restart(
        tmp_path: Path, clock: FakeClock) -> None:
    broker = Broker(SqliteStore(tmp_path / "data"), clock)
    broker.start()
    log = EventLog(broker)
    log.start()
    for i in range(5):
        broker.publish("/", EVENTS_EXCHANGE, Message(f"{i}".encode(), f"orders.{i % 2}"))
    await broker.sync()
    info = broker.describe_queue("/", EVENTS_LOG)
    assert info.queue_type == "stream" and info.arguments["x-max-age"] == HISTORY_MAX_AGE
    log.close()
    broker.close()

    broker = Broker(SqliteStore(tmp_path / "data"), clock)  # a restarted server
    broker.start()
    log = EventLog(broker)
    log.start()
    follower = asyncio.ensure_future(collect(log, "orders.0", "0", 3))
    await asyncio.sleep(0.05)
    broker.publish("/", EVENTS_EXCHANGE, Message(b"5", "orders.1"))
    broker.publish("/", EVENTS_EXCHANGE, Message(b"6", "orders.0"))
    await broker.sync()
    got = await follower
    assert [(e.seq, e.message.body) for e in got] == [(2, b"2"), (4, b"4"), (6, b"6")]
    assert got[0].message.headers is None  # the offset is the id, not a header
    assert log.event_id(got[0]) == "2"
    # an id that is not an offset: live events only
    live = asyncio.ensure_future(collect(log, "#", "not-an-offset", 1))
    await asyncio.sleep(0.05)
    broker.publish("/", EVENTS_EXCHANGE, Message(b"7", "x"))
    await broker.sync()
    assert [e.seq for e in await live] == [7]
    log.close()
    broker.close()


async def test_a_stream_that_falls_behind_in_bytes_is_cut_off() -> None:
    stream = Stream("#", limit=1000, limit_bytes=4 * MB)
    for seq in range(10):
        stream.push(LoggedEvent(seq, "t", Message(b"x" * MB)))
    assert stream.overflowed and stream.queue.qsize() == 4
    taken = await asyncio.wait_for(stream.queue.get(), 1)
    stream.taken(taken)
    assert stream.queued_bytes == 3 * MB


async def test_a_resuming_stream_that_never_reads_pins_a_bounded_number_of_bytes(
        tmp_path: Path, clock: FakeClock) -> None:
    """Three clients resume from the start and stop reading: each holds at most one event
    ahead of the one it is writing (it held 256 events of any size: 39 to 346 MB)."""
    broker = Broker(SqliteStore(tmp_path / "data"), clock)
    broker.start()
    log = EventLog(broker)
    log.start()
    for i in range(100):
        broker.publish("/", EVENTS_EXCHANGE, Message(bytes([i]) * 200_000, "big.event"))
    await broker.sync()
    stalled = [log.missed(-1, 99, "#") for _ in range(3)]
    for reader in stalled:
        first = await anext(reader)
        assert first.seq == 0  # and then the client stops reading
    await asyncio.sleep(0.05)
    # the history consumers (the live fan-out's is at the tail): each was handed at most
    # two records past the one it is writing
    positions = sorted(r.offset for r in broker.stream_statistics("/", EVENTS_LOG).readers
                       if r.live)[:3]
    assert len(positions) == 3 and max(positions) <= 3, positions
    for reader in stalled:
        await reader.aclose()
    log.close()
    broker.close()
