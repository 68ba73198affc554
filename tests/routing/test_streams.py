"""Stream queues in the broker: appends, every start choice, retention by size and age on the
fake clock, credit by acks, recovery after a restart."""

from __future__ import annotations

import asyncio
import datetime
import gc
import os
from pathlib import Path

import pytest

from tidings.codecs import encode_record
from tidings.errors import InvalidArgumentError, PreconditionFailedError, QueueTypeError
from tidings.message import Delivery, Message, Record
from tidings.resources import rss_mb
from tidings.routing.broker import Broker
from tidings.routing.session import Session
from tidings.storage import SqliteStore
from tidings.storage.streams import StreamFiles
from tidings.testing import FakeClock

STREAM = {"x-queue-type": "stream"}


def publish(broker: Broker, queue: str, *bodies: bytes) -> None:
    for body in bodies:
        broker.publish("/", "", Message(body, routing_key=queue))


def read(broker: Broker, queue: str, offset: object = "first", *,
         prefetch: int = 5) -> list[tuple[bytes, int]]:
    """Everything a new consumer starting at ``offset`` gets, acking as it goes."""
    session = broker.open_session()
    got: list[Delivery] = []
    broker.consume(session, queue, got.append, prefetch_count=prefetch,
                   arguments={"x-stream-offset": offset})
    acked = 0
    while acked < len(got):  # each ack gives credit for the next
        session.ack(got[acked].delivery_tag)
        acked += 1
    session.close()
    return [(d.message.body, d.message.headers["x-stream-offset"]) for d in got]  # type: ignore[index]


async def test_every_start_choice(broker: Broker, clock: FakeClock) -> None:
    broker.declare_queue("/", "s", arguments=STREAM)
    publish(broker, "s", b"a", b"b")
    clock.advance(3600)
    publish(broker, "s", b"c", b"d", b"e", b"f", b"g")
    every = [(b, i) for i, b in enumerate([b"a", b"b", b"c", b"d", b"e", b"f", b"g"])]
    assert read(broker, "s", "first") == every
    assert read(broker, "s", "first", prefetch=1) == every
    assert read(broker, "s", "last") == every[-1:]
    assert read(broker, "s", "next") == []
    assert read(broker, "s", 3) == every[3:]
    assert read(broker, "s", 99) == []
    assert read(broker, "s", -5) == every
    assert read(broker, "s", "30m") == every[2:]  # the fake clock's last half hour
    assert read(broker, "s", "2h") == every
    at = datetime.datetime.fromtimestamp(clock.time() - 60, datetime.UTC)
    assert read(broker, "s", at) == every[2:]
    with pytest.raises(PreconditionFailedError, match="x-stream-offset"):
        read(broker, "s", "yesterday")
    assert broker.describe_queue("/", "s").ready == 7  # declare-ok counts the records


async def test_a_consumer_holds_no_more_than_its_prefetch_and_acks_give_credit(
        broker: Broker) -> None:
    broker.declare_queue("/", "s", arguments=STREAM)
    publish(broker, "s", *[str(i).encode() for i in range(10)])
    session = broker.open_session()
    got: list[Delivery] = []
    broker.consume(session, "s", got.append, prefetch_count=3,
                   arguments={"x-stream-offset": "first"})
    assert [d.message.body for d in got] == [b"0", b"1", b"2"]
    session.nack(got[0].delivery_tag, requeue=True)  # credit too; nothing comes back
    assert [d.message.body for d in got] == [b"0", b"1", b"2", b"3"]
    session.ack(got[3].delivery_tag, multiple=True)
    assert [d.message.body for d in got][4:] == [b"4", b"5", b"6"]
    publish(broker, "s", b"10")
    assert len(got) == 7
    assert read(broker, "s", "first")[0] == (b"0", 0)  # reading took nothing away


