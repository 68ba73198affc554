"""tidings serve's extensions to AMQP 0-9-1, in RabbitMQ's style (as ``amq.rabbitmq.reply-to``).

AMQP has no method to read a queue without taking from it, to remove a message by id, or to
extend a delivery's lease. tidings serve offers them through what every client can already
send, so the tidings client (and any other) gets them over AMQP:

- **Browse**: ``basic.consume`` with the argument ``x-tidings-browse: N`` (and ``no-ack``)
  delivers copies of the first N ready messages, left in place and unmarked, then one empty
  message with the header ``x-tidings-browse-end: true``; the client then cancels. Needs read
  permission on the queue.
- **Delete by id**: a ``mandatory`` publish to the exchange ``amq.tidings.control`` with
  routing key ``delete`` and headers ``x-queue`` and ``x-message-id`` removes that waiting
  (ready or delayed) message. It is routed (confirmed) when a message was removed and
  returned (``312 NO_ROUTE``) when none was waiting. Needs read permission on the queue, as a
  purge does.
- **Extend**: a publish to ``amq.tidings.control`` with routing key ``extend`` and the header
  ``x-delivery-tag`` on the channel of a delivery restarts its consumer-timeout clock (an
  unknown tag closes the channel with 406, as a bad ack does).
- **Commit a stream offset**: a publish to ``amq.tidings.control`` with routing key
  ``commit-offset`` and headers ``x-queue`` (a stream), ``x-reader`` and ``x-offset`` stores
  that named reader's offset in the broker (confirmed once durable). A consumer of the
  stream with the argument ``x-tidings-reader`` set to that name starts right after it.
  Needs read permission on the stream, as consuming does.
"""

from __future__ import annotations

from typing import Any, Protocol

from pamqp import commands
from pamqp.base import Frame as Method

from tidings.amqp import frames as wire
from tidings.errors import InvalidArgumentError, NotFoundError
from tidings.message import Message
from tidings.routing.front_door import FrontDoor

B = commands.Basic

CONTROL_EXCHANGE = "amq.tidings.control"
BROWSE_ARGUMENT = "x-tidings-browse"
BROWSE_END_HEADER = "x-tidings-browse-end"
#: Most messages one browse sends (a client asking for more gets this many).
MAX_BROWSE = 10_000


class ExtensionChannel(Protocol):
    """What an extension uses of the channel it arrived on (``AmqpChannel`` is one)."""

    vhost: str
    broker: FrontDoor

    def check(self, permission: str, kind: str, name: str) -> None: ...

    def reply(self, method: Method, nowait: bool = False) -> None: ...

    def send_content(self, method: Method, message: Message,
                     extra: dict[str, Any] | None = None) -> None: ...

    def confirm(self, ok: bool) -> None: ...

    def extend(self, delivery_tag: int) -> None: ...

    def send_copies(self, consumer_tag: str, messages: list[Message]) -> None: ...


def _header(message: Message, name: str, kind: type) -> Any:
    value = (message.headers or {}).get(name)
    if isinstance(value, bytes | bytearray) and kind is str:
        value = bytes(value).decode(errors="replace")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidArgumentError(f"{CONTROL_EXCHANGE}: header '{name}' must be a "
                                   f"{kind.__name__}")
    return value


def control(channel: ExtensionChannel, message: Message, method: B.Publish) -> None:
    """A publish to :data:`CONTROL_EXCHANGE`: an operation, not a message."""
    removed = True
    if method.routing_key == "extend":
        channel.extend(_header(message, "x-delivery-tag", int))
    elif method.routing_key == "delete":
        queue = _header(message, "x-queue", str)
        channel.check("read", "queue", queue)
        found = channel.broker.take(channel.vhost, queue, _header(message, "x-message-id", str))
        removed = found is not None
    elif method.routing_key == "commit-offset":
        queue = _header(message, "x-queue", str)
        channel.check("read", "queue", queue)
        channel.broker.commit_offset(channel.vhost, queue, _header(message, "x-reader", str),
                                     _header(message, "x-offset", int))
    else:
        raise NotFoundError(f"{CONTROL_EXCHANGE} has no operation '{method.routing_key}' "
                            f"(extend, delete, commit-offset)")
    if not removed and method.mandatory:
        channel.send_content(wire.Return(312, "NO_ROUTE", method.exchange, method.routing_key),
                             message)
    channel.confirm(ok=True)


def browse(channel: ExtensionChannel, method: B.Consume, queue: str, consumer_tag: str) -> None:
    """Deliver copies of the first ready messages of ``queue``, then the end marker."""
    limit = (method.arguments or {}).get(BROWSE_ARGUMENT)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise InvalidArgumentError(f"argument '{BROWSE_ARGUMENT}' must be a count >= 0")
    if not method.no_ack:
        raise InvalidArgumentError(f"a '{BROWSE_ARGUMENT}' consumer must be no-ack")
    found = channel.broker.browse(channel.vhost, queue, min(limit, MAX_BROWSE))
    channel.reply(B.ConsumeOk(consumer_tag), method.nowait)
    channel.send_copies(consumer_tag, [*found, Message(b"", headers={BROWSE_END_HEADER: True})])
