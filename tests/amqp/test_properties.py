"""Basic.Properties ⇄ Message at the AMQP edge: what a client sends comes back the same."""

from __future__ import annotations

import datetime

from pamqp.commands import Basic

from tidings.basic_properties import to_message, to_properties
from tidings.dead_letters import dead_letter_message
from tidings.message import Message


def test_properties_round_trip() -> None:
    when = datetime.datetime(2026, 11, 27, 12, 30, 5)
    props = Basic.Properties(content_type="application/json", headers={"a": [1, "b"]},
                             delivery_mode=2, priority=3, message_id="m1", timestamp=when,
                             message_type="order.created", app_id="shop")
    message = to_message(props, b"{}", "ex", "rk")
    assert message.persistent and message.timestamp == int(when.replace(
        tzinfo=datetime.UTC).timestamp())
    back = to_properties(message)
    for name in ("content_type", "headers", "delivery_mode", "priority", "message_id",
                 "timestamp", "message_type", "app_id"):
        assert getattr(back, name) == getattr(props, name), name


def test_x_death_time_is_a_timestamp_on_the_wire_and_seconds_inside() -> None:
    dead = dead_letter_message(Message(b"x", "work"), "work", "rejected", 1_800_000_000.5, None)
    wire = to_properties(dead).headers["x-death"][0]["time"]
    assert wire == datetime.datetime(2027, 1, 15, 8, 0)
    # a client republishing the dead letter sends the datetime back: inside it is seconds
    # again, so the next death of the same (queue, reason) counts on the same entry
    again = to_message(to_properties(dead), b"x", "", "work")
    assert again.headers is not None and again.headers["x-death"][0]["time"] == 1_800_000_000
    twice = dead_letter_message(again, "work", "rejected", 1_800_000_100.0, None)
    assert [(d["count"], d["time"]) for d in twice.headers["x-death"]] == [(2, 1_800_000_100)]
