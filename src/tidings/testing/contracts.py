"""Conformance suites: behaviour every Store and every Transport must show.

``check_store(open_store)`` and ``check_transport(open_transport)`` run every check; the lists
``STORE_CHECKS`` and ``TRANSPORT_CHECKS`` let a test runner report each check on its own.

``open_store(previous)`` returns a fresh store when ``previous`` is None, else closes
``previous`` and returns the same store reopened (what a restarted process would see).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from tidings.client.transport import Capabilities, Delivery, QueueSpec, StreamSpec, Transport
from tidings.message import Message
from tidings.storage.base import TRANSIENT, Store
from tidings.stream_starts import OFFSET, READER

OpenStore = Callable[[Store | None], Store]
OpenTransport = Callable[[], Awaitable[Transport]]
Check = Callable[[Transport], Awaitable[None]]


async def store_keeps_records_in_seq_order(open_store: OpenStore) -> None:
    store = open_store(None)
    for seq in (3, 5, 9, 12):
        store.append("q", seq, f"m{seq}".encode())
    store.append("other", 4, b"x")
    await store.sync()
    assert store.load("q", -1, 10) == [(3, b"m3"), (5, b"m5"), (9, b"m9"), (12, b"m12")]
    assert store.load("q", 5, 2) == [(9, b"m9"), (12, b"m12")]
    assert store.load("q", 5, 1) == [(9, b"m9")]
    assert store.count("q") == 4
    assert sorted(store.queues()) == ["other", "q"]
    assert store.max_seq() == 12
    store.close()


async def store_removes_and_replaces(open_store: OpenStore) -> None:
    store = open_store(None)
    for seq in range(1, 7):
        store.append("q", seq, b"v1")
    store.remove("q", 2)
    store.remove("q", 99)
    store.replace("q", 3, b"v2")
    store.remove_after("q", 4)
    await store.sync()
    assert store.load("q", -1, 10) == [(1, b"v1"), (3, b"v2"), (4, b"v1")]
    store.remove_after("q", -1)
    await store.sync()
    assert store.count("q") == 0 and store.queues() == []
    store.close()


async def store_survives_reopen(open_store: OpenStore) -> None:
    store = open_store(None)
    store.append("q", 1, b"durable")
    store.append("q", 2, b"spilled", TRANSIENT)
    store.put_definition("queue", "/\x1fq", b"{}")
    store.put_definition("queue", "/\x1fgone", b"{}")
    store.delete_definition("queue", "/\x1fgone")
    store.mark_delivered("q", 1)
    store.mark_delivered("q", 0)
    await store.sync()
    store = open_store(store)
    assert store.load("q", -1, 10) == [(1, b"durable")]
    assert store.definitions("queue") == [("/\x1fq", b"{}")]
    assert store.delivered_marks() == {"q": 1}
    assert store.max_seq() >= 1
    store.close()


async def store_sync_covers_every_earlier_write(open_store: OpenStore) -> None:
    store = open_store(None)
    futures = []
    for seq in range(1, 201):
        store.append("q", seq, b"x" * 10)
        if seq % 20 == 0:
            futures.append(store.sync())
            await asyncio.sleep(0)
    await asyncio.gather(*futures)
    assert store.count("q") == 200
    store.close()


STORE_CHECKS: list[Callable[[OpenStore], Awaitable[None]]] = [
    store_keeps_records_in_seq_order,
    store_removes_and_replaces,
    store_survives_reopen,
    store_sync_covers_every_earlier_write,
]


async def check_store(open_store: OpenStore) -> None:
    for check in STORE_CHECKS:
        await check(open_store)


# -- transports -------------------------------------------------------------------------------
#
# Each check uses queue names of its own run (brokers such as RabbitMQ keep queues between runs)
# and names the capabilities it needs in ``needs``; a runner skips it when the transport's
# ``capabilities`` lack one, with the reason the transport gives.


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def needs(*capabilities: str) -> Callable[[Check], Check]:
    def mark(check: Check) -> Check:
        check.needs = capabilities  # type: ignore[attr-defined]
        return check

    return mark


def missing(check: Any, capabilities: Capabilities) -> str | None:
    """Why ``check`` cannot run on a transport with ``capabilities`` (None: it can)."""
    for name in getattr(check, "needs", ()):
        if not getattr(capabilities, name):
            return f"{capabilities.broker} lacks '{name}': {capabilities.reason(name)}"
    return None


def _msg(body: bytes, message_id: str | None = None) -> Message:
    return Message(body, message_id=message_id)


async def transport_round_trips_a_message(t: Transport) -> None:
    q = unique("rt")
    await t.declare_queue(q, QueueSpec())
    await t.send(q, [_msg(b"one"), _msg(b"two")])
    first = await t.get(q)
    assert first is not None and first.message.body == b"one" and not first.redelivered
    await t.ack([first.delivery_tag])
    second = await t.get(q)
    assert second is not None and second.message.body == b"two"
    await t.nack(second.delivery_tag, requeue=True)
    again = await t.get(q)
    assert again is not None and again.message.body == b"two" and again.redelivered
    assert again.delivery_count == 1
    await t.ack([again.delivery_tag])
    assert await t.get(q) is None


async def _until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def transport_consumes_with_prefetch(t: Transport) -> None:
    q = unique("pf")
    await t.declare_queue(q, QueueSpec())
    await t.send(q, [_msg(str(i).encode()) for i in range(10)])
    got: list[Delivery] = []
    sub = await t.consume(q, 3, got.append)
    await _until(lambda: len(got) >= 3)
    await asyncio.sleep(0.1)  # no fourth may come while three are unsettled
    assert [m.message.body for m in got] == [b"0", b"1", b"2"]
    await t.ack([got[0].delivery_tag])
    await _until(lambda: len(got) >= 4)
    assert len(got) == 4 and got[3].message.body == b"3"
    await sub.cancel()


async def transport_routes_events_by_pattern(t: Transport) -> None:
    everything, created = unique("ev-all"), unique("ev-created")
    topic = unique("orders")
    await t.declare_queue(everything, QueueSpec())
    await t.declare_queue(created, QueueSpec())
    await t.bind_events(everything, f"{topic}.#")
    await t.bind_events(created, f"{topic}.*.created")
    await t.publish(f"{topic}.eu.created", [_msg(b"a")])
    await t.publish(f"{topic}.eu.shipped", [_msg(b"b")])
    await t.publish("users.created", [_msg(b"c")])
    bodies: dict[str, list[bytes]] = {everything: [], created: []}
    for queue, found in bodies.items():
        while (m := await t.get(queue)) is not None:
            found.append(m.message.body)
            await t.ack([m.delivery_tag])
    assert bodies == {everything: [b"a", b"b"], created: [b"a"]}


async def transport_delays_a_message(t: Transport) -> None:
    q = unique("dl")
    await t.declare_queue(q, QueueSpec())
    await t.send(q, [_msg(b"later")], delay_ms=400)
    await t.send(q, [_msg(b"now")])
    first = await t.get(q)
    assert first is not None and first.message.body == b"now"
    await t.ack([first.delivery_tag])
    assert await t.get(q) is None
    later: list[Delivery] = []
    sub = await t.consume(q, 10, later.append)
    await _until(lambda: bool(later))
    assert later[0].message.body == b"later" and later[0].delivery_count == 0
    await t.ack([later[0].delivery_tag])
    await sub.cancel()
transport_delays_a_message = needs("delays")(transport_delays_a_message)


async def transport_dead_letters_after_the_delivery_limit(t: Transport) -> None:
    q = unique("lim")
    await t.declare_queue(q, QueueSpec(delivery_limit=1))
    await t.send(q, [_msg(b"poison", "p1")])
    for attempt in range(2):  # the second failed delivery is past the limit of one
        m = await _poll(lambda: t.get(q))
        assert m.message.body == b"poison" and m.delivery_count == attempt
        await t.nack(m.delivery_tag, requeue=True, delay_ms=50)
    dead = await _poll(lambda: t.dead_letters(q, 10))
    assert [m.message_id for m in dead] == ["p1"]
    assert await t.dead_letters(q, 10) == dead  # listing leaves them in place
    assert await t.replay_dead_letters(q, {"nope"}) == 0
    assert await t.replay_dead_letters(q, {"p1"}) == 1
    assert await t.dead_letters(q, 10) == []
    again = await t.get(q)
    assert again is not None and again.message.body == b"poison"
    await t.ack([again.delivery_tag])


async def _poll(read: Callable[[], Awaitable[Any]], timeout_s: float = 5.0) -> Any:
    """The first truthy result of ``read``, called until ``timeout_s`` has passed."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (found := await read()):
        assert asyncio.get_running_loop().time() < deadline, "nothing arrived in time"
        await asyncio.sleep(0.02)
    return found
