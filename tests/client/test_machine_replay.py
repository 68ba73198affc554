"""Replaying a machine from the events log: the instances rebuilt through the same
definition (outputs suppressed, timers fired when due) equal the stored ones; a changed
definition's dry run names every instance it would change and which version wrote it; applied,
the rebuilt instances become new versions with an audit record, and nothing is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

import tidings
from tidings.client.machine_replay import Difference
from tidings.errors import NotFoundError

from .order_machine import order_machine
from .test_machine_runner import until


async def _orders(client: tidings.Client) -> None:
    """o1 paid, o2 unpaid (its 0.3 s timer cancels it), o3 paid and shipped, o4 unknown."""
    runner = client.machine(order_machine())
    await runner.start()
    await client.publish("orders.submitted", {"order_id": "o1", "amount": 5})
    await client.publish("orders.submitted", {"order_id": "o2", "amount": 5,
                                              "pay_within_s": 0.3})
    await client.publish("orders.submitted", {"order_id": "o3", "amount": 7})
    await client.publish("orders.paid", {"order_id": "o1", "amount": 5})
    await client.publish("orders.paid", {"order_id": "o3", "amount": 7})
    await client.publish("orders.shipped", {"order_id": "o3"})
    await client.publish("orders.paid", {"order_id": "o4", "amount": 1})

    async def settled() -> bool:
        return [(i.key, i.state) for i in await runner.list()] == [
            ("o1", "paid"), ("o2", "cancelled"), ("o3", "shipped")]

    await until(settled)
    await runner.stop()


async def test_a_replay_rebuilds_what_the_runner_committed(tmp_path: Path) -> None:
    async with tidings.connect(str(tmp_path / "data")) as client:
        await client.keep_events(max_age="1h")
        await _orders(client)
        report = await client.machine(order_machine()).replay("first")
        assert report.matches, report.differences
        assert {k: i.state for k, i in report.rebuilt.items()} == {
            "o1": "paid", "o2": "cancelled", "o3": "shipped"}
        assert (report.events, report.applied, report.timers, report.unaccepted) == \
            (7, 7, 1, 1)  # o2's timer fired in the rebuild; o4's payment taken by no state
        assert report.written_by == {1: 3}
        stored = await client.machine(order_machine()).get("o3")
        assert stored is not None and report.rebuilt["o3"].data == stored.data


async def test_a_changed_definition_is_checked_and_then_applied(tmp_path: Path) -> None:
    async with tidings.connect(str(tmp_path / "data")) as client:
        await client.keep_events(max_age="1h")
        await _orders(client)
        shipping = 0
        while (m := await client.get("shipping")) is not None:
            shipping += 1
            await m.ack()
        changed = client.machine(order_machine(version=2, surcharge=1))
        report = await changed.replay("first")
        assert report.differences == [Difference("o1", "state", "paid", "submitted"),
                                      Difference("o3", "state", "shipped", "submitted")]
        assert report.written_by == {1: 3} and report.written == 0
        assert (await changed.get("o1")).state == "paid"  # type: ignore[union-attr]
        report = await changed.replay("first", apply=True)
        assert report.written == 2 and not report.skipped
        o1 = await changed.get("o1")
        assert o1 is not None and (o1.state, o1.version, o1.written_by) == ("submitted", 3, 2)
        assert o1.audit[-1]["by"] == "replay" and o1.audit[-1]["from"] == "paid"
        assert "payment" in o1.timers  # its payment timer armed again
        assert (await changed.replay("first")).matches
        assert await client.get("shipping") is None  # a replay sends nothing
        assert shipping == 2


async def test_a_replay_needs_the_events_kept(tmp_path: Path) -> None:
    async with tidings.connect(str(tmp_path / "data")) as client:
        with pytest.raises(NotFoundError, match="keep_events"):
            await client.machine(order_machine()).replay("first")
