"""What a client transport hands out with each delivery, and gets back to settle it.

One :class:`Token` per delivery on every remote transport (the engine core's NATS and Redis
engines, and AMQP): the queue it came from, the message, its failed deliveries so far, the
transport's own handle (a JetStream message, a Redis stream entry, an AMQP channel and delivery
tag) and the consumer holding it. A scan of waiting entries yields :class:`Stored`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tidings.message import Message


@dataclass(eq=False, slots=True)
class Token:
    """A delivery until it is settled (compared and hashed by identity)."""

    queue: str
    message: Message
    #: Failed deliveries before this one.
    failures: int
    #: When it entered the queue, epoch ms (0 when the engine does not say).
    enqueued_ms: float
    #: The transport's own handle to settle it with.
    handle: Any
    #: The consumer that holds it (None for a get).
    consumer: Any = None
    settled: bool = False


@dataclass(slots=True)
class Stored:
    """A waiting entry a scan found: its message and the transport's handle to it."""

    message: Message
    handle: Any
