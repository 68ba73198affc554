"""Sessions (AMQP channels) and consumers: delivery tags, prefetch, ack / nack / reject.

A :class:`Session` owns the delivery tags it hands out and the unacked messages behind them; when
it closes, they go back to their queues in tag order, marked redelivered. A :class:`Consumer`
holds a prefetch window; the queue offers it messages round robin while it has room.

A session calls back into the broker only through :class:`SessionOwner` (cancel a consumer,
retry later, forget me, what time is it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tidings.errors import PreconditionFailedError
from tidings.message import Delivery
from tidings.routing.queue import Entry, Queue
from tidings.statistics import Tally

#: Most deliveries handed to a consumer in one list.
BATCH_MAX = 256


class SessionOwner(Protocol):
    """What a session needs of the broker that opened it."""

    def time(self) -> float: ...

    def cancel(self, session: Session, consumer_tag: str) -> None: ...

    def requeue_later(self, queue: Queue, entry: Entry, delay_ms: int) -> None: ...

    def forget_session(self, session: Session) -> None: ...


class Consumer:
    __slots__ = ("arguments", "exclusive", "no_ack", "on_cancel", "on_deliveries",
                 "on_delivery", "outstanding", "prefetch_count", "queue", "session", "tag")

    def __init__(
        self,
        tag: str,
        queue: Queue,
        session: Session,
        on_delivery: Callable[[Delivery], None],
        *,
        prefetch_count: int,
        no_ack: bool,
        exclusive: bool,
        arguments: dict[str, Any],
    ) -> None:
        self.tag, self.queue, self.session = tag, queue, session
        self.on_delivery = on_delivery
        self.prefetch_count, self.no_ack, self.exclusive = prefetch_count, no_ack, exclusive
        self.arguments = arguments
        self.outstanding = 0
        #: Called when the server cancels the consumer (its queue was deleted).
        self.on_cancel: Callable[[str], None] | None = None
        #: Set by a face that takes deliveries in lists (up to BATCH_MAX at a time, within
        #: the prefetch) instead of one call per message.
        self.on_deliveries: Callable[[list[Delivery]], None] | None = None

    def batch_room(self) -> int:
        if self.on_deliveries is None:
            return 0
        session = self.session
        if not (session.flow_active and session.output_open):
            return 0
        room = BATCH_MAX
        if not self.no_ack:
            if self.prefetch_count:
                room = min(room, self.prefetch_count - self.outstanding)
            if session.prefetch_count:
                room = min(room, session.prefetch_count - len(session.unacked))
        return room

    def deliver_many(self, queue: Queue, entries: list[Entry]) -> None:
        self.session.deliver_many(self, queue, entries)

    def has_room(self) -> bool:
        if self.no_ack:
            return self.session.flow_active and self.session.output_open
        if self.prefetch_count and self.outstanding >= self.prefetch_count:
            return False
        return self.session.has_room()

    def deliver(self, queue: Queue, entry: Entry) -> None:
        self.session.deliver(self, queue, entry)

    def start(self) -> None:
        """Start deliveries (after consume-ok was sent, for a face that consumed with
        ``dispatch=False``)."""
        self.queue.dispatch()

    def cancelled(self) -> None:
        """The server cancelled this consumer (its queue was deleted)."""
        self.session.consumers.pop(self.tag, None)
        if self.on_cancel is not None:
            self.on_cancel(self.tag)


class Session:
    """One channel's worth of delivery state."""

    def __init__(self, owner: SessionOwner, vhost: str, connection_id: str,
                 tally: Tally | None = None) -> None:
        self._owner, self.vhost, self.connection_id = owner, vhost, connection_id
        self._tally = tally or Tally()
        self.next_tag = 1
        self.unacked: dict[int, tuple[Queue, Entry, Consumer | None]] = {}
        self.consumers: dict[str, Consumer] = {}
        #: Channel-wide prefetch (``basic.qos`` with global=true in RabbitMQ); 0 = unlimited.
        self.prefetch_count = 0
        #: The client's ``channel.flow``.
        self.flow_active = True
        #: False while the face's output to this session's peer is full (a slow reader, or
        #: more than a bound buffered): deliveries wait, whatever the prefetch.
        self.output_open = True
        self.closed = False
        self._consumer_serial = 0
        #: Called with the error when the broker closes the session (e.g. consumer timeout).
        self.on_error: Callable[[Exception], None] | None = None

    def dispatch(self) -> None:
        """Offer messages to every consumer of this session (room was made: qos, flow,
        output drained)."""
        for consumer in list(self.consumers.values()):
            consumer.queue.dispatch()

    def holds(self, delivery_tag: int) -> bool:
        """Whether ``delivery_tag`` is an unsettled delivery of this session."""
        return delivery_tag in self.unacked

    def has_room(self) -> bool:
        if not (self.flow_active and self.output_open):
            return False
        return not self.prefetch_count or len(self.unacked) < self.prefetch_count

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers[consumer.tag] = consumer

    def remove_consumer(self, consumer_tag: str) -> Consumer | None:
        return self.consumers.pop(consumer_tag, None)

    def new_consumer_tag(self) -> str:
        self._consumer_serial += 1
        return f"ctag-{self.connection_id}-{self._consumer_serial}"

    def deliver(self, consumer: Consumer, queue: Queue, entry: Entry) -> None:
        tag = self.next_tag
        self.next_tag += 1
        if consumer.no_ack:
            queue.ack(entry)
            self._tally.consumed_auto_ack += 1
        else:
            consumer.outstanding += 1
            self.unacked[tag] = (queue, entry, consumer)
            self._tally.consumed_manual_ack += 1
        consumer.on_delivery(self._delivery(tag, queue, entry, consumer.tag))

    def deliver_many(self, consumer: Consumer, queue: Queue, entries: list[Entry]) -> None:
        tag, name, ctag = self.next_tag, queue.name, consumer.tag
        deliveries = []
        unacked = self.unacked
        for entry in entries:
            if consumer.no_ack:
                queue.ack(entry)
            else:
                unacked[tag] = (queue, entry, consumer)
            record = entry.record
            deliveries.append(Delivery(record.message, name, tag, entry.redelivered,
                                       record.delivery_count, ctag))
            tag += 1
        self.next_tag = tag
        if not consumer.no_ack:
            consumer.outstanding += len(entries)
            self._tally.consumed_manual_ack += len(entries)
        else:
            self._tally.consumed_auto_ack += len(entries)
        consumer.on_deliveries(deliveries)  # type: ignore[misc]

    def _delivery(self, tag: int, queue: Queue, entry: Entry, ctag: str | None) -> Delivery:
        return Delivery(entry.record.message, queue.name, tag, entry.redelivered,
                        entry.record.delivery_count, ctag)

    def register_get(self, queue: Queue, entry: Entry, no_ack: bool) -> Delivery:
        tag = self.next_tag
        self.next_tag += 1
        if no_ack:
            queue.ack(entry)
            self._tally.got_auto_ack += 1
        else:
            self.unacked[tag] = (queue, entry, None)
            self._tally.got_manual_ack += 1
        delivery = self._delivery(tag, queue, entry, None)
        delivery.message_count = queue.ready_count
        return delivery

    # -- settling --------------------------------------------------------------------------

    def _settle(self, tag: int, multiple: bool) -> list[tuple[Queue, Entry, Consumer | None]]:
        if multiple:
            if tag == 0:
                tags = list(self.unacked)
            else:
                if tag not in self.unacked:
                    raise PreconditionFailedError(f"unknown delivery tag {tag}")
                tags = []
                for t in self.unacked:
                    if t > tag:
                        break
                    tags.append(t)
            return [self.unacked.pop(t) for t in tags]
        found = self.unacked.pop(tag, None)
        if found is None:
            raise PreconditionFailedError(f"unknown delivery tag {tag}")
        return [found]

    def _release(self, settled: list[tuple[Queue, Entry, Consumer | None]]) -> None:
        touched: dict[int, Queue] = {}
        for queue, _, consumer in settled:
            if consumer is not None:
                consumer.outstanding -= 1
            touched[id(queue)] = queue
        for queue in touched.values():
            if queue.consumers:
                queue.dispatch()
        if self.prefetch_count:
            self.dispatch()

    def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        settled = self._settle(delivery_tag, multiple)
        for queue, entry, _ in settled:
            queue.ack(entry)
        self._tally.acked += len(settled)
        self._release(settled)

    def ack_many(self, delivery_tags: list[int]) -> None:
        """Ack several deliveries at once (one dispatch pass instead of one per tag)."""
        settled = []
        for tag in delivery_tags:
            found = self.unacked.pop(tag, None)
            if found is None:
                raise PreconditionFailedError(f"unknown delivery tag {tag}")
            found[0].ack(found[1])
            settled.append(found)
        self._tally.acked += len(settled)
        self._release(settled)

    def nack(self, delivery_tag: int, multiple: bool = False, requeue: bool = True,
             delay_ms: int | None = None) -> None:
        settled = self._settle(delivery_tag, multiple)
        for queue, entry, _ in settled:
            if requeue and delay_ms:
                self._owner.requeue_later(queue, entry, delay_ms)
            elif requeue:
                queue.requeue(entry)
            else:
                queue.discard(entry, "rejected")
        self._release(settled)

    def reject(self, delivery_tag: int, requeue: bool = True) -> None:
        self.nack(delivery_tag, False, requeue)

    def extend(self, delivery_tag: int) -> None:
        """Restart the consumer-timeout clock of an unacked delivery (extend its lease)."""
        found = self.unacked.get(delivery_tag)
        if found is None:
            raise PreconditionFailedError(f"unknown delivery tag {delivery_tag}")
        found[1].delivered_at = self._owner.time()

    def recover(self) -> None:
        """``basic.recover``: requeue everything unacked (RabbitMQ always requeues)."""
        self.nack(0, multiple=True, requeue=True)

    def close(self) -> None:
        """Cancel consumers and return every unacked message to its queue, in tag order."""
        if self.closed:
            return
        self.closed = True
        for tag in list(self.consumers):
            self._owner.cancel(self, tag)
        if self.unacked:
            self.nack(0, multiple=True, requeue=True)
        self._owner.forget_session(self)
