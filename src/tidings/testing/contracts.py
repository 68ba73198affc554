"""Conformance suites: behaviour every Store and every Transport must show.

``check_store(open_store)`` and ``check_transport(open_transport)`` run every check; the lists
``STORE_CHECKS`` and ``TRANSPORT_CHECKS`` let a test runner report each check on its own.

``open_store(previous)`` returns a fresh store when ``previous`` is None, else closes
``previous`` and returns the same store reopened (what a restarted process would see).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from tidings.client.transport import Incoming, QueueSpec, Transport
from tidings.message import Message
from tidings.storage.base import TRANSIENT, Store

OpenStore = Callable[[Store | None], Store]
OpenTransport = Callable[[], Awaitable[Transport]]


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


def _msg(body: bytes, message_id: str | None = None) -> Message:
    return Message(body, message_id=message_id)


async def transport_round_trips_a_message(open_transport: OpenTransport) -> None:
    t = await open_transport()
    await t.declare_queue("rt", QueueSpec())
    await t.send("rt", [_msg(b"one"), _msg(b"two")])
    first = await t.get("rt")
    assert first is not None and first.message.body == b"one" and not first.redelivered
    await t.ack([first.token])
    second = await t.get("rt")
    assert second is not None and second.message.body == b"two"
    await t.nack(second.token, requeue=True)
    again = await t.get("rt")
    assert again is not None and again.message.body == b"two" and again.redelivered
    assert again.delivery_count == 1
    await t.ack([again.token])
    assert await t.get("rt") is None
    await t.close()


async def transport_consumes_with_prefetch(open_transport: OpenTransport) -> None:
    t = await open_transport()
    await t.declare_queue("pf", QueueSpec())
    await t.send("pf", [_msg(str(i).encode()) for i in range(10)])
    got: list[Incoming] = []
    sub = await t.consume("pf", 3, got.append)
    for _ in range(50):
        await asyncio.sleep(0.01)
        if len(got) >= 3:
            break
    assert [m.message.body for m in got] == [b"0", b"1", b"2"]
    await t.ack([got[0].token])
    for _ in range(50):
        await asyncio.sleep(0.01)
        if len(got) >= 4:
            break
    assert len(got) == 4 and got[3].message.body == b"3"
    await sub.cancel()
    await t.close()


async def transport_routes_events_by_pattern(open_transport: OpenTransport) -> None:
    t = await open_transport()
    await t.declare_queue("ev-all", QueueSpec())
    await t.declare_queue("ev-created", QueueSpec())
    await t.bind_events("ev-all", "orders.#")
    await t.bind_events("ev-created", "orders.*.created")
    await t.publish("orders.eu.created", [_msg(b"a")])
    await t.publish("orders.eu.shipped", [_msg(b"b")])
    await t.publish("users.created", [_msg(b"c")])
    bodies: dict[str, list[bytes]] = {"ev-all": [], "ev-created": []}
    for queue, found in bodies.items():
        while (m := await t.get(queue)) is not None:
            found.append(m.message.body)
            await t.ack([m.token])
    assert bodies == {"ev-all": [b"a", b"b"], "ev-created": [b"a"]}
    await t.close()


async def transport_takes_and_browses_waiting_messages(open_transport: OpenTransport) -> None:
    t = await open_transport()
    await t.declare_queue("tk", QueueSpec())
    await t.send("tk", [_msg(b"keep", "k1"), _msg(b"drop", "d1")])
    await t.send("tk", [_msg(b"later", "l1")], delay_ms=60_000)
    assert [m.body for m in await t.browse("tk", 10)] == [b"keep", b"drop"]
    taken = await t.take("tk", "d1")
    assert taken is not None and taken.body == b"drop"
    assert await t.take("tk", "d1") is None
    delayed = await t.take("tk", "l1")
    assert delayed is not None and delayed.body == b"later"
    assert await t.purge("tk") == 1
    assert await t.get("tk") is None
    await t.close()


TRANSPORT_CHECKS: list[Callable[[OpenTransport], Awaitable[None]]] = [
    transport_round_trips_a_message,
    transport_consumes_with_prefetch,
    transport_routes_events_by_pattern,
    transport_takes_and_browses_waiting_messages,
]


async def check_transport(open_transport: OpenTransport) -> Any:
    for check in TRANSPORT_CHECKS:
        await check(open_transport)
