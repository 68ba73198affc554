"""tidings.testing.drain: a user's test waits until the client's handlers have done the work,
retries included, instead of sleeping; and it says what is left when they do not."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import tidings
from tidings.errors import InvalidArgumentError
from tidings.testing import drain


async def test_drain_returns_once_every_event_is_handled() -> None:
    async with tidings.connect("memory://") as client:
        handled: list[int] = []

        @client.subscribe("orders.*", group="billing", concurrency=4)
        async def bill(message: tidings.ReceivedMessage) -> None:
            await asyncio.sleep(0.02)
            handled.append(message.json()["n"])

        await client.start()
        for n in range(20):
            await client.publish("orders.created", {"n": n})
        await drain(client)
        assert sorted(handled) == list(range(20))


async def test_drain_waits_through_retries_with_backoff() -> None:
    async with tidings.connect("memory://") as client:
        attempts: dict[int, int] = {}

        @client.handler("jobs", retries=3, min_backoff_ms=50)
        async def flaky(message: tidings.ReceivedMessage) -> None:
            n = message.json()["n"]
            attempts[n] = attempts.get(n, 0) + 1
            if attempts[n] < 3:
                raise RuntimeError("not yet")

        await client.start()
        await client.send_many("jobs", [{"n": n} for n in range(5)])
        await drain(client)
        assert attempts == {n: 3 for n in range(5)}  # each was retried twice, then done
        assert await client.dead_letters("jobs") == []


async def test_drain_covers_tasks_and_follow_up_work() -> None:
    async with tidings.connect("memory://") as client:
        seen: list[Any] = []

        @client.task(queue="math")
        async def add(a: int, b: int) -> int:
            await client.publish("sums.done", {"sum": a + b})  # follow-up work elsewhere
            return a + b

        @client.subscribe("sums.*", group="audit")
        async def audit(message: tidings.ReceivedMessage) -> None:
            seen.append(message.json()["sum"])

        await client.start()
        handles = [await add.send(i, i) for i in range(5)]
        await drain(client)
        assert sorted(seen) == [0, 2, 4, 6, 8]
        assert [await h.result(timeout_s=1) for h in handles] == [0, 2, 4, 6, 8]


async def test_drain_names_what_is_left_when_it_times_out() -> None:
    async with tidings.connect("memory://") as client:
        release = asyncio.Event()

        @client.handler("slow", concurrency=1)
        async def stuck(message: tidings.ReceivedMessage) -> None:
            await release.wait()

        await client.start()
        await client.send_many("slow", [1, 2, 3])
        await client.send("idle", "nobody consumes this")
        with pytest.raises(TimeoutError, match=r"'slow' has 0 ready, 0 delayed, 3 unacked"):
            await drain(client, timeout_s=0.2)
        with pytest.raises(TimeoutError, match=r"'idle' has 1 ready"):
            await drain(client, "idle", timeout_s=0.05)
        release.set()
        await drain(client, "slow")


async def test_drain_needs_something_to_watch() -> None:
    async with tidings.connect("memory://") as client:
        with pytest.raises(InvalidArgumentError, match=r"client\.start"):
            await drain(client)
