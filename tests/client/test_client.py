"""The client API over the embedded broker: queues, events, retries, dead letters, middleware,
the blocking facade and URL handling."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

import tidings
from tidings.client.runner import backoff_ms
from tidings.errors import ConfigError, InvalidArgumentError, PreconditionFailedError
from tidings.urls import parse_url


async def eventually(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_send_get_ack_round_trip_with_bodies_of_each_kind(tmp_path: Path) -> None:
    async with tidings.connect(str(tmp_path)) as client:
        await client.send("jobs", b"\x00raw")
        await client.send("jobs", "text")
        await client.send("jobs", {"n": 1}, headers={"h": "v"}, message_id="m-3")
        raw, text, obj = [await client.get("jobs") for _ in range(3)]
        assert raw and raw.body == b"\x00raw" and raw.content_type is None
        assert text and text.text() == "text" and text.content_type.startswith("text/plain")
        assert obj and obj.json() == {"n": 1} and obj.content_type == "application/json"
        assert obj.headers == {"h": "v"} and obj.id == "m-3" and obj.topic == "jobs"
        assert obj.delivery_count == 1 and not obj.redelivered and obj.timestamp
        for m in (raw, text, obj):
            await m.ack()
        assert await client.get("jobs") is None
        with pytest.raises(InvalidArgumentError, match="already settled"):
            await obj.ack()


async def test_sent_messages_survive_reopen_and_unsettled_come_back(tmp_path: Path) -> None:
    async with tidings.connect(f"file:{tmp_path}") as client:
        await client.send_many("jobs", [{"i": i} for i in range(3)])
        first = await client.get("jobs")
        assert first is not None
        await first.ack()
        await client.get("jobs")  # taken, never settled
    async with tidings.connect(str(tmp_path)) as client:
        again = await client.get("jobs")
        assert again is not None and again.json() == {"i": 1} and again.redelivered
        rest = await client.get("jobs")
        assert rest is not None and rest.json() == {"i": 2}


async def test_receive_iterates_with_prefetch_and_returns_unyielded(tmp_path: Path) -> None:
    async with tidings.connect("memory://") as client:
        await client.send_many("work", range(10))
        seen = []
        async with client.receive("work", prefetch=4) as messages:
            async for message in messages:
                seen.append(message.json())
                await message.ack()
                if len(seen) == 5:
                    break
        assert seen == [0, 1, 2, 3, 4]
        stats = (await client.statistics()).queue("work")
        assert stats.ready == 5 and stats.unacked == 0


async def test_receive_in_batches_bounded_by_prefetch_and_acked_at_once() -> None:
    async with tidings.connect("memory://") as client:
        await client.send_many("work", range(25))
        sizes, seen = [], []
        async with client.receive("work", prefetch=10) as messages:
            async for batch in messages.batches(max_count=8):
                sizes.append(len(batch))
                seen += [m.json() for m in batch]
                await client.ack(batch)
                if len(seen) == 25:
                    break
        assert seen == list(range(25))
        assert max(sizes) <= 8 and sum(sizes) == 25
        stats = (await client.statistics()).queue("work")
        assert stats.ready == 0 and stats.unacked == 0
        with pytest.raises(InvalidArgumentError, match="max_count"):
            await anext(aiter(client.receive("work").batches(0)))


async def test_closing_a_receiver_ends_a_consumer_waiting_in_another_task() -> None:
    async with tidings.connect("memory://") as client:
        receiver = client.receive("idle")
        await receiver.__aenter__()

        async def consume() -> list[Any]:
            return [m async for m in receiver]

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        assert not task.done()
        await receiver.aclose()
        assert await asyncio.wait_for(task, 2) == []


async def test_nack_with_delay_and_delayed_send(tmp_path: Path) -> None:
    async with tidings.connect("memory://") as client:
        await client.send("q", "later", delay_ms=80)
        assert await client.get("q") is None
        assert (await client.statistics()).queue("q").delayed == 1
        await asyncio.sleep(0.15)
        m = await client.get("q")
        assert m is not None and m.text() == "later"
        await m.nack(delay_ms=50)
        assert await client.get("q") is None
        await asyncio.sleep(0.1)
        m = await client.get("q")
        assert m is not None and m.delivery_count == 2 and m.redelivered


async def test_delete_cancels_waiting_and_delayed_messages() -> None:
    async with tidings.connect("memory://") as client:
        keep = await client.send("q", "keep")
        drop = await client.send("q", "drop")
        later = await client.send("q", "later", delay_ms=60_000)
        assert await client.delete("q", drop)
        assert await client.delete("q", later)
        assert not await client.delete("q", drop)
        m = await client.get("q")
        assert m is not None and m.id == keep
        assert await client.get("q") is None


async def test_rejected_messages_are_dead_letters_to_list_replay_and_purge() -> None:
    async with tidings.connect("memory://") as client:
        ids = [await client.send("orders", {"n": n}) for n in range(3)]
        for _ in range(3):
            m = await client.get("orders")
            assert m is not None
            await m.reject()
        dead = await client.dead_letters("orders")
        assert [d.message_id for d in dead] == ids
        assert dead[0].headers and dead[0].headers["x-death"][0]["reason"] == "rejected"
        assert await client.replay_dead_letters("orders", ids=[ids[1]]) == 1
        m = await client.get("orders")
        assert m is not None and m.id == ids[1] and m.json() == {"n": 1}
        assert await client.purge_dead_letters("orders") == 2
        assert await client.dead_letters("orders") == []


async def test_queue_delivery_limit_is_on_by_default() -> None:
    async with tidings.connect("memory://") as client:
        await client.declare_queue("fragile", delivery_limit=1)
        await client.send("fragile", "poison")
        deliveries = 0
        while (m := await client.get("fragile")) is not None:
            deliveries += 1
            await m.nack()
        assert deliveries == 2
        [dead] = await client.dead_letters("fragile")
        assert dead.headers and dead.headers["x-death"][0]["reason"] == "delivery_limit"


async def test_full_queue_refuses_send_with_clear_error() -> None:
    async with tidings.connect("memory://") as client:
        await client.declare_queue("small", max_length=1,
                                   arguments={"x-overflow": "reject-publish"})
        await client.send("small", 1)
        with pytest.raises(PreconditionFailedError, match=r"queue 'small'.*full"):
            await client.send("small", 2)


async def test_each_group_gets_each_event_once_and_members_share_load() -> None:
    async with tidings.connect("memory://") as client:
        billing_a: list[Any] = []
        billing_b: list[Any] = []
        audit: list[Any] = []

        @client.subscribe("orders.*", group="billing")
        async def bill_a(event: tidings.ReceivedMessage) -> None:
            billing_a.append(event.json())

        @client.subscribe("orders.*", group="billing")
        async def bill_b(event: tidings.ReceivedMessage) -> None:
            billing_b.append(event.json())

        @client.subscribe("orders.#", group="audit")
        async def log_all(event: tidings.ReceivedMessage) -> None:
            audit.append((event.topic, event.json()))

        await client.start()
        for i in range(20):
            await client.publish("orders.created", {"id": i})
        await client.publish("orders.eu.shipped", {"id": 99})
        await eventually(lambda: len(billing_a) + len(billing_b) == 20 and len(audit) == 21)
        assert sorted(x["id"] for x in billing_a + billing_b) == list(range(20))
        assert billing_a and billing_b  # the load was shared
        assert audit[-1] == ("orders.eu.shipped", {"id": 99})


async def test_group_subscription_is_durable_across_clients(tmp_path: Path) -> None:
    async with tidings.connect(str(tmp_path)) as client:
        @client.subscribe("mail.#", group="mailer")
        async def first(event: tidings.ReceivedMessage) -> None:
            pass

        await client.start()
    async with tidings.connect(str(tmp_path)) as client:
        await client.publish("mail.sent", "while nobody listens")
    async with tidings.connect(str(tmp_path)) as client:
        got: list[str] = []

        @client.subscribe("mail.#", group="mailer")
        async def later(event: tidings.ReceivedMessage) -> None:
            got.append(event.text())

        await client.start()
        await eventually(lambda: got == ["while nobody listens"])


async def test_failing_handler_is_retried_with_backoff_then_dead_lettered() -> None:
    async with tidings.connect("memory://") as client:
        attempts: list[float] = []

        @client.subscribe("jobs.run", group="workers", retries=2, min_backoff_ms=40)
        async def always_fails(event: tidings.ReceivedMessage) -> None:
            attempts.append(asyncio.get_running_loop().time())
            raise RuntimeError("boom")

        await client.start()
        await client.publish("jobs.run", {"job": 1})
        queue = "workers:jobs.run"
        await eventually(lambda: len(attempts) == 3)
        dead: list[Any] = []

        async def poll() -> None:
            dead.extend(await client.dead_letters(queue))

        for _ in range(100):
            await poll()
            if dead:
                break
            await asyncio.sleep(0.02)
        assert len(attempts) == 3
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert gaps[0] >= 0.035 and gaps[1] >= 0.075  # 40 ms, then 80 ms
        assert dead and json.loads(dead[0].body) == {"job": 1}


def test_backoff_is_exponential_and_capped() -> None:
    assert [backoff_ms(a, 100, 1000) for a in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]


async def test_middleware_wraps_every_handler_call() -> None:
    async with tidings.connect("memory://") as client:
        log: list[str] = []

        @client.use
        async def record(event: tidings.ReceivedMessage, call_next: Any) -> Any:
            log.append(f"before {event.topic}")
            result = await call_next(event)
            log.append("after")
            return result

        @client.subscribe("ping")
        async def handler(event: tidings.ReceivedMessage) -> None:
            log.append("handled")

        await client.start()
        await client.publish("ping", {})
        await eventually(lambda: len(log) == 3)
        assert log == ["before ping", "handled", "after"]


async def test_private_subscription_ends_with_its_client(tmp_path: Path) -> None:
    from tidings.client.local import LocalTransport
    from tidings.routing.broker import Broker
    from tidings.storage import MemoryStore

    broker = Broker(MemoryStore())
    broker.start()

    async def shared() -> LocalTransport:
        return LocalTransport(broker, owns_broker=False)

    async with tidings.Client(transport_factory=shared) as client:
        got: list[str] = []

        @client.subscribe("news.*")
        async def handler(event: tidings.ReceivedMessage) -> None:
            got.append(event.text())

        await client.start()
        [private] = [q for q in broker.statistics().queues if q.name.startswith("amq.gen-")]
        await client.publish("news.today", "hello")
        await eventually(lambda: got == ["hello"])
    assert broker.find_queue("/", private.name) is None  # gone with its client
    broker.close()


def test_blocking_facade_sends_receives_and_acks(tmp_path: Path) -> None:
    with tidings.connect_blocking(str(tmp_path)) as client:
        client.send("jobs", {"a": 1})
        client.send_many("jobs", [{"a": 2}, {"a": 3}])
        m = client.get("jobs")
        assert m is not None and m.json() == {"a": 1}
        m.ack()
        got = []
        for message in client.receive("jobs", timeout_s=0.2):
            got.append(message.json())
            message.ack()
        assert got == [{"a": 2}, {"a": 3}]
        assert client.statistics().queue("jobs").counts["acked"] == 3


@pytest.mark.parametrize(("url", "expected"), [
    ("./data", ("file", "./data")),
    ("/var/lib/tidings", ("file", "/var/lib/tidings")),
    ("file:./data", ("file", "./data")),
    ("file:///srv/data", ("file", "/srv/data")),
    ("memory://", ("memory", "")),
])
def test_parse_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_url(url) == expected


async def test_unknown_scheme_and_unopened_client_give_clear_errors() -> None:
    with pytest.raises(ConfigError, match="unknown broker URL scheme 'ftp'"):
        await tidings.connect("ftp://x").open()
    for url in ("nats://127.0.0.1:1", "redis://127.0.0.1:1/0"):  # nothing listens there
        with pytest.raises(tidings.BrokenResourceError, match="cannot connect to"):
            await tidings.connect(url).open()
    with pytest.raises(tidings.ClosedResourceError, match="not open"):
        await tidings.connect("memory://").send("q", 1)


async def test_bad_body_and_bad_pattern_are_refused() -> None:
    async with tidings.connect("memory://") as client:
        with pytest.raises(InvalidArgumentError, match="not bytes, str or JSON-able"):
            await client.send("q", object())
        with pytest.raises(InvalidArgumentError, match="whole words"):
            client.subscribe("orders.*x")


async def test_handled_events_are_not_redelivered_after_close(tmp_path: Path) -> None:
    async with tidings.connect(str(tmp_path)) as client:
        handled: list[int] = []

        @client.subscribe("load.*", group="g", concurrency=4)
        async def handler(event: tidings.ReceivedMessage) -> None:
            handled.append(event.json())
            await asyncio.sleep(0)

        await client.start()
        await client.publish_many("load.x", range(300))
        await eventually(lambda: len(handled) == 300)
    async with tidings.connect(str(tmp_path)) as client:
        stats = (await client.statistics()).queue("g:load.-star-")
        assert stats.ready == 0 and stats.unacked == 0


async def test_embedded_refuses_what_tidings_serve_refuses(tmp_path: Path) -> None:
    """The same limits on every path: headers AMQP cannot carry and bodies over the maximum
    message size are refused by the embedded broker too, and the queue stays usable."""
    from tidings.values import MAX_MESSAGE_BYTES

    async with tidings.connect(str(tmp_path / "data")) as client:
        with pytest.raises(InvalidArgumentError, match="surrogate"):
            await client.send("limits", b"x", headers={"a": "\ud800"})
        with pytest.raises(InvalidArgumentError, match="maximum message size"):
            await client.send("limits", b"x" * (MAX_MESSAGE_BYTES + 1))
        await client.send("limits", b"fine", headers={"a": "ok"})
        got = await client.get("limits")
        assert got is not None and got.body == b"fine"
        await got.ack()


async def test_a_task_queue_has_the_same_delivery_limit_whoever_declares_it_first() -> None:
    """The caller used to declare a task queue with a limit of 10 and the worker with none:
    which one came first decided whether a message that kills its worker loops for ever."""
    limits = []
    for caller_first in (True, False):
        client = tidings.connect("memory://")

        @client.task(queue="math", retries=15)
        def add(a: int, b: int) -> int:
            return a + b

        async with client:
            if caller_first:
                await add.send(1, 2)
            await client.start()
            if not caller_first:
                await add.send(1, 2)
            info = client.transport.broker.describe_queue("/", "math")  # type: ignore[attr-defined]
            limits.append(info.arguments.get("x-delivery-limit"))
    assert limits == [16, 16]  # above the 15 retries, whoever declared it


async def test_rolling_restarts_do_not_use_up_a_tasks_attempts(tmp_path: Path) -> None:
    """Every worker that stops gracefully returns the calls it held, each return counting as
    a delivery. Six such restarts (a rolling deploy) must not dead-letter calls that never
    ran: the limit on deliveries is the queue's (10 by default), not the retries'."""
    data = str(tmp_path / "data")

    async def worker_round(first: bool, last: bool) -> list[int]:
        client = tidings.connect(data)
        ran: list[int] = []
        release = asyncio.Event()
        if last:
            release.set()

        @client.task(queue="deploy", concurrency=1)
        async def job(i: int) -> int:
            await release.wait()
            ran.append(i)
            return i

        async with client:
            if first:
                for i in range(5):
                    await job.send(i)
            await client.start()
            if not last:
                await asyncio.sleep(0.2)  # one call runs, the rest wait in the inbox
                await client.stop(grace_s=0.05)
                return ran
            await eventually(lambda: len(ran) == 5, timeout_s=10)
            assert await client.dead_letters("deploy") == []
        return ran

    for round_ in range(6):
        assert await worker_round(round_ == 0, False) == []
    assert sorted(await worker_round(False, True)) == [0, 1, 2, 3, 4]
