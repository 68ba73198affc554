"""The bytes forms of messages: the record codec the stores keep, the JSON tagging that makes
any header value JSON and back, and the properties (``meta``) the remote engines carry beside a
body.

A record starts with a format byte. Format 1 (the default) is one :mod:`marshal`ed tuple
(the C codec is 5x faster than JSON on the publish path; marshal's format 4 has been stable since
Python 3.4 and loading it runs no code). Values marshal cannot carry fall back to format 0:
``len(meta) (4 bytes) + meta (JSON, bytes tagged) + body``. Both are always readable, and
the JSON form is unambiguous: a user table shaped like a tag is wrapped, never taken for one.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import marshal
import operator
import struct
from typing import Any

from tidings.errors import TidingsError
from tidings.message import PROPERTY_FIELDS as _PROPERTY_FIELDS
from tidings.message import Message, Record

_LEN = struct.Struct(">I")

#: Tags of the JSON form for values JSON has no type for. A user table that has a key of this
#: shape is wrapped as ``{"$t": table}``, so no user value can be read back as a tag.
_TAGS = ("$b", "$dt", "$dec", "$t")


def _tag(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"$b": base64.b64encode(value).decode()}
    if isinstance(value, datetime.datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"$dec": str(value)}
    if isinstance(value, dict):
        table = {k: _tag(v) for k, v in value.items()}
        return {"$t": table} if any(k in _TAGS for k in value) else table
    if isinstance(value, list | tuple):
        return [_tag(v) for v in value]
    return value


def _untag(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key == "$b":
                return base64.b64decode(inner, validate=True)
            if key == "$dt":
                return datetime.datetime.fromisoformat(inner)
            if key == "$dec":
                return decimal.Decimal(inner)
            if key == "$t":
                return {k: _untag(v) for k, v in inner.items()}
        return {k: _untag(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untag(v) for v in value]
    return value


def json_tagged(value: Any) -> Any:
    """``value`` (an AMQP field value: tables, arrays, byte arrays, timestamps, decimals) in
    a JSON-ready form; :func:`json_untagged` gives it back."""
    return _tag(value)


def json_untagged(value: Any) -> Any:
    """Inverse of :func:`json_tagged` (plain JSON values come back as they are)."""
    return _untag(value)


class RecordError(TidingsError, ValueError):
    """Stored bytes that are not a readable record (they are quarantined, never delivered)."""


_JSON, _MARSHAL = b"\x00", b"\x01"
_get_properties = operator.attrgetter(*_PROPERTY_FIELDS)
_NO_PROPERTIES = (None,) * len(_PROPERTY_FIELDS)


def encode_record(record: Record) -> bytes:
    """Bytes form of a record, for the store."""
    m = record.message
    props = _get_properties(m)
    try:
        return _MARSHAL + marshal.dumps((
            m.body, m.routing_key, m.exchange, m.persistent, m.headers,
            None if props == _NO_PROPERTIES else props,
            record.enqueued_at, record.delivery_count, record.expires_at, record.due_at,
            record.target or None,
        ))
    except ValueError:  # a header value marshal cannot carry
        return _JSON + _encode_json(record)


def decode_record(data: bytes) -> Record:
    """Inverse of :func:`encode_record`; raises :class:`RecordError` for unreadable bytes."""
    try:
        return _decode(data)
    except Exception as e:  # any damage, of any kind, is one error: the caller moves it aside
        raise RecordError(f"unreadable record ({type(e).__name__}: {e})") from e


def _decode(data: bytes) -> Record:
    if data[:1] == _MARSHAL:
        (body, key, exchange, persistent, headers, props, t0, dc, exp_at, due, target
         ) = marshal.loads(memoryview(data)[1:])
        message = Message(body, key, exchange, headers, persistent)
        if props is not None:
            for name, value in zip(_PROPERTY_FIELDS, props, strict=True):
                setattr(message, name, value)
        return Record(message, t0, dc, exp_at, due, target or {})
    if data[:1] == _JSON:
        return _decode_json(memoryview(data)[1:])
    raise ValueError(f"unknown record format {bytes(data[:1])!r}")


def _meta_of(m: Message) -> dict[str, Any]:
    """Everything of ``m`` but its body, JSON-ready (bytes and dates tagged)."""
    meta: dict[str, Any] = {"k": m.routing_key}
    if m.exchange:
        meta["x"] = m.exchange
    if not m.persistent:
        meta["np"] = 1
    if m.headers:
        meta["h"] = _tag(m.headers)
    for name in _PROPERTY_FIELDS:
        value = getattr(m, name)
        if value is not None:
            meta[name] = value
    return meta


def _message_from(body: bytes, meta: dict[str, Any]) -> Message:
    """Inverse of :func:`_meta_of`."""
    props = {name: meta[name] for name in _PROPERTY_FIELDS if name in meta}
    return Message(body, routing_key=str(meta.get("k", "")), exchange=str(meta.get("x", "")),
                   headers=_untag(meta["h"]) if "h" in meta else None,
                   persistent="np" not in meta, **props)


def _encode_json(record: Record) -> bytes:
    m = record.message
    meta = _meta_of(m)
    meta["t0"] = record.enqueued_at
    if record.delivery_count:
        meta["dc"] = record.delivery_count
    if record.expires_at is not None:
        meta["exp_at"] = record.expires_at
    if record.due_at is not None:
        meta["due"] = record.due_at
        meta["to"] = record.target
    raw = json.dumps(meta, separators=(",", ":")).encode()
    return _LEN.pack(len(raw)) + raw + m.body


def _decode_json(data: memoryview) -> Record:
    (n,) = _LEN.unpack_from(data)
    meta = json.loads(bytes(data[4 : 4 + n]))
    message = _message_from(bytes(data[4 + n :]), meta)
    return Record(
        message=message,
        enqueued_at=meta["t0"],
        delivery_count=meta.get("dc", 0),
        expires_at=meta.get("exp_at"),
        due_at=meta.get("due"),
        target=meta.get("to", {}),
    )


def encode_meta(message: Message) -> str:
    """Everything of ``message`` but its body, as one JSON text (bytes and dates tagged):
    how remote transports whose engines know no AMQP properties (NATS headers, Redis stream
    fields) carry them next to the body."""
    return json.dumps(_meta_of(message), separators=(",", ":"))


def decode_meta(body: bytes, meta: str | bytes | None) -> Message:
    """Inverse of :func:`encode_meta` (no meta: a bare body, as a foreign producer sends).
    Raises ValueError for properties that are not what :func:`encode_meta` writes."""
    data: Any = json.loads(meta) if meta else {}
    if not isinstance(data, dict):
        raise ValueError("message properties are not a JSON object")
    return _message_from(body, data)
