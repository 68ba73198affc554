"""Basic.Properties ⇄ :class:`tidings.message.Message` (RabbitMQ's ``mc_amqpl``).

The one place AMQP properties are converted. ``delivery_mode`` 2 is persistent; the AMQP
``timestamp`` is a datetime on the wire and seconds inside; ``type`` is ``message_type`` in pamqp.
"""

from __future__ import annotations

import datetime
from typing import Any

from pamqp.commands import Basic

from tidings.message import Message

_SAME = ("content_type", "content_encoding", "priority", "correlation_id", "reply_to",
         "expiration", "message_id", "user_id", "app_id")


def to_message(props: Basic.Properties, body: bytes, exchange: str, routing_key: str) -> Message:
    ts = props.timestamp
    return Message(
        body, routing_key, exchange,
        headers=dict(props.headers) if props.headers else None,
        persistent=props.delivery_mode == 2,
        timestamp=int(ts.replace(tzinfo=datetime.UTC).timestamp()) if ts else None,
        type=props.message_type,
        **{name: getattr(props, name) for name in _SAME},
    )


def to_properties(message: Message, extra_headers: dict[str, Any] | None = None
                  ) -> Basic.Properties:
    headers = message.headers
    if extra_headers:
        headers = {**(headers or {}), **extra_headers}
    ts = message.timestamp
    return Basic.Properties(
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        headers=headers,
        delivery_mode=2 if message.persistent else 1,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=message.expiration,
        message_id=message.message_id,
        timestamp=datetime.datetime.fromtimestamp(ts, datetime.UTC).replace(tzinfo=None)
        if ts is not None else None,
        message_type=message.type,
        user_id=message.user_id,
        app_id=message.app_id,
    )
