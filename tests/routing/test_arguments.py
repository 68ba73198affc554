"""Queue arguments out of range are refused at declare time (406, as RabbitMQ), and upkeep
survives whatever a queue does: a failing tick is logged and the next one still comes."""

from __future__ import annotations

import logging

import pytest

from tidings.errors import InvalidArgumentError
from tidings.message import Message
from tidings.routing.broker import Broker
from tidings.testing import FakeClock


@pytest.mark.parametrize(("argument", "value"), [
    ("x-expires", 10**400), ("x-expires", 2**32), ("x-message-ttl", 2**32),
    ("x-consumer-timeout", 2**40), ("x-max-length", 2**63), ("x-max-priority", 256),
    ("x-expires", 1e400), ("x-max-length", -1), ("x-delivery-limit", True),
])
def test_out_of_range_arguments_are_refused_with_406(broker: Broker, argument: str,
                                                      value: object) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        broker.declare_queue("/", "q", arguments={argument: value})
    assert e.value.reply_code == 406 and argument in str(e.value)
    assert len(str(e.value)) < 200
    assert broker.find_queue("/", "q") is None


def test_the_largest_timers_rabbitmq_takes_are_taken(broker: Broker) -> None:
    broker.declare_queue("/", "q", arguments={"x-expires": 2**32 - 1,
                                              "x-message-ttl": 2**32 - 1})
    broker.publish("/", "", Message(b"x", "q", expiration=str(2**32 - 1)))
    with pytest.raises(InvalidArgumentError):
        broker.publish("/", "", Message(b"x", "q", expiration="9" * 500))


def test_a_failing_tick_is_logged_and_upkeep_goes_on(
    broker: Broker, clock: FakeClock, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker.declare_queue("/", "short", arguments={"x-expires": 3000})
    calls = []

    def broken(now: float) -> None:
        calls.append(now)
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(broker.upkeep, "_check_consumer_timeouts", broken)
    with caplog.at_level(logging.ERROR, "tidings.broker"):
        clock.advance(1.5)
    assert calls and "upkeep failed" in caplog.text
    monkeypatch.undo()
    clock.advance(5)
    assert broker.find_queue("/", "short") is None  # x-expires still runs


def test_names_are_short_strings_of_any_utf8(broker: Broker) -> None:
    broker.declare_queue("/", "é" * 127)  # 254 bytes
    broker.declare_exchange("/", "😀" * 63, "fanout")  # 252 bytes
    for declare in (lambda: broker.declare_queue("/", "é" * 128),
                    lambda: broker.declare_exchange("/", "x" * 256, "direct")):
        with pytest.raises(InvalidArgumentError, match="longer than 255 bytes"):
            declare()
