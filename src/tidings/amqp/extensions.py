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
- **Batches** (the server's capability ``tidings.batches``; format in
  :mod:`tidings.message_batches`): a publish to ``amq.tidings.control`` with routing key
  ``publish-batch``, headers ``x-exchange`` and ``x-mandatory``, and a body of packed messages
  publishes each to that exchange, as many ``basic.publish`` would (write permission,
  ``user_id`` and direct reply-to checked for each, all before any is taken). It is confirmed
  once, when all are durable. Messages not taken (unroutable while mandatory, or refused by a
  full queue) are named by position in one ``basic.return`` of a message with the batch's
  message id and the headers ``x-tidings-returned`` / ``x-tidings-refused``, sent once the
  others are durable, just before that confirm. A consumer with the argument
  ``x-tidings-batch: true`` gets the deliveries of one loop turn as one ``basic.deliver``
  whose message has the header ``x-tidings-batch`` (the count) and the deliveries packed in
  its body, each with its own delivery tag to settle (prefetch still counts messages).
- **State machines** (the server's capability ``tidings.machines``): ``machine-commit``,
  ``machine-find``, ``machine-list`` and ``machine-describe`` commit a transition with its
  event's ack as one step and read instances (:mod:`tidings.amqp.machines`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pamqp import commands
from pamqp.base import Frame as Method

from tidings import message_batches as batches
from tidings.amqp import frames as wire
from tidings.amqp import machines
from tidings.errors import InvalidArgumentError, NotFoundError
from tidings.message import Message

B = commands.Basic

CONTROL_EXCHANGE = machines.CONTROL_EXCHANGE
BROWSE_ARGUMENT = "x-tidings-browse"
BROWSE_END_HEADER = "x-tidings-browse-end"
#: Most messages one browse sends (a client asking for more gets this many).
MAX_BROWSE = 10_000


class ExtensionChannel(machines.MachineChannel, Protocol):
    """What an extension uses of the channel it arrived on (``AmqpChannel`` is one)."""

    def reply(self, method: Method, nowait: bool = False) -> None: ...

    def confirm(self, ok: bool) -> None: ...

    def extend(self, delivery_tag: int) -> None: ...

    def send_copies(self, consumer_tag: str, messages: list[Message]) -> None: ...

    def publish_batch(self, exchange: str, entries: list[tuple[str, Message]],
                      mandatory: bool) -> tuple[list[int], list[int]]: ...

    def after_durable(self, action: Callable[[], None]) -> None: ...


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
    if method.routing_key == batches.PUBLISH_BATCH:
        _publish_batch(channel, message)
        return
    if method.routing_key in machines.OPERATIONS:
        machines.operate(channel, method.routing_key, message)
        channel.confirm(ok=True)
        return
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
                            f"(extend, delete, commit-offset, {batches.PUBLISH_BATCH}, "
                            f"{', '.join(machines.OPERATIONS)})")
    if not removed and method.mandatory:
        channel.send_content(wire.Return(312, "NO_ROUTE", method.exchange, method.routing_key),
                             message)
    channel.confirm(ok=True)


def _publish_batch(channel: ExtensionChannel, message: Message) -> None:
    exchange = _header(message, batches.EXCHANGE_HEADER, str)
    mandatory = bool((message.headers or {}).get(batches.MANDATORY_HEADER))
    try:
        entries = batches.unpack_publishes(message.body)
    except Exception as e:  # (pamqp's own errors included: hostile bytes are no bug of ours)
        raise InvalidArgumentError(f"{CONTROL_EXCHANGE} {batches.PUBLISH_BATCH}: {e}") from e
    returned, refused = channel.publish_batch(exchange, entries, mandatory)
    if returned or refused:
        # Sent once the others are durable, before the confirm: a client that learns from
        # the return which were not taken (aiormq: as soon as it arrives) may then count
        # the rest as durable.
        report = Message(b"", message_id=message.message_id, headers={
            batches.RETURNED_HEADER: returned, batches.REFUSED_HEADER: refused})
        channel.after_durable(lambda: channel.send_content(
            wire.Return(312, "NO_ROUTE", CONTROL_EXCHANGE, batches.PUBLISH_BATCH), report))
    channel.confirm(ok=True)


class BatchDeliveries:
    """One consumer's deliveries, gathered until the connection writes (once a loop turn)
    and sent as one ``basic.deliver`` of packed messages."""

    #: Bytes of bodies gathered before they are packed at once (so the connection's output
    #: limit sees them).
    PACK_BYTES = 1 << 16

    __slots__ = ("_bytes", "_consumer_tag", "_number", "_pending", "_scheduled", "_send")

    def __init__(self, send: Callable[[int, str, int, bool, Message, None], None], number: int,
                 consumer_tag: str) -> None:
        self._send, self._number, self._consumer_tag = send, number, consumer_tag
        self._pending: list[batches.DeliveryEntry] = []
        self._bytes = 0
        self._scheduled = False

    def add(self, delivery_tag: int, redelivered: bool, message: Message,
            extra: dict[str, Any] | None) -> bool:
        """Gather one delivery; True when :meth:`write` must be scheduled (the first since
        the last write)."""
        self._pending.append((delivery_tag, redelivered, message, extra))
        self._bytes += len(message.body)
        if self._bytes >= self.PACK_BYTES:
            self.pack()
        first, self._scheduled = not self._scheduled, True
        return first

    def write(self) -> None:
        """Before the connection writes: pack what is left."""
        self._scheduled = False
        self.pack()

    def pack(self) -> None:
        pending = self._pending
        if not pending:
            return
        body = batches.pack_deliveries(pending)
        batch = Message(body, headers={batches.BATCH_HEADER: len(pending)})
        self._send(self._number, self._consumer_tag, pending[-1][0], False, batch, None)
        self._pending, self._bytes = [], 0


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
