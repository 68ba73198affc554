"""A machine run durably on the embedded broker (a real SQLite data directory): events move
instances one committed transition at a time, a transition's messages and timers go out with
it, a redelivered event is not applied twice, a timer fires only while armed, an event no
state takes is a dead letter with its reason, and instances survive closing and reopening."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import tidings
from tidings.errors import NotSupportedError

from .order_machine import order_machine


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not reached in time"
        await asyncio.sleep(0.02)


async def test_orders_move_one_committed_transition_per_event(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with tidings.connect(str(data)) as client:
        runner = client.machine(order_machine(payment_s=0.3))
        await runner.start()

        async def state(key: str, wanted: str) -> bool:
            found = await runner.get(key)
            return found is not None and found.state == wanted

        await client.publish("orders.submitted", {"order_id": "o1", "amount": 30})
        await client.publish("orders.submitted", {"order_id": "o2", "amount": 5})
        await until(lambda: state("o1", "submitted"))
        await client.publish("orders.paid", {"order_id": "o1", "amount": 30}, message_id="pay-1")
        await client.publish("orders.paid", {"order_id": "o1", "amount": 30}, message_id="pay-1")
        await until(lambda: state("o1", "paid"))
        await until(lambda: state("o2", "cancelled"))  # its payment timer fired
        shipping = await client.get("shipping")
        assert shipping is not None and shipping.json() == {"order_id": "o1"}
        await shipping.ack()
        await asyncio.sleep(0.5)  # o1's cancelled timer would have fired by now
        o1 = await runner.get("o1")
        assert o1 is not None and (o1.state, o1.version, o1.data.paid) == ("paid", 2, 30)
        assert runner.counts["duplicate"] == 1 and runner.counts["stale"] == 0
        assert await client.get("shipping") is None  # the duplicate sent nothing more
        await client.publish("orders.paid", {"order_id": "o9", "amount": 1})
        await until(lambda: _dead(client))
        [dead] = await client.dead_letters("machine.order")
        assert "no instance 'o9'" in dead.headers["x-machine-reason"]
        assert [i.key for i in await runner.list(state="paid")] == ["o1"]
        await runner.stop()
    async with tidings.connect(str(data)) as client:  # kept across a reopen
        runner = client.machine(order_machine())
        o1 = await runner.get("o1")
        assert o1 is not None and o1.state == "paid" and o1.history == 2


async def _dead(client: tidings.Client) -> bool:
    return bool(await client.dead_letters("machine.order"))


async def test_a_broker_that_cannot_commit_with_the_event_says_so() -> None:
    from tidings.client.transport import Capabilities, WithoutMachines

    class Remote(WithoutMachines):
        capabilities = Capabilities("RabbitMQ 3.10")

    with pytest.raises(NotSupportedError, match=r"RabbitMQ 3\.10"):
        await Remote().commit_transition(None, None)  # type: ignore[arg-type]
