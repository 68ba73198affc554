"""Where a stream reader starts, as RabbitMQ's ``x-stream-offset`` says it (:data:`OFFSET`),
read once for the broker and for the client's engines: ``first``, ``last``, ``next``, an
offset, a timestamp (a datetime), or an age such as ``1h`` (RabbitMQ's units: a year of 365
days, a month of 30). The same ages are ``x-max-age``'s retention."""

from __future__ import annotations

import datetime
from typing import Any

#: The consumer argument that says where a stream reader starts, and the header every
#: delivered record carries its offset in (RabbitMQ's name).
OFFSET = "x-stream-offset"
#: The consumer argument naming a reader whose committed offset it resumes after.
READER = "x-tidings-reader"
#: The forms a start may take, for error messages.
START_FORMS = "'first', 'last', 'next', an offset, a timestamp or an age such as '1h'"

#: Milliseconds per unit of an age such as ``7D`` or ``12h``.
AGE_UNITS_MS = {"Y": 365 * 86_400_000, "M": 30 * 86_400_000, "D": 86_400_000,
                "h": 3_600_000, "m": 60_000, "s": 1000}

#: A parsed start: a word (first, last, next) with 0, an offset, or an age / a time in ms.
Start = tuple[str, int]


def parse_age(text: object) -> int | None:
    """Milliseconds of an age written as RabbitMQ writes it (``"7D"``, ``"1h"``, ``"30s"``:
    a whole number and one unit of :data:`AGE_UNITS_MS`); None when it is not one."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode(errors="replace")
    if not isinstance(text, str):
        return None
    number, unit = text[:-1], text[-1:]
    if unit not in AGE_UNITS_MS or not number.isascii() or not number.isdigit() \
            or len(number) > 12:
        return None
    return int(number) * AGE_UNITS_MS[unit]


def parse_start(value: Any) -> Start | None:
    """An ``x-stream-offset`` value (AMQP byte arrays read as text), or None when it is
    not one."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode(errors="replace")
    if value in ("first", "last", "next"):
        return value, 0
    if isinstance(value, int) and not isinstance(value, bool):
        return "offset", value
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return "time", int(value.timestamp() * 1000)
    age = parse_age(value)
    return None if age is None else ("age", age)


def clamp(offset: int, first: int, end: int) -> int:
    """An offset within a stream holding ``[first, end)``: before the first retained record
    it is that record; past the tail it is the tail (the next record appended)."""
    return min(max(offset, first), end)


def offset_of(start: Start, first: int, end: int) -> int | None:
    """The offset a parsed start means for a stream holding ``[first, end)``, or None for a
    time or an age (the caller finds the first record appended then, and clamps it)."""
    kind, n = start
    if kind == "first":
        return first
    if kind == "last":
        return max(first, end - 1)
    if kind == "next":
        return end
    if kind == "offset":
        return clamp(n, first, end)
    return None