transport_dead_letters_after_the_delivery_limit = needs("delays")(
    transport_dead_letters_after_the_delivery_limit)


async def transport_browses_waiting_messages(t: Transport) -> None:
    q = unique("br")
    await t.declare_queue(q, QueueSpec())
    await t.send(q, [_msg(b"one", "o1"), _msg(b"two", "t2")])
    assert [m.body for m in await t.browse(q, 10)] == [b"one", b"two"]
    assert [m.message_id for m in await t.browse(q, 1)] == ["o1"]
    first = await t.get(q)  # browsing left it in place, unmarked
    assert first is not None and first.message.body == b"one" and not first.redelivered
    assert first.delivery_count == 0
    await t.ack([first.delivery_tag])
transport_browses_waiting_messages = needs("browse")(transport_browses_waiting_messages)


async def transport_deletes_a_waiting_message_by_id(t: Transport) -> None:
    q = unique("del")
    await t.declare_queue(q, QueueSpec())
    await t.send(q, [_msg(b"keep", "k1"), _msg(b"drop", "d1")])
    assert await t.delete(q, "d1") is True
    assert await t.delete(q, "d1") is False
    first = await t.get(q)
    assert first is not None and first.message.body == b"keep"
    await t.ack([first.delivery_tag])
    assert await t.get(q) is None
