"""The hot path's frames by hand; pamqp for everything else.

A message crossing ``tidings serve`` costs four codec steps: basic.publish and its content
header in, basic.deliver and its content out, and basic.ack back in (and, with confirms,
basic.ack out). pamqp decodes and encodes any frame generically, attribute by attribute, and
goes through ``Basic.Properties`` and datetimes on the way; here those frames are read and
written with one ``struct`` call for their fixed part, straight from and into a
:class:`~tidings.message.Message`. Field tables (``headers``) still go through pamqp's table
codec, and anything unusual (a continuation flag, a millisecond timestamp, a string that is
not UTF-8) falls back to pamqp, so the two paths cannot disagree: ``tests/amqp/test_codec.py``
checks byte for byte, over Hypothesis-generated properties and headers, that this module
writes what pamqp writes and reads what pamqp reads.
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import commands, decode, encode
from pamqp import frame as pframe
from pamqp.base import Frame as Method

from tidings.basic_properties import headers_in, headers_out, to_message, to_properties
from tidings.message import Message

B = commands.Basic

_HEADER_HEAD = struct.Struct(">BHIHHQH")  # + class id, weight, body size, property flags
_BODY_HEAD = struct.Struct(">BHI")
_U64 = struct.Struct(">Q")
_U64_BIT = struct.Struct(">QB")
_ACK = struct.Struct(">BHIHHQBB")
#: basic.ack / nack / reject: frame head, class and method ids, a tag and a bits octet, end.
_SETTLE_FRAME_BYTES = 7 + 4 + 9 + 1

PUBLISH, ACK, REJECT, NACK, DELIVER = 40, 80, 90, 120, 60
_BASIC = 60

# Property flags, in the order they are written (AMQP 0-9-1 §4.2.6.1, pamqp's flags).
_CONTENT_TYPE, _CONTENT_ENCODING, _HEADERS, _DELIVERY_MODE = 0x8000, 0x4000, 0x2000, 0x1000
_PRIORITY, _CORRELATION_ID, _REPLY_TO, _EXPIRATION = 0x0800, 0x0400, 0x0200, 0x0100
_MESSAGE_ID, _TIMESTAMP, _TYPE, _USER_ID, _APP_ID, _CLUSTER_ID = (
    0x0080, 0x0040, 0x0020, 0x0010, 0x0008, 0x0004)


class ContentHeader:
    """A content header as the connection needs it: the body size and the message it opens
    (body, exchange and routing key are filled in when the content is complete)."""

    __slots__ = ("body_size", "message")

    def __init__(self, body_size: int, message: Message) -> None:
        self.body_size, self.message = body_size, message


# -- in -----------------------------------------------------------------------------------------


def _short(frame: bytes, pos: int) -> tuple[str, int]:
    """A short string of a whole frame (whose last byte is the frame end, never data)."""
    end = pos + 1 + frame[pos]
    if end >= len(frame):
        raise ValueError("short string runs past the frame")
    return frame[pos + 1:end].decode(), end


def decode_method(frame: bytes) -> Method | None:
    """basic.publish / ack / nack / reject from a whole method frame; None for any other
    method (pamqp reads those)."""
    if frame[7] != 0 or frame[8] != _BASIC or frame[9] != 0:
        return None
    method_id = frame[10]
    if method_id in (ACK, NACK, REJECT) and len(frame) != _SETTLE_FRAME_BYTES:
        raise ValueError(f"basic method {method_id} of {len(frame) - 8} bytes, not 13")
    if method_id == PUBLISH:
        exchange, pos = _short(frame, 13)  # after the ticket
        routing_key, pos = _short(frame, pos)
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


def decode_content_header(frame: bytes) -> ContentHeader:
    """A whole content-header frame (7-byte head, payload, frame end) into a message."""
    try:
        return _decode_header(frame)
    except Exception:  # not the common shape: pamqp reads it, or says why it cannot
        _, _, value = pframe.unmarshal(frame)
        props = value.properties  # type: ignore[union-attr]
        return ContentHeader(value.body_size,  # type: ignore[union-attr]
                             to_message(props, b"", "", ""))


def _decode_header(frame: bytes) -> ContentHeader:
    _, _, _, class_id, _, body_size, flags = _HEADER_HEAD.unpack_from(frame)
    if class_id != _BASIC or flags & 1:
        raise ValueError("not a basic content header with one flags word")
    # Flag by flag rather than a loop over a table: a loop with setattr measured 1.6x
    # slower, and this runs for every publish.
    pos = 21
    m = Message(b"")
    if flags & _CONTENT_TYPE:
        m.content_type, pos = _short(frame, pos)
    if flags & _CONTENT_ENCODING:
        m.content_encoding, pos = _short(frame, pos)
    if flags & _HEADERS:
        used, table = decode.field_table(frame[pos:])
        pos += used
        m.headers = headers_in(table) if table else None
    m.persistent = False
    if flags & _DELIVERY_MODE:
        m.persistent = frame[pos] == 2
        pos += 1
    if flags & _PRIORITY:
        m.priority = frame[pos]
        pos += 1
    if flags & _CORRELATION_ID:
        m.correlation_id, pos = _short(frame, pos)
    if flags & _REPLY_TO:
        m.reply_to, pos = _short(frame, pos)
    if flags & _EXPIRATION:
        m.expiration, pos = _short(frame, pos)
    if flags & _MESSAGE_ID:
        m.message_id, pos = _short(frame, pos)
    if flags & _TIMESTAMP:
        (seconds,) = _U64.unpack_from(frame, pos)
        if seconds > 0xFFFFFFFF:  # pamqp reads these as milliseconds
            raise ValueError("a timestamp pamqp converts")
        m.timestamp = seconds
        pos += 8
    if flags & _TYPE:
        m.type, pos = _short(frame, pos)
    if flags & _USER_ID:
        m.user_id, pos = _short(frame, pos)
    if flags & _APP_ID:
        m.app_id, pos = _short(frame, pos)
    if flags & _CLUSTER_ID:
        _, pos = _short(frame, pos)  # read and dropped, as RabbitMQ does
    if pos != len(frame) - 1:
        raise ValueError("properties do not fill the frame")
    return ContentHeader(body_size, m)


# -- out ----------------------------------------------------------------------------------------


def _put_short(parts: list[bytes], value: str) -> None:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError("short string longer than 255 bytes")
    parts.append(bytes((len(raw),)))
    parts.append(raw)


def encode_properties(message: Message, extra_headers: dict[str, Any] | None) -> bytes:
    """The property flags and list of a content header, as pamqp writes ``to_properties``."""
    flags = _DELIVERY_MODE
    parts: list[bytes] = []
    m = message
    if m.content_type:
        flags |= _CONTENT_TYPE
        _put_short(parts, m.content_type)
    if m.content_encoding:
        flags |= _CONTENT_ENCODING
        _put_short(parts, m.content_encoding)
    headers = headers_out(m.headers, extra_headers)
    if headers is not None:
        flags |= _HEADERS
        parts.append(encode.field_table(headers))
    parts.append(b"\x02" if m.persistent else b"\x01")
    if m.priority is not None:
        flags |= _PRIORITY
        parts.append(bytes((m.priority,)))
    for flag, value in ((_CORRELATION_ID, m.correlation_id), (_REPLY_TO, m.reply_to),
                        (_EXPIRATION, m.expiration), (_MESSAGE_ID, m.message_id)):
        if value:
            flags |= flag
            _put_short(parts, value)
    if m.timestamp is not None:
        flags |= _TIMESTAMP
        parts.append(_U64.pack(m.timestamp))
    for flag, value in ((_TYPE, m.type), (_USER_ID, m.user_id), (_APP_ID, m.app_id)):
        if value:
            flags |= flag
            _put_short(parts, value)
    return flags.to_bytes(2, "big") + b"".join(parts)


def encode_content(channel: int, message: Message, extra_headers: dict[str, Any] | None,
                   frame_max: int) -> bytes:
    """Content header and body frames for ``message``, no frame above ``frame_max``."""
    body = message.body
    try:
        props = encode_properties(message, extra_headers)
    except Exception:  # a value the fast path does not write (pamqp says what is wrong)
        props = to_properties(message, extra_headers).marshal()
    size = 12 + len(props)
    parts = [_BODY_HEAD.pack(2, channel, size), b"\x00\x3c\x00\x00", _U64.pack(len(body)),
             props, b"\xce"]
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
    _put_short(parts, consumer_tag)
    parts.append(_U64_BIT.pack(delivery_tag, 1 if redelivered else 0))
    _put_short(parts, message.exchange)
    _put_short(parts, message.routing_key)
    args = b"".join(parts)
    return b"".join((_BODY_HEAD.pack(1, channel, len(args)), args, b"\xce",
                     encode_content(channel, message, extra_headers, frame_max)))


def encode_ack(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    """basic.ack (a publisher confirm)."""
    return _ACK.pack(1, channel, 13, _BASIC, ACK, delivery_tag, 1 if multiple else 0, 0xCE)
