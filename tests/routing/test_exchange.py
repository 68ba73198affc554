"""Routing through every exchange type, e2e bindings and alternate exchanges."""

from __future__ import annotations

import pytest

from tidings.errors import (
    AccessRefusedError,
    CommandInvalidError,
    InvalidArgumentError,
    NotFoundError,
    PreconditionFailedError,
)
from tidings.message import Message
from tidings.routing.broker import Broker
from tidings.routing.exchange import headers_match

from .helpers import drain, pub


def queues(broker: Broker, *names: str) -> None:
    for name in names:
        broker.declare_queue("/", name)


async def test_default_exchange_routes_by_queue_name(broker: Broker) -> None:
    queues(broker, "a", "b")
    assert pub(broker, "", "a", "x").routed == 1
    assert pub(broker, "", "nope", "y").routed == 0
    s = broker.open_session()
    assert drain(broker, s, "a") == [b"x"] and drain(broker, s, "b") == []


async def test_direct_fanout_topic_route_to_bound_queues(broker: Broker) -> None:
    queues(broker, "d1", "f1", "f2", "t1", "t2")
    broker.declare_exchange("/", "d", "direct")
    broker.declare_exchange("/", "f", "fanout")
    broker.declare_exchange("/", "t", "topic")
    broker.bind("/", "d", "d1", "red")
    broker.bind("/", "f", "f1")
    broker.bind("/", "f", "f2", "ignored")
    broker.bind("/", "t", "t1", "orders.*")
    broker.bind("/", "t", "t2", "orders.#")
    assert pub(broker, "d", "red").routed == 1 and pub(broker, "d", "blue").routed == 0
    assert pub(broker, "f", "any").routed == 2
    assert pub(broker, "t", "orders.eu.created").routed == 1
    assert pub(broker, "t", "orders.created").routed == 2
    broker.unbind("/", "t", "t2", "orders.#")
    assert pub(broker, "t", "orders.created").routed == 1


async def test_headers_exchange_all_and_any(broker: Broker) -> None:
    queues(broker, "all", "any")
    broker.declare_exchange("/", "h", "headers")
    broker.bind("/", "h", "all", "", {"x-match": "all", "format": "pdf", "type": "report"})
    broker.bind("/", "h", "any", "", {"x-match": "any", "format": "pdf", "type": "log"})
    both = Message(b"", headers={"format": "pdf", "type": "report"})
    assert broker.publish("/", "h", both).routed == 2
    only_log = Message(b"", headers={"type": "log"})
    assert broker.publish("/", "h", only_log).routed == 1
    assert broker.publish("/", "h", Message(b"")).routed == 0


def test_headers_match_rules() -> None:
    assert headers_match({}, {})
    assert headers_match({"x-match": "any", "a": 1}, {"a": 1})
    assert not headers_match({"x-match": "all", "a": 1, "b": 2}, {"a": 1})
    assert headers_match({"a": None}, {"a": "anything"})
    assert headers_match({"x-match": "all", "x-k": 1}, {"x-k": 2})  # x- arguments ignored
    assert not headers_match({"x-match": "all-with-x", "x-k": 1}, {"x-k": 2})


async def test_exchange_to_exchange_bindings_and_cycles(broker: Broker) -> None:
    queues(broker, "q")
    broker.declare_exchange("/", "up", "fanout")
    broker.declare_exchange("/", "down", "direct")
    broker.bind("/", "up", "down", to_exchange=True)
    broker.bind("/", "down", "up", to_exchange=True)  # a cycle must not loop
    broker.bind("/", "down", "q", "k")
    assert pub(broker, "up", "k").routed == 1
    assert pub(broker, "up", "other").routed == 0


async def test_alternate_exchange_gets_unroutable_messages(broker: Broker) -> None:
    queues(broker, "unrouted", "main")
    broker.declare_exchange("/", "ae", "fanout")
    broker.bind("/", "ae", "unrouted")
    broker.declare_exchange("/", "x", "direct", arguments={"alternate-exchange": "ae"})
    broker.bind("/", "x", "main", "good")
    pub(broker, "x", "good", "1")
    pub(broker, "x", "bad", "2")
    s = broker.open_session()
    assert drain(broker, s, "main") == [b"1"] and drain(broker, s, "unrouted") == [b"2"]


async def test_mandatory_unroutable_is_returned(broker: Broker) -> None:
    result = broker.publish("/", "amq.direct", Message(b"x", "nowhere"), mandatory=True)
    assert result.returned and result.routed == 0
    assert not broker.publish("/", "amq.direct", Message(b"x", "nowhere")).returned


async def test_declare_rules_match_rabbitmq(broker: Broker) -> None:
    broker.declare_exchange("/", "x", "direct", durable=True)
    broker.declare_exchange("/", "x", "direct", durable=True)  # idempotent
    with pytest.raises(PreconditionFailedError, match="inequivalent arg 'type' for exchange 'x'"):
        broker.declare_exchange("/", "x", "fanout")
    with pytest.raises(AccessRefusedError):
        broker.declare_exchange("/", "amq.mine", "direct")
    with pytest.raises(NotFoundError, match="no exchange 'missing' in vhost '/'"):
        broker.declare_exchange("/", "missing", passive=True)
    with pytest.raises(CommandInvalidError, match="unknown exchange type"):
        broker.declare_exchange("/", "y", "nonsense")
    with pytest.raises(AccessRefusedError):
        broker.bind("/", "", "q")
    with pytest.raises(InvalidArgumentError):
        broker.declare_exchange("/", "dl", "x-delayed-message")
    broker.declare_exchange("/", "internal", "fanout", internal=True)
    with pytest.raises(AccessRefusedError, match="internal exchange"):
        pub(broker, "internal", "k")


async def test_delete_exchange_if_unused(broker: Broker) -> None:
    queues(broker, "q")
    broker.declare_exchange("/", "x", "fanout")
    broker.bind("/", "x", "q")
    with pytest.raises(PreconditionFailedError, match="in use"):
        broker.delete_exchange("/", "x", if_unused=True)
    broker.delete_exchange("/", "x")
    with pytest.raises(NotFoundError):
        broker.declare_exchange("/", "x", passive=True)