transport_deletes_a_waiting_message_by_id = needs("delete")(
    transport_deletes_a_waiting_message_by_id)


async def transport_deletes_a_delayed_message_by_id(t: Transport) -> None:
    q = unique("deld")
    await t.declare_queue(q, QueueSpec())
    await t.send(q, [_msg(b"later", "l1")], delay_ms=60_000)
    assert await t.delete(q, "l1") is True
    assert await t.delete(q, "l1") is False
transport_deletes_a_delayed_message_by_id = needs("delete_delayed")(
    transport_deletes_a_delayed_message_by_id)


async def transport_extends_a_lease(t: Transport) -> None:
    q = unique("ext")
    await t.declare_queue(q, QueueSpec(consumer_timeout_ms=600))
    await t.send(q, [_msg(b"slow")])
    got: list[Delivery] = []
    sub = await t.consume(q, 1, got.append)
    await _until(lambda: bool(got))
    for _ in range(4):  # 1.2 s of work, each step well inside the 600 ms timeout
        await asyncio.sleep(0.3)
        await t.extend(got[0].delivery_tag)
    await t.ack([got[0].delivery_tag])
    await t.sync()
    await sub.cancel()
    assert await t.get(q) is None and len(got) == 1, "the extended delivery was not taken back"
transport_extends_a_lease = needs("extend")(transport_extends_a_lease)


async def transport_purges_and_counts(t: Transport) -> None:
    q = unique("pg")
    await t.declare_queue(q, QueueSpec())
    await t.send(q, [_msg(b"x") for _ in range(3)])
    stats = await t.statistics()
    assert next(s for s in stats.queues if s.name == q).ready == 3
    assert await t.purge(q) == 3
    assert await t.get(q) is None


async def transport_keeps_one_id_in_two_queues(t: Transport) -> None:
    """A message id is the sender's: the same id sent (now or delayed) to two queues, or
    published on two topics, is two messages, whatever the engine deduplicates by."""
    first, second, topic = unique("id1"), unique("id2"), unique("ids")
    for q in (first, second):
        await t.declare_queue(q, QueueSpec())
        await t.send(q, [_msg(b"now", "order-7")])
    await t.bind_events(first, f"{topic}.a")
    await t.bind_events(second, f"{topic}.b")
    await t.publish(f"{topic}.a", [_msg(b"event", "order-7")])
    await t.publish(f"{topic}.b", [_msg(b"event", "order-7")])
    delays = t.capabilities.delays
    if delays:
        for q in (first, second):
            await t.send(q, [_msg(b"later", "order-7")], delay_ms=50)
    for q in (first, second):
        bodies = []
        deadline = asyncio.get_running_loop().time() + 5
        while len(bodies) < (3 if delays else 2):
            assert asyncio.get_running_loop().time() < deadline, f"{q} got only {bodies}"
            m = await t.get(q)
            if m is None:
                await asyncio.sleep(0.02)
                continue
            assert m.message.message_id == "order-7"
            bodies.append(m.message.body)
            await t.ack([m.delivery_tag])
        assert sorted(bodies) == sorted([b"now", b"event", b"later"][:len(bodies)])


