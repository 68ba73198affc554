"""Delayed messages far in the future stay on disk (bucketed by due time) and still come out
exactly once, in due order, across restarts and cancellations, over both stores."""

from __future__ import annotations

import asyncio
import random

import pytest

from tidings.errors import PreconditionFailedError
from tidings.message import Message
from tidings.routing.broker import Broker
from tidings.routing.delayed import BUCKET_SECONDS
from tidings.storage import MemoryStore
from tidings.testing import FakeClock

from ..conftest import BrokerFactory
from .helpers import drain

HOUR_MS = 3_600_000


def schedule_in_order(broker: Broker, n: int) -> None:
    """n messages due an hour from now, a millisecond apart, bodies "0".."n-1"."""
    for i in range(n):
        broker.publish("/", "", Message(str(i).encode(), "q"), delay_ms=HOUR_MS + i)


async def commit_and_run_timers(broker: Broker) -> None:
    """Let the pending commit land and the callbacks waiting on it run."""
    await broker.sync()
    await asyncio.sleep(0)


def schedule(broker: Broker, n: int, seed: int = 7) -> list[tuple[int, bytes]]:
    """n messages due over the next three hours, in random order; returns (delay, body)."""
    rng = random.Random(seed)
    jobs = [(rng.randrange(1, 3 * HOUR_MS), f"job-{i}".encode()) for i in range(n)]
    for delay, body in jobs:
        broker.publish("/", "", Message(body, "q"), delay_ms=delay)
    return jobs


async def test_far_delays_stay_on_disk_and_come_out_in_due_order(clock: FakeClock) -> None:
    broker = Broker(MemoryStore(), clock)
    broker.start()
    broker.declare_queue("/", "q")
    jobs = schedule(broker, 3000)
    held = len(broker.delayed._heap)
    assert held < 3000 * 3 * BUCKET_SECONDS / 10_800  # about two buckets' worth, not all
    assert len(broker.delayed) == 3000
    assert broker.statistics().queue("q").delayed == 3000
    s = broker.open_session()
    got: list[bytes] = []
    peak = 0
    for _ in range(3 * 60 + 1):  # a minute at a time
        clock.advance(60)
        peak = max(peak, len(broker.delayed._heap))
        got += drain(broker, s, "q")
    assert got == [body for _, body in sorted(jobs, key=lambda j: j[0])]
    assert peak < 200 and len(broker.delayed) == 0
    assert broker.statistics().queue("q").delayed == 0


async def test_far_delays_survive_restart_and_cancel_exactly_once(
    brokers: BrokerFactory, clock: FakeClock
) -> None:
    b = brokers.start()
    b.declare_queue("/", "q")
    jobs = schedule(b, 500)
    # cancel one near and one far job, as client.delete does
    near = min(jobs)[1]
    far = max(jobs)[1]
    await b.sync()  # cold buckets are listed from the store: committed rows only
    for seq, record in b.delayed.entries():
        if record.message.body in (near, far):
            assert b.delays.cancel(seq, record)
    assert len(b.delayed) == 498
    b = await brokers.restart()
    assert len(b.delayed) == 498 and b.statistics().queue("q").delayed == 498
    s = b.open_session()
    got: list[bytes] = []
    for minute in range(3 * 60 + 1):
        clock.advance(60)
        await commit_and_run_timers(b)  # a bucket is read once earlier writes commit
        got += drain(b, s, "q")
        if minute == 90:  # a crash in the middle: nothing twice, nothing lost
            b = await brokers.restart()
            s = b.open_session()
    expected = [body for _, body in sorted(jobs) if body not in (near, far)]
    assert got == expected


async def test_a_bucket_is_read_only_after_its_writes_commit(
    brokers: BrokerFactory, clock: FakeClock
) -> None:
    """Scheduled and then reached before the commit (a clock jump): nothing is skipped."""
    b = brokers.start()
    b.declare_queue("/", "q")
    schedule_in_order(b, 5)
    clock.advance(2 * 3600)  # no await: the writes are still pending on SQLite
    await commit_and_run_timers(b)
    await b.sync()
    assert drain(b, b.open_session(), "q") == [str(i).encode() for i in range(5)]


