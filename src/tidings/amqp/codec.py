"""The hot path's frames by hand; pamqp for everything else.

A message crossing ``tidings serve`` costs four codec steps: basic.publish and its content
header in, basic.deliver and its content out, and basic.ack back in (and, with confirms,
basic.ack out). pamqp decodes and encodes any frame generically, attribute by attribute; here
the method frames are read and written with one ``struct`` call for their fixed part, and the
content header by :mod:`tidings.content_header` (shared with the client's packed batches).
Anything unusual falls back to pamqp, so the two paths cannot disagree:
``tests/amqp/test_codec.py`` checks byte for byte that this module writes what pamqp writes
and reads what pamqp reads.
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import commands
from pamqp.base import Frame as Method

from tidings.content_header import (
    ContentHeader,
    decode_content_header,
    encode_header_frame,
    put_short,
    short_string,
)
from tidings.message import Message

__all__ = ["ContentHeader", "decode_content_header", "decode_method", "encode_ack",
           "encode_content", "encode_deliver"]

B = commands.Basic

_BODY_HEAD = struct.Struct(">BHI")
_U64_BIT = struct.Struct(">QB")
_ACK = struct.Struct(">BHIHHQBB")
#: basic.ack / nack / reject: frame head, class and method ids, a tag and a bits octet, end.
_SETTLE_FRAME_BYTES = 7 + 4 + 9 + 1

PUBLISH, ACK, REJECT, NACK, DELIVER = 40, 80, 90, 120, 60
_BASIC = 60

# -- in -----------------------------------------------------------------------------------------


def decode_method(frame: bytes) -> Method | None:
    """basic.publish / ack / nack / reject from a whole method frame; None for any other
    method (pamqp reads those)."""
    if frame[7] != 0 or frame[8] != _BASIC or frame[9] != 0:
        return None
    method_id = frame[10]
    if method_id in (ACK, NACK, REJECT) and len(frame) != _SETTLE_FRAME_BYTES:
        raise ValueError(f"basic method {method_id} of {len(frame) - 8} bytes, not 13")
    if method_id == PUBLISH:
        exchange, pos = short_string(frame, 13)  # after the ticket
        routing_key, pos = short_string(frame, pos)
        if pos >= len(frame) - 1:
            raise ValueError("basic.publish ends before its bits")
        bits = frame[pos]
        m: Any = B.Publish.__new__(B.Publish)
        m.ticket, m.exchange, m.routing_key = 0, exchange, routing_key
        m.mandatory, m.immediate = bool(bits & 1), bool(bits & 2)
        return m  # type: ignore[no-any-return]
    if method_id == ACK:
        tag, bits = _U64_BIT.unpack_from(frame, 11)
        m = B.Ack.__new__(B.Ack)
        m.delivery_tag, m.multiple = tag, bool(bits & 1)
        return m  # type: ignore[no-any-return]
    if method_id == NACK:
        tag, bits = _U64_BIT.unpack_from(frame, 11)
        m = B.Nack.__new__(B.Nack)
        m.delivery_tag, m.multiple, m.requeue = tag, bool(bits & 1), bool(bits & 2)
        return m  # type: ignore[no-any-return]
    if method_id == REJECT:
        tag, bits = _U64_BIT.unpack_from(frame, 11)
        m = B.Reject.__new__(B.Reject)
        m.delivery_tag, m.requeue = tag, bool(bits & 1)
        return m  # type: ignore[no-any-return]
    return None


# -- out ----------------------------------------------------------------------------------------


def encode_content(channel: int, message: Message, extra_headers: dict[str, Any] | None,
                   frame_max: int) -> bytes:
    """Content header and body frames for ``message``, no frame above ``frame_max``."""
    body = message.body
    parts = [encode_header_frame(channel, message, extra_headers, len(body))]
    chunk = frame_max - 8
    if len(body) <= chunk:
        if body:
            parts += (_BODY_HEAD.pack(3, channel, len(body)), body, b"\xce")
    else:
        for start in range(0, len(body), chunk):
            piece = body[start:start + chunk]
            parts += (_BODY_HEAD.pack(3, channel, len(piece)), piece, b"\xce")
    return b"".join(parts)


def encode_deliver(channel: int, consumer_tag: str, delivery_tag: int, redelivered: bool,
                   message: Message, extra_headers: dict[str, Any] | None,
                   frame_max: int) -> bytes:
    """basic.deliver with its content: what one delivery puts on the wire."""
    parts: list[bytes] = [b"\x00\x3c\x00\x3c"]
    put_short(parts, consumer_tag)
    parts.append(_U64_BIT.pack(delivery_tag, 1 if redelivered else 0))
    put_short(parts, message.exchange)
    put_short(parts, message.routing_key)
    args = b"".join(parts)
    return b"".join((_BODY_HEAD.pack(1, channel, len(args)), args, b"\xce",
                     encode_content(channel, message, extra_headers, frame_max)))


def encode_ack(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    """basic.ack (a publisher confirm)."""
    return _ACK.pack(1, channel, 13, _BASIC, ACK, delivery_tag, 1 if multiple else 0, 0xCE)
