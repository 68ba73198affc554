"""A request's counts and lengths checked against its bytes before kio reads it.

kio's native reader makes room for an array from its announced count before it reads a
single element, so a request announcing two billion elements in a few bytes makes it ask for
hundreds of gigabytes, and the process aborts (Rust aborts when an allocation fails; no
exception reaches Python). :func:`check_counts` walks the request as its kio schema lays it
out, without building anything, and refuses any array whose count exceeds the bytes left
(every element takes at least one) and any string, bytes or tagged field longer than what
is left. What passes is bounded by the frame's own size; kio then reads it.
"""

from __future__ import annotations

import dataclasses
import struct
from functools import cache
from typing import Any

from kio.serial._introspect import EntityField, EntityTupleField, classify_field, is_optional

from tidings.errors import FrameError

__all__ = ["check_counts"]

#: kio's kafka_type -> its size on the wire, for the fixed-size kinds.
_FIXED = {"bool": 1, "int8": 1, "int16": 2, "uint16": 2, "error_code": 2, "int32": 4,
          "timedelta_i32": 4, "int64": 8, "datetime_i64": 8, "timedelta_i64": 8,
          "float64": 8, "uuid": 16}
_I16, _I32 = struct.Struct(">h"), struct.Struct(">i")


class CountError(FrameError):
    """A count or length the request's bytes cannot hold."""


def check_counts(schema: type, frame: bytes, at: int) -> None:
    """Raise :class:`CountError` (or ``struct.error`` for a cut-off frame) unless every
    count and length in the request body at ``at`` fits in ``frame``."""
    _entity(schema, schema.__flexible__, frame, at)


@cache
def _layout(cls: type) -> tuple[tuple[str, str, Any, bool], ...]:
    """(name, kafka type, nested entity type or None, is an array) per inline field."""
    out = []
    for f in dataclasses.fields(cls):
        if "tag" in f.metadata:
            continue  # in the tagged-field section, whose sizes are checked there
        kind = classify_field(f)
        nested = kind.type_ if isinstance(kind, EntityField | EntityTupleField) else None
        if nested is not None and not kind.is_array and is_optional(f):
            nested = (nested, "nullable")
        out.append((f.name, f.metadata.get("kafka_type", ""), nested, kind.is_array))
    return tuple(out)


def _entity(cls: type, flexible: bool, data: bytes, at: int) -> int:
    for name, kafka_type, nested, is_array in _layout(cls):
        if is_array:
            count, at = _length(flexible, data, at, wide=True)
            if count <= 0:
                continue
            size = _FIXED.get(kafka_type)
            if count > len(data) - at or (size and count * size > len(data) - at):
                raise CountError(f"field '{name}' announces {count} items in "
                                 f"{len(data) - at} bytes")
            if nested is not None:
                for _ in range(count):
                    at = _entity(nested, flexible, data, at)
            elif size:
                at += count * size
            else:
                for _ in range(count):
                    at = _value(name, kafka_type, flexible, data, at)
        elif nested is not None:
            if isinstance(nested, tuple):  # a nullable struct: -1 absent, 1 present
                if data[at] == 0xFF:
                    at += 1
                    continue
                nested, at = nested[0], at + 1
            at = _entity(nested, flexible, data, at)
        else:
            at = _value(name, kafka_type, flexible, data, at)
    if flexible:
        at = _tagged(data, at)
    return at


def _value(name: str, kafka_type: str, flexible: bool, data: bytes, at: int) -> int:
    size = _FIXED.get(kafka_type)
    if size is not None:
        return at + size
    length, at = _length(flexible, data, at, wide=kafka_type != "string")
    if length > len(data) - at:
        raise CountError(f"field '{name}' announces {length} bytes in {len(data) - at}")
    return at + max(length, 0)


def _length(flexible: bool, data: bytes, at: int, *, wide: bool) -> tuple[int, int]:
    """A count or length: compact (unsigned varint, plus one) in flexible versions, else
    int32 (arrays, bytes) or int16 (strings); -1 for null."""
    if flexible:
        value, at = _uvarint(data, at)
        return value - 1, at
    if wide:
        return _I32.unpack_from(data, at)[0], at + 4
    return _I16.unpack_from(data, at)[0], at + 2


def _tagged(data: bytes, at: int) -> int:
    count, at = _uvarint(data, at)
    if count > len(data) - at:
        raise CountError(f"{count} tagged fields in {len(data) - at} bytes")
    for _ in range(count):
        _, at = _uvarint(data, at)
        size, at = _uvarint(data, at)
        if size > len(data) - at:
            raise CountError(f"a tagged field of {size} bytes in {len(data) - at}")
        at += size
    return at


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 28:
            raise CountError("a varint runs past its five bytes or the frame")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