async def transport_knows_which_queues_exist(t: Transport) -> None:
    q = unique("exists")
    assert not await t.queue_exists(q)
    assert await t.declare_queue(q, QueueSpec()) == q
    assert await t.queue_exists(q)
    assert await t.declare_queue(q, QueueSpec()) == q  # declaring again changes nothing


STREAM_OFFSET, STREAM_READER = OFFSET, READER  # (RabbitMQ's start, tidings' named reader)


async def _read_stream(t: Transport, stream: str, arguments: dict[str, Any],
                       count: int) -> list[Delivery]:
    """The first ``count`` records a new consumer of ``stream`` gets with ``arguments``."""
    got: list[Delivery] = []
    arrived = asyncio.Event()

    def on_message(delivery: Delivery) -> None:
        got.append(delivery)
        arrived.set()

    subscription = await t.consume(stream, 100, on_message, dict(arguments))
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while len(got) < count:
            arrived.clear()
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"{stream} gave only {[d.message.body for d in got]}"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), left)
        await t.ack([d.delivery_tag for d in got])  # on a stream: credit for more
    finally:
        await subscription.cancel()
    return got[:count]


@needs("streams")
async def transport_keeps_a_stream_for_every_reader(t: Transport) -> None:
    """Records stay after they are read: two readers from the start each get them all, in
    order, with dense increasing offsets."""
    s = unique("stream")
    await t.declare_stream(s, StreamSpec())
    await t.declare_stream(s, StreamSpec())  # idempotent
    assert await t.queue_exists(s)
    bodies = [b"r%d" % i for i in range(5)]
    await t.send(s, [_msg(b) for b in bodies])
    for _ in range(2):
        got = await _read_stream(t, s, {STREAM_OFFSET: "first"}, 5)
        assert [d.message.body for d in got] == bodies
        offsets = [(d.message.headers or {})[STREAM_OFFSET] for d in got]
        assert offsets == list(range(offsets[0], offsets[0] + 5))


@needs("streams")
async def transport_resumes_a_named_reader(t: Transport) -> None:
    """A committed offset is the broker's: a new consumer under that reader's name starts
    right after it, whatever start it asks for."""
    s, reader = unique("resume"), unique("reader")
    await t.declare_stream(s, StreamSpec())
    await t.send(s, [_msg(b"r%d" % i) for i in range(4)])
    first = await _read_stream(t, s, {STREAM_OFFSET: "first"}, 4)
    await t.commit_offset(s, reader, (first[1].message.headers or {})[STREAM_OFFSET])
    later = await _read_stream(t, s, {STREAM_OFFSET: "first", STREAM_READER: reader}, 2)
    assert [d.message.body for d in later] == [b"r2", b"r3"]


TRANSPORT_CHECKS: list[Callable[[Transport], Awaitable[None]]] = [
    transport_knows_which_queues_exist,
    transport_keeps_a_stream_for_every_reader,
    transport_resumes_a_named_reader,
    transport_round_trips_a_message,
    transport_consumes_with_prefetch,
    transport_routes_events_by_pattern,
    transport_delays_a_message,
    transport_dead_letters_after_the_delivery_limit,
    transport_browses_waiting_messages,
    transport_deletes_a_waiting_message_by_id,
    transport_deletes_a_delayed_message_by_id,
    transport_extends_a_lease,
    transport_purges_and_counts,
    transport_keeps_one_id_in_two_queues,
]


async def run_transport_check(check: Callable[[Transport], Awaitable[None]],
                              open_transport: OpenTransport) -> str | None:
    """Run one check on a new transport; returns why it was skipped, or None when it ran."""
    t = await open_transport()
    try:
        reason = missing(check, t.capabilities)
        if reason is None:
            await check(t)
        return reason
    finally:
        await t.close()


async def check_transport(open_transport: OpenTransport) -> list[str]:
    """Every check; returns the reasons of those skipped by capability."""
    skipped = []
    for check in TRANSPORT_CHECKS:
        reason = await run_transport_check(check, open_transport)
        if reason is not None:
            skipped.append(f"{check.__name__}: {reason}")
    return skipped
