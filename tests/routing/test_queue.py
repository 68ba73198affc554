"""Queue semantics on a fake clock: acks, requeue order, TTL, dead letters, priorities,
delays, delivery limits, overflow, consumers, timeouts and paging."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tidings.errors import (
    AccessRefusedError,
    InvalidArgumentError,
    PreconditionFailedError,
    ResourceLockedError,
)
from tidings.message import Message
from tidings.routing.broker import Broker
from tidings.routing.session import Delivery
from tidings.storage import MemoryStore, SqliteStore
from tidings.testing import FakeClock

from .helpers import bodies, drain, pub


def consume(broker: Broker, queue: str, prefetch: int = 0, session=None):  # type: ignore[no-untyped-def]
    session = session or broker.open_session()
    got: list[Delivery] = []
    consumer = broker.consume(session, queue, got.append, prefetch_count=prefetch)
    return session, got, consumer


async def test_requeued_message_goes_back_to_its_place_marked_redelivered(broker: Broker) -> None:
    broker.declare_queue("/", "q")
    for body in "abc":
        pub(broker, "", "q", body)
    s = broker.open_session()
    a = broker.get(s, "q")
    b = broker.get(s, "q")
    assert a and b and not a.redelivered
    s.nack(b.delivery_tag, requeue=True)
    s.reject(a.delivery_tag, requeue=True)
    again = [broker.get(s, "q") for _ in range(3)]
    assert [d.message.body for d in again if d] == [b"a", b"b", b"c"]
    assert [d.redelivered for d in again if d] == [True, True, False]
    assert [d.delivery_count for d in again if d] == [1, 1, 0]


async def test_session_close_requeues_unacked_in_order(broker: Broker) -> None:
    broker.declare_queue("/", "q")
    for i in range(5):
        pub(broker, "", "q", str(i))
    s, got, _ = consume(broker, "q", prefetch=3)
    assert bodies(got) == [b"0", b"1", b"2"]
    s.ack(got[1].delivery_tag)
    s.close()
    assert drain(broker, broker.open_session(), "q") == [b"0", b"2", b"3", b"4"]


async def test_ack_multiple_and_unknown_tag(broker: Broker) -> None:
    broker.declare_queue("/", "q")
    for i in range(4):
        pub(broker, "", "q", str(i))
    s, got, _ = consume(broker, "q", prefetch=10)
    s.ack(got[2].delivery_tag, multiple=True)
    assert list(s.unacked) == [got[3].delivery_tag]
    with pytest.raises(PreconditionFailedError, match="unknown delivery tag 1"):
        s.ack(1)
    stats = broker.statistics().queue("q")
    assert stats.unacked == 1 and stats.counts["acked"] == 3


async def test_prefetch_bounds_outstanding_and_dispatch_is_round_robin(broker: Broker) -> None:
    broker.declare_queue("/", "q")
    s1, got1, _ = consume(broker, "q", prefetch=2)
    _, got2, _ = consume(broker, "q", prefetch=2)
    for i in range(6):
        pub(broker, "", "q", str(i))
    assert bodies(got1) == [b"0", b"2"] and bodies(got2) == [b"1", b"3"]
    assert broker.statistics().queue("q").ready == 2
    s1.ack(got1[0].delivery_tag)
    assert bodies(got1) == [b"0", b"2", b"4"]


async def test_single_active_consumer_gets_everything_until_it_leaves(broker: Broker) -> None:
    broker.declare_queue("/", "q", arguments={"x-single-active-consumer": True})
    s1, got1, c1 = consume(broker, "q")
    _, got2, _ = consume(broker, "q")
    for i in range(3):
        pub(broker, "", "q", str(i))
    assert len(got1) == 3 and got2 == []
    broker.cancel(s1, c1.tag)
    s1.close()
    assert len(got2) == 3


async def test_partitions_spread_their_active_consumers_and_hand_over_when_settled(
        broker: Broker) -> None:
    """Partition I's active consumer is the (I mod n)-th; when a newcomer becomes it, the one
    before keeps what it holds and the newcomer gets messages only once those are settled."""
    sac = {"x-single-active-consumer": True}
    for i in range(2):
        broker.declare_queue("/", f"p{i}", arguments={**sac, "x-tidings-partition": i})
    s1, got1 = broker.open_session(), []
    c1 = [broker.consume(s1, f"p{i}", got1.append) for i in range(2)]
    pub(broker, "", "p1", "a")
    assert bodies(got1) == [b"a"]  # alone: it has both partitions
    s2, got2 = broker.open_session(), []
    for i in range(2):
        broker.consume(s2, f"p{i}", got2.append)
    pub(broker, "", "p0", "b")
    pub(broker, "", "p1", "c")
    assert bodies(got1) == [b"a", b"b"] and got2 == []  # p1 waits: "a" is still held
    s1.ack(got1[0].delivery_tag)
    assert bodies(got2) == [b"c"]  # settled: p1 is the newcomer's now
    broker.cancel(s1, c1[0].tag)
    pub(broker, "", "p0", "d")
    assert bodies(got2) == [b"c"]  # the first left p0 but still holds "b"
    s1.ack(got1[1].delivery_tag)
    assert bodies(got2) == [b"c", b"d"]  # settled: the one left takes p0
    with pytest.raises(InvalidArgumentError, match="x-tidings-partition"):
        broker.declare_queue("/", "p9", arguments={"x-tidings-partition": 1})


async def test_queue_ttl_dead_letters_with_x_death(broker: Broker, clock: FakeClock) -> None:
    broker.declare_queue("/", "dead")
    broker.declare_queue("/", "q", arguments={
        "x-message-ttl": 1000, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead",
    })
    pub(broker, "", "q", "old")
    clock.advance(0.5)
    pub(broker, "", "q", "new", expiration="100")
    clock.advance(0.2)  # "new" is not at the head: RabbitMQ expires at the head only
    assert broker.statistics().queue("q").ready == 2
    clock.advance(0.4)
    s = broker.open_session()
    dead = broker.get(s, "dead")
    assert dead is not None and dead.message.body == b"old"
    death = dead.message.headers["x-death"][0]  # type: ignore[index]
    assert death["reason"] == "expired" and death["queue"] == "q" and death["count"] == 1
    assert dead.message.headers["x-first-death-reason"] == "expired"  # type: ignore[index]
    nxt = broker.get(s, "dead")
    assert nxt is not None and nxt.message.body == b"new"
    assert nxt.message.expiration is None
    assert nxt.message.headers["x-death"][0]["original-expiration"] == "100"  # type: ignore[index]
    assert broker.statistics().queue("q").counts["expired"] == 2


async def test_reject_dead_letters_and_counts_deaths(broker: Broker) -> None:
    broker.declare_exchange("/", "dlx", "fanout")
    broker.declare_queue("/", "dead")
    broker.bind("/", "dlx", "dead")
    broker.declare_queue("/", "work", arguments={"x-dead-letter-exchange": "dlx"})
    pub(broker, "", "work", "job")
    s = broker.open_session()
    for _ in range(2):
        d = broker.get(s, "work")
        assert d is not None
        s.reject(d.delivery_tag, requeue=False)
        back = broker.get(s, "dead")
        assert back is not None
        s.ack(back.delivery_tag)
        broker.publish("/", "", Message(back.message.body, "work", headers=back.message.headers))
    d = broker.get(s, "work")
    assert d is not None
    assert d.message.headers["x-death"][0]["count"] == 2  # type: ignore[index]


async def test_delivery_limit_dead_letters_poison_message(broker: Broker) -> None:
    broker.declare_queue("/", "q.dead")
    broker.declare_queue("/", "q", arguments={
        "x-delivery-limit": 2, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "q.dead",
    })
    pub(broker, "", "q", "poison")
    s = broker.open_session()
    deliveries = 0
    while (d := broker.get(s, "q")) is not None:
        deliveries += 1
        s.nack(d.delivery_tag, requeue=True)
    assert deliveries == 3  # the first delivery plus two allowed failures
    dead = broker.get(s, "q.dead")
    assert dead is not None
    assert dead.message.headers["x-death"][0]["reason"] == "delivery_limit"  # type: ignore[index]


async def test_priorities_deliver_highest_first_fifo_within(broker: Broker) -> None:
    broker.declare_queue("/", "p", arguments={"x-max-priority": 5})
    for body, priority in [("l1", 1), ("h1", 9), ("m1", 3), ("h2", 5), ("n", None), ("m2", 3)]:
        pub(broker, "", "p", body, priority=priority)
    assert drain(broker, broker.open_session(), "p") == [b"h1", b"h2", b"m1", b"m2", b"l1", b"n"]


async def test_delayed_exchange_delivers_when_due_in_due_order(
    broker: Broker, clock: FakeClock
) -> None:
    broker.declare_queue("/", "q")
    broker.declare_exchange("/", "later", "x-delayed-message",
                            arguments={"x-delayed-type": "direct"})
    broker.bind("/", "later", "q", "k")
    pub(broker, "later", "k", "b", headers={"x-delay": 2000})
    pub(broker, "later", "k", "a", headers={"x-delay": 1000})
    pub(broker, "later", "k", "now")
    s = broker.open_session()
    assert drain(broker, s, "q") == [b"now"]
    clock.advance(0.999)
    assert drain(broker, s, "q") == []
    clock.advance(0.002)
    assert drain(broker, s, "q") == [b"a"]
    clock.advance(1.0)
    assert drain(broker, s, "q") == [b"b"]
    clock.advance(10)
    assert drain(broker, s, "q") == []


async def test_nack_with_delay_requeues_later(broker: Broker, clock: FakeClock) -> None:
    broker.declare_queue("/", "q")
    pub(broker, "", "q", "retry me")
    s = broker.open_session()
    d = broker.get(s, "q")
    assert d is not None
    s.nack(d.delivery_tag, requeue=True, delay_ms=500)
    assert broker.get(s, "q") is None
    assert broker.statistics().queue("q").delayed == 1
    clock.advance(0.5)
    again = broker.get(s, "q")
    assert again is not None and again.redelivered and again.delivery_count == 1


@pytest.mark.parametrize(("overflow", "kept", "refused", "dead"), [
    ("drop-head", [b"2", b"3"], False, [b"1"]),
    ("reject-publish", [b"1", b"2"], True, []),
    ("reject-publish-dlx", [b"1", b"2"], True, [b"3"]),
])
async def test_max_length_overflow_modes(
    broker: Broker, overflow: str, kept: list[bytes], refused: bool, dead: list[bytes]
) -> None:
    broker.declare_queue("/", "dead")
    broker.declare_queue("/", "q", arguments={
        "x-max-length": 2, "x-overflow": overflow,
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead",
    })
    results = [pub(broker, "", "q", str(i)) for i in (1, 2, 3)]
    assert [r.refused for r in results] == [False, False, refused]
    s = broker.open_session()
    assert drain(broker, s, "q") == kept
    assert drain(broker, s, "dead") == dead


async def test_max_length_bytes(broker: Broker) -> None:
    broker.declare_queue("/", "q", arguments={"x-max-length-bytes": 10})
    for body in ("aaaa", "bbbb", "cccc"):
        pub(broker, "", "q", body)
    assert drain(broker, broker.open_session(), "q") == [b"bbbb", b"cccc"]


async def test_bad_queue_arguments_are_refused_naming_the_argument(broker: Broker) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid arg 'x-max-length' for queue 'q'"):
        broker.declare_queue("/", "q", arguments={"x-max-length": -1})
    with pytest.raises(InvalidArgumentError, match="x-overflow"):
        broker.declare_queue("/", "q", arguments={"x-overflow": "explode"})
    broker.declare_queue("/", "q", arguments={"x-max-length": 5})
    with pytest.raises(PreconditionFailedError, match="inequivalent arg 'x-max-length'"):
        broker.declare_queue("/", "q", arguments={"x-max-length": 6})
    with pytest.raises(PreconditionFailedError,
                       match="invalid property 'non-durable' for queue 'qq'"):
        broker.declare_queue("/", "qq", durable=False, arguments={"x-queue-type": "quorum"})


async def test_exclusive_auto_delete_and_server_named_queues(broker: Broker) -> None:
    q = broker.declare_queue("/", "", exclusive=True, connection_id="c1")
    assert q.name.startswith("amq.gen-")
    other = broker.open_session(connection_id="c2")
    with pytest.raises(ResourceLockedError, match="exclusive access to locked queue"):
        broker.get(other, q.name)
    broker.close_connection("c1")
    assert broker.find_queue("/", q.name) is None
    broker.declare_queue("/", "ad", auto_delete=True)
    s, _, c = consume(broker, "ad")
    broker.cancel(s, c.tag)
    assert broker.find_queue("/", "ad") is None


async def test_exclusive_consumer_refuses_others(broker: Broker) -> None:
    broker.declare_queue("/", "q")
    s = broker.open_session()
    broker.consume(s, "q", lambda d: None, exclusive=True)
    with pytest.raises(AccessRefusedError, match="in exclusive use"):
        broker.consume(broker.open_session(), "q", lambda d: None)


async def test_queue_expires_when_unused(broker: Broker, clock: FakeClock) -> None:
    broker.declare_queue("/", "tmp", arguments={"x-expires": 2000})
    clock.advance(1.5)
    assert broker.find_queue("/", "tmp") is not None
    clock.advance(1.0)
    assert broker.find_queue("/", "tmp") is None


async def test_consumer_timeout_closes_session_and_requeues(
    broker: Broker, clock: FakeClock
) -> None:
    broker.declare_queue("/", "slow", arguments={"x-consumer-timeout": 5000})
    pub(broker, "", "slow", "job")
    s, got, _ = consume(broker, "slow", prefetch=1)
    errors: list[Exception] = []
    s.on_error = errors.append
    clock.advance(3)
    s.extend(got[0].delivery_tag)  # the lease is extended: the clock restarts
    clock.advance(4)
    assert not errors
    clock.advance(2)
    assert errors and "slow" in str(errors[0]) and "5000 ms" in str(errors[0])
    again = broker.get(broker.open_session(), "slow")
    assert again is not None and again.redelivered


async def test_deleting_a_queue_cancels_its_consumers(broker: Broker) -> None:
    broker.declare_queue("/", "q")
    s, _, consumer = consume(broker, "q")
    cancelled: list[str] = []
    consumer.on_cancel = cancelled.append
    pub(broker, "", "q", "x")
    with pytest.raises(PreconditionFailedError, match="in use"):
        broker.delete_queue("/", "q", if_unused=True)
    broker.delete_queue("/", "q")
    assert cancelled == [consumer.tag] and not s.consumers
    broker.declare_queue("/", "full")
    pub(broker, "", "full", "waiting")
    with pytest.raises(PreconditionFailedError, match="not empty"):
        broker.delete_queue("/", "full", if_empty=True)
    assert broker.delete_queue("/", "full") == 1


async def test_purge_removes_ready_but_keeps_unacked(broker: Broker) -> None:
    broker.declare_queue("/", "q")
    for i in range(3):
        pub(broker, "", "q", str(i))
    s = broker.open_session()
    d = broker.get(s, "q")
    assert broker.purge_queue("/", "q") == 2
    assert d is not None
    s.nack(d.delivery_tag)
    assert drain(broker, s, "q") == [b"0"]


async def test_waiting_and_processing_time_are_measured(broker: Broker, clock: FakeClock) -> None:
    broker.declare_queue("/", "q")
    pub(broker, "", "q", "x")
    clock.advance(0.250)
    s = broker.open_session()
    d = broker.get(s, "q")
    clock.advance(0.100)
    assert d is not None
    s.ack(d.delivery_tag)
    stats = broker.statistics().queue("q")
    assert stats.waiting_time.count == 1 and stats.processing_time.count == 1
    assert 250 <= (stats.waiting_time.p50_ms or 0) <= 250 * 1.11
    assert (stats.processing_time.p99_ms or 0) == pytest.approx(100, rel=1e-3)  # one sample
    clock.advance(3)
    stats = broker.statistics()
    assert stats.queue("q").counts["delivered"] == 1
    assert stats.counts["acked"] == 1 and stats.counts["published"] == 1


async def test_backlog_age_is_visible(broker: Broker, clock: FakeClock) -> None:
    broker.declare_queue("/", "q")
    pub(broker, "", "q", "x")
    clock.advance(42)
    assert broker.statistics().queue("q").oldest_ready_age_s == pytest.approx(42)


async def test_paging_keeps_memory_bounded_and_order_exact(clock: FakeClock) -> None:
    broker = Broker(MemoryStore(), clock, queue_window=10)
    broker.start()
    broker.declare_queue("/", "deep")
    for i in range(100):
        pub(broker, "", "deep", str(i))
    queue = broker.get_queue("/", "deep")
    assert queue.ready.in_memory() <= 10 and queue.ready_count == 100
    s, got, _ = consume(broker, "deep", prefetch=7)
    while len(got) < 100:
        before = len(got)
        s.ack(got[-1].delivery_tag, multiple=True)
        assert len(got) > before
    assert bodies(got) == [str(i).encode() for i in range(100)]


async def test_priority_queues_page_too_and_keep_priority_order(clock: FakeClock) -> None:
    """A deep priority queue is not bounded by RAM either: each level pages on its own, and a
    paged-out urgent message still overtakes the low-priority ones held in memory."""
    store = MemoryStore()
    broker = Broker(store, clock, queue_window=10)
    broker.start()
    broker.declare_queue("/", "jobs", arguments={"x-max-priority": 9})
    for i in range(200):  # the window fills with priority 0 first
        pub(broker, "", "jobs", f"low-{i}", priority=0)
    for i in range(50):
        pub(broker, "", "jobs", f"high-{i}", priority=7)
    for i in range(50):
        pub(broker, "", "jobs", f"top-{i}", priority=200)  # capped at x-max-priority
    queue = broker.get_queue("/", "jobs")
    assert queue.ready.in_memory() <= 10 and queue.ready_count == 300
    assert sorted(store.queues()) == ["/\x1fjobs", "/\x1fjobs\x1e7", "/\x1fjobs\x1e9"]
    s = broker.open_session()
    got, peak = [], 0
    while (d := broker.get(s, "jobs")) is not None:
        got.append(d.message.body.decode())
        s.ack(d.delivery_tag)
        peak = max(peak, queue.ready.in_memory())
    assert got == ([f"top-{i}" for i in range(50)] + [f"high-{i}" for i in range(50)]
                   + [f"low-{i}" for i in range(200)])
    assert peak <= 10 + 5 * 2  # the window plus one half-window page per level paged in


async def test_priority_lanes_purge_browse_and_delete(clock: FakeClock) -> None:
    store = MemoryStore()
    broker = Broker(store, clock, queue_window=4)
    broker.start()
    broker.declare_queue("/", "p", arguments={"x-max-priority": 5})
    for i in range(8):
        pub(broker, "", "p", f"a{i}", priority=1)
        pub(broker, "", "p", f"b{i}", priority=5)
    queue = broker.get_queue("/", "p")
    browsed = [e.record.message.body.decode() for e in queue.ready.browse(10)]
    assert browsed == [f"b{i}" for i in range(8)] + ["a0", "a1"]
    assert broker.purge_queue("/", "p") == 16
    assert queue.ready_count == 0 and store.count("/\x1fp\x1e5") == 0
    pub(broker, "", "p", "after", priority=5)
    assert drain(broker, broker.open_session(), "p") == [b"after"]
    for i in range(8):
        pub(broker, "", "p", str(i), priority=i % 6)
    broker.delete_queue("/", "p")
    assert store.queues() == []


async def test_drop_head_does_not_spin_while_the_head_is_not_yet_committed(
    clock: FakeClock, tmp_path: Path
) -> None:
    """More drop-heads in one commit window than the in-memory window holds: the next head is
    on disk but not readable yet. This used to spin the event loop forever; now the newest
    message is dead-lettered instead (reason maxlen) and the queue stays at its limit."""
    broker = Broker(SqliteStore(tmp_path / "data"), clock, queue_window=4)
    broker.start()
    broker.declare_queue("/", "dead")
    broker.declare_queue("/", "q", arguments={"x-max-length": 10, "x-overflow": "drop-head",
                                              "x-dead-letter-exchange": "",
                                              "x-dead-letter-routing-key": "dead"})
    for i in range(30):  # one loop turn, one pending commit
        pub(broker, "", "q", str(i))
    stats = broker.statistics()
    assert stats.queue("q").ready == 10 and stats.queue("dead").ready == 20
    await broker.sync()
    s = broker.open_session()
    assert len(drain(broker, s, "q")) == 10 and len(drain(broker, s, "dead")) == 20


async def test_a_consumer_gets_paged_out_messages_once_their_commit_lands(
    clock: FakeClock, tmp_path: Path
) -> None:
    """Published in one turn past the window: the rest is on disk but uncommitted. The
    consumer gets the window at once and the rest, in order, right after the commit (one
    retry per commit, not one store read per delivery attempt)."""
    broker = Broker(SqliteStore(tmp_path / "data"), clock, queue_window=4)
    broker.start()
    broker.declare_queue("/", "q", arguments={"x-max-priority": 3})
    owner = broker.vhosts.get("/")  # what the queue asks to wait for the commit
    waits: list[object] = []
    retry = owner.wait_for_commit
    owner.wait_for_commit = lambda q: (waits.append(q), retry(q))  # type: ignore[method-assign,func-returns-value]
    for i in range(20):
        pub(broker, "", "q", str(i), priority=i % 2)
    _, got, _ = consume(broker, "q", prefetch=100)
    assert len(got) == 4  # the window; the rest waits for the commit
    assert len(waits) == 1
    await broker.sync()
    await asyncio.sleep(0)
    await broker.sync()
    await asyncio.sleep(0)
    delivered = [int(b) for b in bodies(got)]
    assert sorted(delivered) == list(range(20))
    assert delivered[4:] == [i for i in range(1, 20, 2) if i not in delivered[:4]] + [
        i for i in range(0, 20, 2) if i not in delivered[:4]]


async def test_deleting_a_queue_can_auto_delete_its_exchange(broker: Broker) -> None:
    broker.declare_exchange("/", "ad", "fanout", auto_delete=True)
    broker.declare_exchange("/", "other", "fanout")
    broker.declare_queue("/", "q", exclusive=True, connection_id="c1")
    broker.bind("/", "ad", "q")
    broker.close_connection("c1")
    names = [e.name for e in broker.list_exchanges("/")]
    assert "ad" not in names and "other" in names


async def test_a_consumer_that_takes_lists_gets_them_within_its_prefetch(
        broker: Broker) -> None:
    """The embedded receiver's path: lists of deliveries, never more than the prefetch allows
    outstanding, in queue order, and acks of a list make room for the next."""
    from tidings.routing.session import BATCH_MAX

    total = BATCH_MAX + 70
    broker.declare_queue("/", "lists")
    for i in range(total):
        pub(broker, "", "lists", f"m{i}")
    session = broker.open_session()
    lists: list[list[Delivery]] = []
    consumer = broker.consume(session, "lists", lambda d: lists.append([d]), prefetch_count=30,
                              dispatch=False)
    consumer.on_deliveries = lists.append
    consumer.start()
    assert [len(x) for x in lists] == [30]
    session.ack_many([d.delivery_tag for d in lists[0][:10]])
    assert [len(x) for x in lists] == [30, 10]
    session.ack_many([d.delivery_tag for d in lists[0][10:] + lists[1]])
    assert [len(x) for x in lists] == [30, 10, 30]
    consumer.prefetch_count = 0  # unlimited: a list is capped at BATCH_MAX
    session.ack_many([d.delivery_tag for d in lists[2]])
    assert [len(x) for x in lists] == [30, 10, 30, BATCH_MAX]
    assert [d.message.body for x in lists for d in x] == \
        [f"m{i}".encode() for i in range(total)]
