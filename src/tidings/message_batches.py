"""Many messages in one AMQP content body: the tidings batch extension's packed format.

A tidings client talking to a tidings server (``tidings serve``, or the owner of a shared data
directory) sends the messages of one loop turn as one publish to ``amq.tidings.control``
(routing key ``publish-batch``) and takes a batch consumer's deliveries as one
``basic.deliver`` per turn (``amqp/extensions.py`` says how). Per message, the work that goes
away is what the wire and the AMQP clients spend per frame; what stays is the content header
each message has anyway, written and read by :mod:`tidings.content_header`, the codec the
server's frames use.

The body is a run of entries, all numbers big-endian:

- a publish: routing key (1-byte length, UTF-8), the message's content header frame (AMQP's
  frame: type 2, channel, size, payload, 0xCE; its body size says how long the body is), body.
- a delivery: delivery tag (8 bytes), redelivered (1 byte), exchange and routing key (1-byte
  length each), content header frame, body.

A body that does not parse whole is refused with :class:`ValueError`, nothing of it taken.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from tidings.content_header import (
    FRAME_HEAD,
    decode_content_header,
    encode_header_frame,
    put_short,
    short_string,
)
from tidings.message import Message

#: In the server's capabilities: it takes batches (a client sends them only then).
CAPABILITY = "tidings.batches"
#: The operation (routing key on ``amq.tidings.control``) that publishes a batch; its headers
#: name the exchange and whether unroutable messages come back.
PUBLISH_BATCH = "publish-batch"
EXCHANGE_HEADER, MANDATORY_HEADER = "x-exchange", "x-mandatory"
#: On the ``basic.return`` of a batch some of whose messages were not taken: their positions.
RETURNED_HEADER, REFUSED_HEADER = "x-tidings-returned", "x-tidings-refused"
#: ``basic.consume`` argument asking for batch deliveries; header on each batch delivered.
BATCH_ARGUMENT = BATCH_HEADER = "x-tidings-batch"
#: Most messages one batch may hold (a client sends far fewer).
MAX_BATCH_MESSAGES = 10_000

_DELIVERY_HEAD = struct.Struct(">QB")
_FRAME_END = 0xCE

#: One delivery of a batch: delivery tag, redelivered, the message, extra headers to send.
DeliveryEntry = tuple[int, bool, Message, dict[str, Any] | None]


def pack_publishes(entries: Iterable[tuple[str, Message]]) -> bytes:
    """``(routing key, message)`` pairs as one batch body."""
    parts: list[bytes] = []
    for routing_key, message in entries:
        put_short(parts, routing_key)
        parts.append(encode_header_frame(0, message, None, len(message.body)))
        parts.append(message.body)
    return b"".join(parts)


def pack_deliveries(entries: Iterable[DeliveryEntry]) -> bytes:
    """Deliveries as one batch body."""
    parts: list[bytes] = []
    for tag, redelivered, message, extra in entries:
        parts.append(_DELIVERY_HEAD.pack(tag, 1 if redelivered else 0))
        put_short(parts, message.exchange)
        put_short(parts, message.routing_key)
        parts.append(encode_header_frame(0, message, extra, len(message.body)))
        parts.append(message.body)
    return b"".join(parts)


def _short(body: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(body):
        raise ValueError("a batch entry ends inside its names")
    value, end = short_string(body, pos)
    return value, end


def _content(body: bytes, pos: int) -> tuple[Message, int]:
    """The content header frame and body at ``pos``: the message and where the next begins."""
    if pos + FRAME_HEAD.size > len(body):
        raise ValueError("a batch entry ends before its content header")
    kind, _, size = FRAME_HEAD.unpack_from(body, pos)
    end = pos + FRAME_HEAD.size + size + 1
    if kind != 2 or end > len(body) or body[end - 1] != _FRAME_END:
        raise ValueError("a batch entry's content header frame is malformed")
    header = decode_content_header(body[pos:end])
    body_end = end + header.body_size
    if body_end > len(body):
        raise ValueError("a batch entry's body runs past the batch")
    message = header.message
    message.body = body[end:body_end]
    return message, body_end


def unpack_publishes(body: bytes) -> list[tuple[str, Message]]:
    """A batch body's ``(routing key, message)`` pairs; ValueError unless it parses whole."""
    out: list[tuple[str, Message]] = []
    pos = 0
    while pos < len(body):
        if len(out) == MAX_BATCH_MESSAGES:
            raise ValueError(f"a batch holds at most {MAX_BATCH_MESSAGES} messages")
        routing_key, pos = _short(body, pos)
        message, pos = _content(body, pos)
        message.routing_key = routing_key
        out.append((routing_key, message))
    return out


def unpack_deliveries(body: bytes) -> list[tuple[int, bool, Message]]:
    """A batch delivery's ``(delivery tag, redelivered, message)`` entries."""
    out: list[tuple[int, bool, Message]] = []
    pos = 0
    while pos < len(body):
        if pos + _DELIVERY_HEAD.size > len(body):
            raise ValueError("a batch entry ends inside its delivery tag")
        tag, flags = _DELIVERY_HEAD.unpack_from(body, pos)
        exchange, pos = _short(body, pos + _DELIVERY_HEAD.size)
        routing_key, pos = _short(body, pos)
        message, pos = _content(body, pos)
        message.exchange, message.routing_key = exchange, routing_key
        out.append((tag, bool(flags & 1), message))
    return out
