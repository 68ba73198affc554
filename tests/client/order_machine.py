"""The order flow the state machine tests share: new -> submitted -> paid -> shipped, with a
payment timer that cancels a submitted order nobody pays; and the same flow written plainly
(:func:`model`), which the tests compare the machine with."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from tidings.client.machine import Event, Machine, Output


@dataclass
class Order:
    amount: int = 0
    paid: int = 0
    notes: list[str] = field(default_factory=list)


def order_machine(payment_s: float = 1800, *, version: int = 1,
                  surcharge: int = 0) -> Machine[Order]:
    """The flow; a later ``version`` may ask ``surcharge`` more than the amount to pay."""
    m: Machine[Order] = Machine("order", key="order_id", initial="new", data=Order,
                                final=["shipped", "cancelled"], version=version)

    @m.transition("new", on="orders.submitted", to="submitted")
    def submitted(data: Order, event: Event, out: Output) -> None:
        data.amount = event.body["amount"]
        out.schedule("payment", after_s=event.body.get("pay_within_s", payment_s))

    @m.transition("submitted", on="orders.paid", to="paid",
                  guard=lambda data, event: event.body["amount"] >= data.amount + surcharge)
    def paid(data: Order, event: Event, out: Output) -> None:
        data.paid = event.body["amount"]
        out.cancel("payment")
        out.send("shipping", {"order_id": event.body["order_id"]})

    @m.transition("submitted", on="timer:payment", to="cancelled")
    def timed_out(data: Order, event: Event, out: Output) -> None:
        data.notes.append("payment did not come")
        key = (event.body or {}).get("order_id") or event.headers.get("x-machine-key")
        out.publish("orders.cancelled", {"order_id": key, "reason": "timeout"})

    @m.transition("paid", on="orders.shipped", to="shipped")
    def shipped(data: Order, event: Event, out: Output) -> None:
        data.notes.append("shipped")

    return m


def model(events: list[tuple[str, str, int]]) -> tuple[str | None, int, list[str]]:
    """The same order flow written plainly: (state, transitions applied, messages sent)."""
    state: str | None = None
    seen: set[str] = set()
    timer: str | None = None
    amount, applied, sent = 0, 0, []
    for topic, ident, value in events:
        if ident in seen:
            continue
        if topic == "timer:payment":
            if state != "submitted" or timer != ident:
                continue
            state, timer = "cancelled", None
            sent.append("orders.cancelled")
        elif topic == "orders.submitted" and state is None:
            state, amount, timer = "submitted", value, "order:o1:payment:1"
        elif topic == "orders.paid" and state == "submitted" and value >= amount:
            state, timer = "paid", None
            sent.append("shipping")
        elif topic == "orders.shipped" and state == "paid":
            state = "shipped"
        else:
            continue
        seen.add(ident)
        applied += 1
    return state, applied, sent


async def three_orders_one_paid(client: Any) -> Any:
    """Start the order machine on ``client``, submit o0, o1, o2 and pay o1; return the runner
    once the instances are there (submitted, paid, submitted)."""
    runner = client.machine(order_machine())
    await runner.start()
    for i in range(3):
        await client.publish("orders.submitted", {"order_id": f"o{i}", "amount": 2})
    await client.publish("orders.paid", {"order_id": "o1", "amount": 2})
    for _ in range(500):
        if [i.state for i in await runner.list()] == ["submitted", "paid", "submitted"]:
            return runner
        await asyncio.sleep(0.02)
    raise AssertionError("the orders did not settle")
