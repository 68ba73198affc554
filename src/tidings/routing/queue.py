"""Queue: one queue's messages from enqueue to settlement, split by concern.

- ready messages, priorities and paging: :mod:`tidings.routing.ready` (``queue.ready``);
- TTL and the head-expiry timer: :mod:`tidings.routing.expiry`;
- ``x-max-length`` and ``x-overflow``: :mod:`tidings.routing.overflow`;
- here: enqueue, dispatch to consumers (round robin, single active consumer, prefetch) and
  settlement of unacked messages (ack, requeue, delayed retry, reject, delivery limit).

The queue never awaits and never routes. It talks back to its owner (the virtual host)
through one small interface, :class:`QueueOwner`: dead-letter this entry, arm a timer for the
head's expiry, tell me when the store has committed. The store calls it makes join the
current group commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from tidings.codecs import encode_record
from tidings.message import Record
from tidings.routing.arguments import QueueOptions
from tidings.routing.expiry import expires_at
from tidings.routing.overflow import Verdict, admit, trim
from tidings.routing.policies import Applied
from tidings.routing.ready import DEFAULT_WINDOW, Entry, ReadyMessages
from tidings.statistics import Counters, Histogram
from tidings.storage.base import Store

#: A consumer argument naming who consumes (a process): the partitions of a set
#: (``x-tidings-partition``) spread over their consumers in the order of these names.
MEMBER_ARGUMENT = "x-tidings-member"

__all__ = ["DEFAULT_WINDOW", "Entry", "Queue", "QueueConsumer", "QueueOwner"]


class QueueOwner(Protocol):
    """The one interface from a queue back to whoever holds it."""

    def dead_letter(self, queue: Queue, entry: Entry, reason: str) -> None:
        """``entry`` left ``queue`` for ``reason`` (expired, maxlen, rejected,
        delivery_limit; its row is gone already): route its dead letter, if the queue has a
        dead-letter exchange."""
        ...

    def head_expires(self, queue: Queue, at: float) -> None:
        """Call ``queue.expire_head()`` at ``at``."""
        ...

    def wait_for_commit(self, queue: Queue) -> None:
        """Call ``queue.after_commit()`` once everything written so far is committed."""
        ...


class QueueConsumer(Protocol):
    """What a queue needs of a consumer."""

    exclusive: bool
    #: Its ``basic.consume`` arguments.
    arguments: dict[str, Any]
    #: Set when it takes deliveries in lists (see :meth:`batch_room`).
    on_deliveries: Callable[[Any], None] | None

    def has_room(self) -> bool: ...

    def batch_room(self) -> int:
        """How many messages it takes in one list now; 0 when it takes them one by one."""
        ...

    def deliver(self, queue: Queue, entry: Entry) -> None: ...

    def deliver_many(self, queue: Queue, entries: list[Entry]) -> None: ...

    def cancelled(self) -> None:
        """The server cancelled this consumer (its queue is gone)."""
        ...


def _member(consumer: QueueConsumer) -> str:
    return str(consumer.arguments.get(MEMBER_ARGUMENT) or "")


class Queue:
    def __init__(
        self,
        name: str,
        vhost: str,
        options: QueueOptions,
        *,
        store: Store,
        owner: QueueOwner,
        now: Callable[[], float],
        durable: bool = True,
        exclusive_owner: str | None = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.name, self.vhost, self.options = name, vhost, options
        self.durable, self.exclusive_owner, self.auto_delete = durable, exclusive_owner, auto_delete
        self.arguments = arguments or {}
        #: The arguments it runs with after policies (``options`` is them parsed).
        self.applied = Applied(self.arguments)
        self.store_key = f"{vhost}\x1f{name}"
        self._store, self._owner, self._now = store, owner, now
        self._persists = durable and store.keeps_messages
        self._bounded = options.max_length is not None or options.max_length_bytes is not None
        self._ttl = options.message_ttl_ms is not None
        self._max_level = options.max_priority or 0
        self.ready = ReadyMessages(self.store_key, options.max_priority or 0, store, now, window)
        self.unacked: dict[int, Entry] = {}
        #: Body bytes of the unacked messages (what the memory alarm counts, with ready bytes).
        self.unacked_bytes = 0
        self.consumers: list[QueueConsumer] = []
        #: A partition's active consumer (see :meth:`_partition_consumer`).
        self._active: QueueConsumer | None = None
        #: The consumer a partition wants, worked out again when consumers come or go.
        self._wanted: QueueConsumer | None = None
        self._rr = 0
        self._dispatch_soon = False
        self.deleted = False
        self.counters = Counters()
        self.waiting = Histogram()
        self.processing = Histogram()
        self.last_used = now()

    def reconfigure(self, options: QueueOptions, applied: Applied) -> None:
        """A policy changed what applies: run with ``options`` from now on. Lower length
        limits apply at once (``trim``); a TTL applies to messages enqueued from now, as
        RabbitMQ's does."""
        self.options, self.applied = options, applied
        self._bounded = options.max_length is not None or options.max_length_bytes is not None
        self._ttl = options.message_ttl_ms is not None
        if self._bounded:
            trim(self)

    # -- counts ----------------------------------------------------------------------------

    @property
    def ready_count(self) -> int:
        return len(self.ready)

    def held_bytes(self) -> int:
        """Message bytes held in memory: the ready window and the unacked messages."""
        return self.ready.bytes + self.unacked_bytes

    # -- enqueue ---------------------------------------------------------------------------

    def offer(self, record: Record, now: float, next_seq: Callable[[], int]) -> bool:
        """Enqueue ``record`` honouring TTL and the length limits; False when refused."""
        if self._ttl or record.message.expiration is not None:
            record.expires_at = expires_at(self.options, record.message, now)
        if self._bounded:
            verdict = admit(self, record)
            if verdict is not Verdict.ENQUEUE:
                return verdict is Verdict.DROPPED
        self.enqueue(next_seq(), record)
        return True

    def enqueue(self, seq: int, record: Record) -> None:
        """Add a message (limits already applied)."""
        message = record.message
        # The lane: the priority capped at x-max-priority (as in RabbitMQ); 0 for plain queues.
        level = min(message.priority or 0, self._max_level) if self._max_level else 0
        entry = Entry(seq, record, self._persists and message.persistent, level)
        entry.redelivered = record.delivery_count > 0
        self.counters.published += 1
        if not self.ready.add(entry):
            return  # paged out
        if record.expires_at is not None and self.ready.is_head(entry):
            self._owner.head_expires(self, record.expires_at)
        consumers = self.consumers
        if consumers:
            if len(consumers) == 1 and consumers[0].on_deliveries is not None:
                self._dispatch_at_turn_end()
            else:
                self.dispatch()

    def _dispatch_at_turn_end(self) -> None:
        """For a consumer that takes lists: one dispatch when this loop turn's publishes are
        in, so one list carries them, instead of a list of one per publish."""
        if self._dispatch_soon:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.dispatch()
            return
        self._dispatch_soon = True
        loop.call_soon(self._dispatch_deferred)

    def _dispatch_deferred(self) -> None:
        self._dispatch_soon = False
        if not self.deleted:
            self.dispatch()

    def _push(self, entry: Entry) -> None:
        self.ready.push(entry)
        if entry.record.expires_at is not None and self.ready.is_head(entry):
            self._owner.head_expires(self, entry.record.expires_at)

    def drop(self, entry: Entry, reason: str) -> None:
        """``entry`` leaves the queue as a dead letter (overflow, expiry, rejection): its row
        goes and the owner routes it to the dead-letter exchange, if there is one."""
        self.ready.forget(entry)
        self.counters.dead_lettered += 1
        self._owner.dead_letter(self, entry, reason)

    # -- taking ----------------------------------------------------------------------------

    def _head(self) -> Entry | None:
        waiting = self.ready.awaiting_commit
        head = self.ready.head()
        if self.ready.awaiting_commit and not waiting:
            self._owner.wait_for_commit(self)
        return head

    def pop_ready(self) -> Entry | None:
        """Remove and return the head ready message (paging in if needed)."""
        if self.ready.paged_out:
            self._head()  # pages in (or asks to wait for the commit) first
        return self.ready.pop()

    def after_commit(self, deliver: bool = True) -> None:
        """The commit awaited for paged-out rows has landed: read them (and deliver)."""
        self.ready.after_commit()
        if deliver and not self.deleted:
            self.dispatch()

    def expire_head(self) -> None:
        """Dead-letter every expired message at the head (RabbitMQ expires at the head only)."""
        now = self._now()
        while (head := self._head()) is not None:
            at = head.record.expires_at
            if at is None or at > now:
                if at is not None:
                    self._owner.head_expires(self, at)
                return
            self.ready.pop()
            self.counters.expired += 1
            self.drop(head, "expired")

    def take(self) -> Entry | None:
        """The next deliverable message, skipping (dead-lettering) expired ones."""
        ready = self.ready
        while True:
            if ready.paged_out:
                self._head()  # pages in (or asks to wait for the commit) first
            entry = ready.pop()
            if entry is None:
                return None
            record = entry.record
            at = record.expires_at
            if at is not None and at <= self._now():
                self.counters.expired += 1
                self.drop(entry, "expired")
                continue
            if entry.redelivered and (limit := self.options.delivery_limit) is not None and \
                    record.delivery_count > limit:  # its consumers died with it: recovery
                self.drop(entry, "delivery_limit")  # counted past the limit
                continue
            return entry

    # -- dispatch --------------------------------------------------------------------------

    def touch(self, now: float) -> None:
        """The queue was used (declared, consumed from, read): ``x-expires`` counts from
        here."""
        self.last_used = now

    def check_consumer(self, prefetch_count: int, no_ack: bool,
                       arguments: dict[str, Any]) -> None:
        """Refuse a consumer this queue cannot serve (before it is registered anywhere)."""

    def housekeep(self, now: float) -> None:
        """The broker's once-a-second tick (a stream applies its retention here)."""

    def add_consumer(self, consumer: QueueConsumer, now: float) -> None:
        self.consumers.append(consumer)
        self._wanted = None
        self.last_used = now

    def remove_consumer(self, consumer: QueueConsumer, now: float) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
        self._wanted = None
        if consumer is self._active and not self.unacked:
            self._active = None  # (kept while its deliveries are out: the next one waits)
        self.last_used = now

    def mark_delivered(self, entry: Entry, now: float) -> None:
        """Bookkeeping for a delivery (consumer or get)."""
        self.unacked[entry.seq] = entry
        self.unacked_bytes += entry.size
        if entry.delivered_at == 0.0 and not entry.redelivered:
            self.waiting.observe((now - entry.record.enqueued_at) * 1000.0)
        entry.delivered_at = now
        self.counters.delivered += 1
        if entry.redelivered:
            self.counters.redelivered += 1
        if entry.stored:
            self.ready.mark_delivered(entry)
            if entry.redelivered:
                # A redelivery is stored as failed before it is made (the record in memory
                # keeps the count the consumer sees): a consumer process that dies with it
                # (os._exit, the OOM killer) then counts toward the delivery limit after
                # recovery, so a message that kills its consumer cannot loop for ever. A
                # first delivery costs no write: recovery counts it from the delivered mark.
                record = entry.record
                self._store.replace(self.ready.lanes[entry.level].key, entry.seq, encode_record(
                    dataclasses.replace(record, delivery_count=record.delivery_count + 1)))

    def dispatch(self) -> None:
        """Deliver ready messages to consumers with room, round robin (or to the single
        active consumer)."""
        consumers = self.consumers
        single = self.options.single_active_consumer
        ready = self.ready
        while consumers and (ready.tail or ready.heap or ready.paged_out):
            if single or len(consumers) == 1:
                if self.options.partition is None:
                    chosen = consumers[0]
                elif (active := self._partition_consumer()) is not None:
                    chosen = active
                else:
                    return
                if chosen.on_deliveries is not None and (room := chosen.batch_room()) > 1:
                    self._dispatch_list(chosen, room)
                    continue
                if not chosen.has_room():
                    return
            else:
                n = len(consumers)
                for i in range(n):
                    c = consumers[(self._rr + i) % n]
                    if c.has_room():
                        chosen = c
                        self._rr = (self._rr + i + 1) % n
                        break
                else:
                    return
            entry = self.take()
            if entry is None:
                return
            self.mark_delivered(entry, self._now())
            chosen.deliver(self, entry)

    def _partition_consumer(self) -> QueueConsumer | None:
        """A partition's active consumer: the (I mod n)-th of its consumers, ordered by their
        ``x-tidings-member`` argument (then by arrival), so that a set of partitions consumed
        by the same members spreads evenly over them. When that changes (a consumer came or
        went) while the one active before holds deliveries, none is: the next gets messages
        once those are settled (acked, or returned when its channel closes or its consumer
        timeout passes), so one partition's messages are never in two consumers' hands at
        once."""
        wanted = self._wanted
        if wanted is None:
            assert self.options.partition is not None
            consumers = sorted(self.consumers, key=_member)
            wanted = self._wanted = consumers[self.options.partition % len(consumers)]
        before = self._active
        if before is not wanted and before is not None and self.unacked:
            return None
        self._active = wanted
        return wanted

    def _dispatch_list(self, consumer: QueueConsumer, room: int) -> None:
        """Up to ``room`` messages to ``consumer`` in one list (a lone consumer that takes
        lists: the embedded client's receiver)."""
        now = self._now()
        entries: list[Entry] = []
        while len(entries) < room and (entry := self.take()) is not None:
            self.mark_delivered(entry, now)
            entries.append(entry)
        if entries:
            consumer.deliver_many(self, entries)

    # -- settlement ------------------------------------------------------------------------

    def _take_unacked(self, entry: Entry) -> bool:
        if self.unacked.pop(entry.seq, None) is None:
            return False
        self.unacked_bytes -= entry.size
        return True

    def ack(self, entry: Entry) -> None:
        if not self._take_unacked(entry):
            return
        if entry.stored:  # ready.forget(entry), inlined on the hot path
            self._store.remove(self.ready.lanes[entry.level].key, entry.seq)
        self.counters.acked += 1
        self.processing.observe((self._now() - entry.delivered_at) * 1000.0)

    def _returned(self, entry: Entry) -> bool:
        """Count a failed delivery; False if the message is gone (deleted, dead-lettered)."""
        if not self._take_unacked(entry) or self.deleted:
            return False
        entry.record.delivery_count += 1
        limit = self.options.delivery_limit
        if limit is not None and entry.record.delivery_count > limit:
            self.drop(entry, "delivery_limit")
            return False
        return True

    def requeue(self, entry: Entry) -> None:
        """Return an unacked message to its place, counting the failed delivery."""
        if not self._returned(entry):
            return
        entry.redelivered = True
        if entry.stored:
            self._store.replace(self.ready.lanes[entry.level].key, entry.seq,
                                encode_record(entry.record))
        self._push(entry)

    def release_for_delay(self, entry: Entry) -> Record | None:
        """Take an unacked message out for a delayed retry; None if it is gone instead."""
        if not self._returned(entry):
            return None
        self.ready.forget(entry)
        return entry.record

    def discard(self, entry: Entry, reason: str) -> None:
        """Reject without requeue: dead-letter (or drop) an unacked message."""
        if not self._take_unacked(entry):
            return
        self.drop(entry, reason)

    # -- whole-queue operations ------------------------------------------------------------

    def restore(self, level: int, entries: list[Entry], paged_out: int, paged_bytes: int,
                max_seq: int, mark: int = -1, read_up_to: int = -1) -> None:
        """Recovery of one lane (see :meth:`ReadyMessages.restore`)."""
        self.ready.restore(level, entries, paged_out, paged_bytes, max_seq, mark, read_up_to)

    def purge(self) -> int:
        """Drop all ready messages (unacked ones stay); return how many."""
        return self.ready.purge()

    def close(self) -> list[str]:
        """The queue is deleted: cancel its consumers, drop its unacked messages and return
        the store keys of its rows."""
        self.deleted = True
        consumers, self.consumers = self.consumers, []
        self._wanted = self._active = None
        for consumer in consumers:
            consumer.cancelled()
        self.unacked.clear()
        self.unacked_bytes = 0
        return self.ready.store_keys()
