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


async def test_instances_are_read_over_http_and_the_cli(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    import httpx

    from tidings.auth import UserStore
    from tidings.http.app import build_app

    data = tmp_path / "data"
    async with tidings.connect(str(data)) as client:
        runner = client.machine(order_machine())
        await runner.start()
        for i in range(3):
            await client.publish("orders.submitted", {"order_id": f"o{i}", "amount": 2})
        await client.publish("orders.paid", {"order_id": "o1", "amount": 2})

        async def settled() -> bool:
            return [i.state for i in await runner.list()] == ["submitted", "paid", "submitted"]

        await until(settled)
        await runner.stop()
        broker = client.transport.broker  # type: ignore[attr-defined]
        app = build_app(broker, UserStore(data))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gw", auth=("guest", "guest")) as api:
            [listed] = (await api.get("/api/machines")).json()
            assert (listed["name"], listed["instances"], listed["states"]) == \
                ("order", 3, {"paid": 1, "submitted": 2})
            assert 0 <= listed["oldest_s"]["submitted"] < 60
            metrics = (await api.get("/metrics")).text
            assert 'tidings_machine_instances{machine="order",state="submitted",vhost="/"} ' \
                   '2.0' in metrics
            numbers = runner.statistics()
            assert numbers["transitions"]["submitted -> paid on orders.paid"]["count"] == 1
            assert numbers["events"]["applied"] == 4
            assert numbers["transitions"]["new -> submitted on orders.submitted"][
                "commit_ms"].count == 3
            page = (await api.get("/api/machines/%2F/order",
                                  params={"state": "submitted", "page_size": 1})).json()
            assert (page["filtered_count"], [i["key"] for i in page["items"]]) == (2, ["o0"])
            one = (await api.get("/api/machines/%2F/order/o1")).json()
            assert (one["state"], one["data"]["paid"], one["version"]) == ("paid", 2, 2)
            assert (await api.get("/api/machines/%2F/order/nope")).status_code == 404
            assert (await api.get("/api/machines/%2F/other")).status_code == 404
    out = subprocess.run([sys.executable, "-m", "tidings", "--data-dir", str(data), "machines",
                          "order", "--state", "paid"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:4] == ["key", "state", "version", "history"]
    assert out.stdout.splitlines()[1].split() == ["o1", "paid", "2", "2"]
    shown = subprocess.run([sys.executable, "-m", "tidings", "--data-dir", str(data),
                            "machines", "order", "o0"], capture_output=True, text=True,
                           timeout=60, check=False)
    assert json.loads(shown.stdout)["timers"]["payment"]["armed_in"] == "submitted"


async def test_one_runner_at_a_time_and_the_next_takes_over() -> None:
    """Two runners of one machine (two worker processes, say): one consumes, the other waits;
    when the first stops, the second goes on from the instances as the broker has them."""
    async with tidings.connect("memory://") as client:
        first, second = client.machine(order_machine()), client.machine(order_machine())
        await first.start()
        await second.start()
        for i in range(5):
            await client.publish("orders.submitted", {"order_id": f"o{i}", "amount": 1})

        async def states(wanted: str) -> bool:
            return [i.state for i in await first.list()] == [wanted] * 5

        await until(lambda: states("submitted"))
        assert first.counts["applied"] == 5 and second.counts["applied"] == 0
        await first.stop()
        for i in range(5):
            await client.publish("orders.paid", {"order_id": f"o{i}", "amount": 1})
        await until(lambda: states("paid"))
        assert second.counts["applied"] == 5
        await second.stop()
