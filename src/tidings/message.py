"""The one protocol-neutral message inside tidings and the stages it passes through.

Faces convert at their edges (AMQP Basic.Properties, HTTP JSON, client arguments) into
:class:`Message`; routing and queues see nothing else. Property names follow AMQP 0-9-1's
``basic`` class because that is the richest face, so the AMQP server maps them one to one.
A message waiting in a queue is a :class:`Record`; one handed to a consumer a
:class:`Delivery`. Their bytes forms are :mod:`tidings.codecs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The properties besides the body and routing (the bytes forms keep those that are set).
PROPERTY_FIELDS = (
    "content_type",
    "content_encoding",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
)


@dataclass(slots=True)
class Message:
    """A message as published: body, routing information and properties."""

    body: bytes
    routing_key: str = ""
    exchange: str = ""
    headers: dict[str, Any] | None = None
    persistent: bool = True
    content_type: str | None = None
    content_encoding: str | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    #: Per-message TTL in milliseconds, as a decimal string (AMQP's convention).
    expiration: str | None = None
    message_id: str | None = None
    #: Seconds since the epoch.
    timestamp: int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None


@dataclass(slots=True)
class Delivery:
    """A message handed to a consumer (or returned by a get), until it is settled.

    The same stage everywhere: the broker's sessions hand these to the faces, and every client
    transport hands them to the client, which wraps each in a ``ReceivedMessage`` for user code.
    """

    message: Message
    queue: str
    #: What settles it: a session's AMQP delivery tag, or a transport's own handle.
    delivery_tag: Any
    redelivered: bool
    #: Failed deliveries before this one (RabbitMQ's ``x-delivery-count``).
    delivery_count: int
    consumer_tag: str | None = None
    #: Ready messages left in the queue (``basic.get-ok``'s message-count).
    message_count: int = 0


@dataclass(slots=True)
class Record:
    """A message together with what a queue remembers about it across restarts."""

    message: Message
    #: Wall-clock seconds when the message entered the queue (waiting time starts here).
    enqueued_at: float
    #: Deliveries so far (RabbitMQ's ``x-delivery-count`` counts the ones before this one).
    delivery_count: int = 0
    #: Wall-clock seconds after which the message is dead (TTL), or None.
    expires_at: float | None = None
    #: For delayed entries: when they are due, and where they go then.
    due_at: float | None = None
    target: dict[str, str] = field(default_factory=dict)