class BusyStore(MemoryStore):
    """A store that always has writes in flight, and commits when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.commits: list[asyncio.Future[None]] = []

    def backlog(self) -> int:
        return 1

    def sync(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.commits.append(future)
        return future


async def test_a_store_that_is_never_idle_does_not_starve_far_delays(clock: FakeClock) -> None:
    """A bucket waits for the writes made before it was due, not for an idle store."""
    store = BusyStore()
    broker = Broker(store, clock)
    broker.start()
    broker.declare_queue("/", "q")
    schedule_in_order(broker, 3)
    clock.advance(2 * 3600)
    s = broker.open_session()
    assert drain(broker, s, "q") == []  # the bucket's writes are not committed yet
    waiting = [f for f in store.commits if not f.done()]
    assert waiting, "the bucket should wait for a commit"
    for future in waiting:
        future.set_result(None)  # that commit lands; the store stays busy
    await asyncio.sleep(0)
    assert drain(broker, s, "q") == [b"0", b"1", b"2"]


async def test_delayed_rows_of_the_single_key_layout_are_moved_into_buckets(
    brokers: BrokerFactory, clock: FakeClock
) -> None:
    """Data written before buckets existed kept every delayed message under one key."""
    from tidings.codecs import encode_record
    from tidings.message import Record
    from tidings.routing.delayed import STORE_KEY, bucket_key, bucket_of

    b = brokers.start()
    b.declare_queue("/", "q")
    store = brokers.store
    assert store is not None
    due = clock.time() + 7200
    legacy = Record(Message(b"old", "q"), clock.time(), due_at=due,
                    target={"vhost": "/", "queue": "q"})
    store.append(STORE_KEY, 10_000, encode_record(legacy))
    b = await brokers.restart()
    assert len(b.delayed) == 1 and b.statistics().queue("q").delayed == 1
    await b.sync()
    store = brokers.store
    assert store is not None
    assert store.count(STORE_KEY) == 0 and store.count(bucket_key(bucket_of(due))) == 1
    clock.advance(7200)
    await commit_and_run_timers(b)
    assert drain(b, b.open_session(), "q") == [b"old"]


async def test_cancelling_a_far_job_twice_counts_it_once(
    brokers: BrokerFactory, clock: FakeClock
) -> None:
    b = brokers.start()
    b.declare_queue("/", "q")
    schedule_in_order(b, 3)
    await b.sync()
    [(seq, record), *_] = b.delayed.entries()
    assert b.delays.cancel(seq, record)
    assert not b.delays.cancel(seq, record)  # before its removal is committed
    assert [r.message.body for _, r in b.delayed.entries()] == [b"1", b"2"]
    assert len(b.delayed) == 2 and b.statistics().queue("q").delayed == 2
    clock.advance(2 * 3600)
    await commit_and_run_timers(b)
    assert drain(b, b.open_session(), "q") == [b"1", b"2"]


async def test_deleting_a_queue_cancels_its_delayed_messages_for_good(
    brokers: BrokerFactory,
) -> None:
    """They never reappear in a later queue of the same name, across a restart too; with
    if_empty the delete is refused while any are waiting."""
    b = brokers.start()
    b.declare_queue("/", "q")
    b.publish("/", "", Message(b"near", "q"), delay_ms=1000)
    schedule_in_order(b, 3)  # an hour away: on disk, in a cold bucket
    with pytest.raises(PreconditionFailedError):
        b.delete_queue("/", "q", if_empty=True)
    b.delete_queue("/", "q")
    b.declare_queue("/", "q")
    assert b.statistics().queue("q").delayed == 0
    b.publish("/", "", Message(b"new", "q"), delay_ms=2 * HOUR_MS)
    await commit_and_run_timers(b)
    assert [r.message.body for _, r in b.delayed.entries()] == [b"new"]
    b = await brokers.restart()
    assert b.statistics().queue("q").delayed == 1
    s = b.open_session()
    got: list[bytes] = []
    for _ in range(3 * 60):
        brokers.clock.advance(60)
        await commit_and_run_timers(b)
        got += drain(b, s, "q")
    assert got == [b"new"]
    await b.sync()
    assert brokers.store is not None and brokers.store.definitions("delayed-void") == []