async def test_stream_refusals(broker: Broker) -> None:
    broker.declare_queue("/", "s", arguments=STREAM)
    session = broker.open_session()
    with pytest.raises(PreconditionFailedError, match="prefetch"):
        broker.consume(session, "s", lambda d: None)
    with pytest.raises(QueueTypeError, match="automatic acknowledgement"):
        broker.consume(session, "s", lambda d: None, prefetch_count=5, no_ack=True)
    assert not session.consumers
    with pytest.raises(QueueTypeError, match=r"basic\.get"):
        broker.get(session, "s")
    with pytest.raises(QueueTypeError, match="purge"):
        broker.purge_queue("/", "s")
    with pytest.raises(PreconditionFailedError, match="non-durable"):
        broker.declare_queue("/", "t", durable=False, arguments=STREAM)
    with pytest.raises(Exception, match="x-max-length'"):
        broker.declare_queue("/", "t", arguments={**STREAM, "x-max-length": 5})


async def test_a_stream_keeps_a_bounded_number_of_named_readers(
        broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    from tidings.routing import stream

    monkeypatch.setattr(stream, "MAX_NAMED_READERS", 3)
    broker.declare_queue("/", "s", arguments=STREAM)
    publish(broker, "s", b"a", b"b")
    for name in ("one", "two", "three"):
        broker.commit_offset("/", "s", name, 0)
    with pytest.raises(PreconditionFailedError, match="has 3 named readers"):
        broker.commit_offset("/", "s", "four", 0)
    broker.commit_offset("/", "s", "one", 1)  # a known name moves on
    broker.forget_reader("/", "s", "two")
    broker.commit_offset("/", "s", "four", -1)  # room again; -1: nothing read yet
    assert broker.find_reader("/", "s", "four") == (-1, "")
    assert broker.find_reader("/", "s", "one") == (1, "")


async def test_retention_by_size_drops_whole_oldest_segments(broker: Broker) -> None:
    broker.declare_queue("/", "s", arguments={
        **STREAM, "x-stream-max-segment-size-bytes": 2000, "x-max-length-bytes": 5000})
    publish(broker, "s", *[b"x" * 100 for _ in range(200)])
    queue = broker.get_queue("/", "s")
    log = queue.log  # type: ignore[attr-defined]
    assert log.size_bytes <= 5000 + 2000  # at most one segment over, the active one
    assert log.first_offset > 0 and log.next_offset == 200
    got = read(broker, "s", "first", prefetch=100)
    assert [o for _, o in got] == list(range(log.first_offset, 200))
    assert read(broker, "s", 0, prefetch=100) == got  # gone offsets start at the first kept


async def test_retention_by_age_on_the_fake_clock(broker: Broker, clock: FakeClock) -> None:
    broker.declare_queue("/", "s", arguments={
        **STREAM, "x-stream-max-segment-size-bytes": 1000, "x-max-age": "1h"})
    publish(broker, "s", *[b"o" * 100 for _ in range(30)])  # old: several segments
    clock.advance(1800)
    publish(broker, "s", *[b"n" * 100 for _ in range(30)])
    broker.upkeep.run(clock.time())
    assert read(broker, "s", "first", prefetch=100)[0][1] == 0  # nothing is an hour old yet
    clock.advance(1900)  # the old ones are 62 minutes old, the new ones 32
    broker.upkeep.run(clock.time())
    kept = read(broker, "s", "first", prefetch=100)
    assert kept[0][1] > 0 and [o for _, o in kept] == list(range(kept[0][1], 60))
    assert [b for b, _ in kept[-30:]] == [b"n" * 100] * 30  # every young one is kept
    assert 0 < 60 - len(kept) <= 30  # whole old segments went, never a young one


async def test_a_stream_survives_a_restart_with_its_offsets(tmp_path: Path,
                                                            clock: FakeClock) -> None:
    broker = Broker(SqliteStore(tmp_path / "data"), clock)
    broker.start()
    broker.declare_queue("/", "s", arguments=STREAM)
    publish(broker, "s", b"a", b"b", b"c")
    await broker.sync()
    broker.close()
    broker = Broker(SqliteStore(tmp_path / "data"), clock)
    broker.start()
    publish(broker, "s", b"d")
    await broker.sync()
    assert read(broker, "s", "first") == [(b"a", 0), (b"b", 1), (b"c", 2), (b"d", 3)]
    broker.delete_queue("/", "s")
    assert not list((tmp_path / "data" / "streams").iterdir())
    broker.close()


async def test_readers_see_only_durable_records(tmp_path: Path, clock: FakeClock) -> None:
    broker = Broker(SqliteStore(tmp_path / "data"), clock)
    broker.start()
    broker.declare_queue("/", "s", arguments=STREAM)
    session: Session = broker.open_session()
    got: list[Delivery] = []
    broker.consume(session, "s", got.append, prefetch_count=10,
                   arguments={"x-stream-offset": "first"})
    publish(broker, "s", b"a")
    assert got == []  # written, not yet durable
    await broker.sync()
    assert [d.message.body for d in got] == [b"a"]
    broker.close()


async def test_named_readers_offsets_survive_a_restart_and_show_their_lag(
        tmp_path: Path, clock: FakeClock) -> None:
    broker = Broker(SqliteStore(tmp_path / "data"), clock)
    broker.start()
    broker.declare_queue("/", "s", arguments={**STREAM, "x-max-age": "7D"})
    publish(broker, "s", *[f"{i}".encode() for i in range(10)])
    await broker.sync()
    broker.commit_offset("/", "s", "billing", 3)
    for past_the_end in (10, 10**9):  # it would make the reader skip records to come
        with pytest.raises(InvalidArgumentError, match="past the end of stream 's'"):
            broker.commit_offset("/", "s", "billing", past_the_end)
    clock.advance(5)
    await broker.sync()
    broker.close()
    broker = Broker(SqliteStore(tmp_path / "data"), clock)
    broker.start()
    assert broker.find_reader("/", "s", "billing") == (3, "")
    assert broker.find_reader("/", "s", "audit") is None
    stats = broker.statistics().stream("s")
    assert (stats.records, stats.first_offset, stats.last_offset) == (10, 0, 9)
    assert stats.max_age_s == 7 * 86400 and stats.bytes > 0 and stats.segments == 1
    (billing,) = stats.readers
    assert (billing.name, billing.offset, billing.lag, billing.live) == ("billing", 4, 6, False)
    assert billing.lag_s == pytest.approx(5.0)
    with pytest.raises(PreconditionFailedError, match="not a stream"):
        broker.declare_queue("/", "plain")
        broker.commit_offset("/", "plain", "billing", 1)
    broker.delete_queue("/", "s")
    broker.declare_queue("/", "s", arguments=STREAM)
    assert broker.find_reader("/", "s", "billing") is None  # a new stream, new readers
    broker.close()


async def test_a_consumer_with_a_filter_gets_only_matching_records(broker: Broker) -> None:
    broker.declare_queue("/", "s", arguments=STREAM)
    for i, region in enumerate(["eu", "us", None, "eu", "apac"]):
        headers = {"x-stream-filter-value": region} if region else None
        broker.publish("/", "", Message(f"{i}".encode(), routing_key="s", headers=headers))

    def bodies(arguments: dict[str, object]) -> list[bytes]:
        session = broker.open_session()
        got: list[Delivery] = []
        broker.consume(session, "s", got.append, prefetch_count=10,
                       arguments={"x-stream-offset": "first", **arguments})
        session.close()
        return [d.message.body for d in got]

    assert bodies({"x-stream-filter": "eu"}) == [b"0", b"3"]
    assert bodies({"x-stream-filter": ["eu", "apac"]}) == [b"0", b"3", b"4"]
    assert bodies({"x-stream-filter": "us", "x-stream-match-unfiltered": True}) == [b"1", b"2"]
    assert bodies({}) == [b"0", b"1", b"2", b"3", b"4"]
    with pytest.raises(PreconditionFailedError, match="x-stream-filter"):
        bodies({"x-stream-filter": 5})


async def test_segments_of_a_stream_no_longer_defined_are_deleted_at_start(
        tmp_path: Path, clock: FakeClock) -> None:
    broker = Broker(SqliteStore(tmp_path / "data"), clock)
    broker.declare_queue("/", "kept", arguments=STREAM)
    publish(broker, "kept", b"a")
    broker.close()
    orphan = StreamFiles(tmp_path / "data" / "streams")
    orphan.append("/\x1fgone", [b"x"], 0)  # files whose definition a crash took away
    orphan.close()
    broker = Broker(SqliteStore(tmp_path / "data"), clock)
    assert broker.streams().names() == ["/\x1fkept"]
    assert read(broker, "kept") == [(b"a", 0)]
    broker.close()


async def test_reading_a_stream_far_larger_than_the_read_ahead_keeps_memory_flat(
        tmp_path: Path, clock: FakeClock) -> None:
    broker = Broker(SqliteStore(tmp_path / "data"), clock)
    broker.declare_queue("/", "big", arguments={
        **STREAM, "x-stream-max-segment-size-bytes": 8 * 2**20})
    record = b"r" * 4096
    for _ in range(16_384):  # 64 MB of records, 64 times the read-ahead
        broker.publish("/", "", Message(record, routing_key="big"))
    await broker.sync()
    gc.collect()
    before = rss_mb(os.getpid())
    session = broker.open_session()
    seen = peak = 0
    got: list[Delivery] = []
    broker.consume(session, "big", got.append, prefetch_count=200,
                   arguments={"x-stream-offset": "first"})
    while got:
        batch, got[:] = list(got), []
        seen += len(batch)
        session.ack(batch[-1].delivery_tag, multiple=True)  # credit: the next ones come
        if seen % 2048 < 200:
            peak = max(peak, rss_mb(os.getpid()))
    assert seen == 16_384
    assert peak - before < 32, f"RSS grew {peak - before:.0f} MB while reading 64 MB"
    broker.close()


async def test_offsets_and_names_sent_as_byte_strings_are_read_as_text(broker: Broker) -> None:
    """pika sends Python bytes as an AMQP byte array: 'first' arrives as a bytearray."""
    broker.declare_queue("/", "s", arguments={**STREAM, "x-max-age": bytearray(b"1D")})
    publish(broker, "s", b"a", b"b")
    assert read(broker, "s", bytearray(b"first")) == [(b"a", 0), (b"b", 1)]
    assert read(broker, "s", bytearray(b"1h")) == [(b"a", 0), (b"b", 1)]


async def test_a_filter_that_matches_little_reads_on_later_loop_turns(broker: Broker) -> None:
    """One dispatch reads a bounded number of read-aheads; a consumer whose filter skips a
    long run of records gets to its match over later loop turns, never blocking the loop."""
    broker.declare_queue("/", "s", arguments=STREAM)
    queue = broker.get_queue("/", "s")
    queue.append([encode_record(Record(Message(b"x"), 0.0))] * 20_000, 0.0)  # type: ignore[attr-defined]
    broker.publish("/", "", Message(b"hit", routing_key="s",
                                    headers={"x-stream-filter-value": "eu"}))
    session = broker.open_session()
    got: list[Delivery] = []
    broker.consume(session, "s", got.append, prefetch_count=10,
                   arguments={"x-stream-offset": "first", "x-stream-filter": "eu"})
    assert got == []  # 20,001 records are more than one dispatch reads
    for _ in range(20):
        await asyncio.sleep(0)
        if got:
            break
    assert [d.message.body for d in got] == [b"hit"]
    assert got[0].message.headers["x-stream-offset"] == 20_000  # type: ignore[index]
