"""Small helpers for broker tests: publish a body, collect deliveries."""

from __future__ import annotations

from typing import Any

from tidings.message import Message
from tidings.routing.broker import Broker, PublishResult
from tidings.routing.session import Delivery, Session


def pub(broker: Broker, exchange: str, key: str, body: bytes | str = b"", *,
        vhost: str = "/", mandatory: bool = False, **props: Any) -> PublishResult:
    data = body.encode() if isinstance(body, str) else body
    return broker.publish(vhost, exchange, Message(data, key, **props), mandatory=mandatory)


def bodies(deliveries: list[Delivery]) -> list[bytes]:
    return [d.message.body for d in deliveries]


def drain(broker: Broker, session: Session, queue: str, *, ack: bool = True) -> list[bytes]:
    out = []
    while (d := broker.get(session, queue)) is not None:
        out.append(d.message.body)
        if ack:
            session.ack(d.delivery_tag)
    return out
