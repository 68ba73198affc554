"""Basic.Properties ⇄ :class:`tidings.message.Message` (RabbitMQ's ``mc_amqpl``).

The one place AMQP properties are converted. ``delivery_mode`` 2 is persistent; the AMQP
``timestamp`` is a datetime on the wire and seconds inside; ``type`` is ``message_type`` in pamqp.
So is the ``time`` of each ``x-death`` entry: an AMQP timestamp on the wire, as RabbitMQ sends it.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from pamqp.commands import Basic

from tidings.message import Message

_SAME = ("content_type", "content_encoding", "priority", "correlation_id", "reply_to",
         "expiration", "message_id", "user_id", "app_id")


def _to_wire_time(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(tzinfo=None)


def _to_seconds(ts: datetime.datetime) -> int:
    return int(ts.replace(tzinfo=datetime.UTC).timestamp())


def _deaths(headers: dict[str, Any], convert: Callable[[Any], Any], kind: type) -> dict[str, Any]:
    """``headers`` with each x-death ``time`` of type ``kind`` converted."""
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        return headers
    converted = [
        {**d, "time": convert(d["time"])}
        if isinstance(d, dict) and isinstance(d.get("time"), kind) else d
        for d in deaths
    ]
    return {**headers, "x-death": converted}


def _for_wire(value: Any) -> Any:
    """A header value as pamqp encodes it: byte strings as byte arrays (``x``), at any depth.
    (The store gives ``bytes`` back for what arrived as a ``bytearray``.)"""
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, dict):
        return {k: _for_wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_for_wire(v) for v in value]
    return value


_NEEDS_CONVERSION = (bytes, dict, list, tuple)


def headers_in(table: dict[str, Any]) -> dict[str, Any]:
    """A received ``headers`` table as a message keeps it (x-death times in seconds)."""
    headers = dict(table)
    if "x-death" in headers:
        headers = _deaths(headers, _to_seconds, datetime.datetime)
    return headers


def headers_out(headers: dict[str, Any] | None, extra_headers: dict[str, Any] | None = None
                ) -> dict[str, Any] | None:
    """A message's headers (plus ``extra_headers``) as they go on the wire."""
    if extra_headers:
        headers = {**(headers or {}), **extra_headers}
    if headers:
        if "x-death" in headers:
            headers = _deaths(headers, _to_wire_time, int)
        if any(isinstance(v, _NEEDS_CONVERSION) for v in headers.values()):
            headers = _for_wire(headers)
    return headers


def to_message(props: Basic.Properties, body: bytes, exchange: str, routing_key: str) -> Message:
    ts = props.timestamp
    headers = headers_in(props.headers) if props.headers else None
    return Message(
        body, routing_key, exchange,
        headers=headers,
        persistent=props.delivery_mode == 2,
        timestamp=_to_seconds(ts) if ts else None,
        type=props.message_type,
        **{name: getattr(props, name) for name in _SAME},
    )


def to_properties(message: Message, extra_headers: dict[str, Any] | None = None
                  ) -> Basic.Properties:
    ts = message.timestamp
    return Basic.Properties(
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        headers=headers_out(message.headers, extra_headers),
        delivery_mode=2 if message.persistent else 1,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=message.expiration,
        message_id=message.message_id,
        timestamp=_to_wire_time(ts) if ts is not None else None,
        message_type=message.type,
        user_id=message.user_id,
        app_id=message.app_id,
    )
