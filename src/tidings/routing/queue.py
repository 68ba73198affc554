"""Queue: ready ⇄ unacked, in order, by priority, with TTL, overflow, dead-lettering and paging.

Ready messages sit in a heap keyed ``(-priority, seq)``: FIFO within a priority, and a requeued
message (its old seq) goes back to its place. Only a bounded *window* of ready messages is kept
in memory; once it is full, newer messages live only in the store ("paged out") and are read
back a page at a time as the window drains. Invariant: every paged-out message has a greater
seq than every message in memory, so paging in is one index range scan. (Priority queues do not
page: the priority order would need one scan per level.)

The queue never awaits. It calls ``deliver`` on consumers and tells the broker to dead-letter;
the store calls it makes join the current group commit.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tidings.message import Record, decode_record, encode_record
from tidings.routing.arguments import QueueOptions
from tidings.routing.stats import Counters, Histogram
from tidings.storage.base import TRANSIENT, Store

if TYPE_CHECKING:  # the consumer type is only named in annotations
    from tidings.routing.session import Consumer

#: Ready messages held in memory per (non-priority) queue before paging to the store.
DEFAULT_WINDOW = 20_000
#: ... and at most this many body bytes of them (large messages page out sooner).
WINDOW_BYTES = 32 * 2**20


class Entry:
    """One message in one queue."""

    __slots__ = ("delivered_at", "record", "redelivered", "seq", "size", "stored")

    def __init__(self, seq: int, record: Record, stored: bool) -> None:
        self.seq = seq
        self.record = record
        self.size = len(record.message.body)
        self.stored = stored
        self.redelivered = False
        self.delivered_at = 0.0


DeadLetter = Callable[["Queue", Entry, str], None]


class Queue:
    def __init__(
        self,
        name: str,
        vhost: str,
        options: QueueOptions,
        *,
        store: Store,
        dead_letter: DeadLetter,
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
        self.store_key = f"{vhost}\x1f{name}"
        self._store, self._dead_letter, self._now = store, dead_letter, now
        self._keep = store.keeps_messages
        # Priority queues do not page (see above); a store that keeps no messages cannot.
        pages = options.max_priority is None and self._keep
        self.window = window if pages else 1 << 62
        self.window_bytes = WINDOW_BYTES if pages else 1 << 62
        self._ready: list[tuple[int, int, Entry]] = []
        self.ready_bytes = 0
        self.paged_out = 0
        self.paged_bytes = 0
        self.unacked: dict[int, Entry] = {}
        self.consumers: list[Consumer] = []
        self._rr = 0
        self.deleted = False
        self.counters = Counters()
        self.waiting = Histogram()
        self.processing = Histogram()
        self._marked = -1
        #: Greatest seq ever held in memory; paged-out messages all lie above it.
        self._boundary = -1
        #: Greatest seq ever paged out (an upper bound after recovery).
        self._paged_max = -1
        #: Paged-out seqs removed while their rows may still be pending removal.
        self._removed_paged: set[int] = set()
        #: Called when paged-out messages are not readable yet (their commit is pending).
        self.on_page_wait: Callable[[Queue], None] | None = None
        self.last_used = now()
        #: Called when the head of the queue will expire (the broker arms a timer).
        self.on_head_expiry: Callable[[Queue, float], None] | None = None

    # -- counts ----------------------------------------------------------------------------

    @property
    def ready_count(self) -> int:
        return len(self._ready) + self.paged_out

    def _bytes(self) -> int:
        return self.ready_bytes + self.paged_bytes

    def oldest_ready_at(self) -> float | None:
        if self._ready:
            return min(e.record.enqueued_at for _, _, e in self._ready[:64])
        return None

    # -- enqueue ---------------------------------------------------------------------------

    def make_room(self, size: int) -> str | None:
        """Apply max-length before adding ``size`` bytes; a refusal names the overflow mode."""
        o = self.options
        if o.max_length is None and o.max_length_bytes is None:
            return None

        def over() -> bool:
            if o.max_length is not None and self.ready_count + 1 > o.max_length:
                return True
            return o.max_length_bytes is not None and self._bytes() + size > o.max_length_bytes

        if not over():
            return None
        if o.overflow != "drop-head":
            return o.overflow
        while over() and self.ready_count:
            entry = self._pop()
            if entry is not None:
                self._dead_letter(self, entry, "maxlen")
        return "drop-head" if over() else None

    def enqueue(self, seq: int, record: Record) -> None:
        """Add a message (overflow already checked by :meth:`make_room`)."""
        persistent = self.durable and record.message.persistent and self._keep
        entry = Entry(seq, record, persistent)
        entry.redelivered = record.delivery_count > 0
        self.counters.published += 1
        if self.paged_out or len(self._ready) >= self.window or \
                self.ready_bytes >= self.window_bytes:
            flags = 0 if persistent else TRANSIENT
            self._store.append(self.store_key, seq, encode_record(record), flags)
            self.paged_out += 1
            self.paged_bytes += entry.size
            self._paged_max = seq
            return
        if persistent:
            self._store.append(self.store_key, seq, encode_record(record))
        self._push(entry)
        if self.consumers:
            self.dispatch()

    def restore(self, entries: list[Entry], paged_out: int, paged_bytes: int, max_seq: int,
                mark: int = -1) -> None:
        """Recovery: the first window of stored messages plus counts of the rest.

        ``mark`` is the stored delivered high-water mark: messages at or below it were
        delivered before the restart, so they come back marked redelivered, including the
        ones paged in later."""
        self._marked = max(self._marked, mark)
        for entry in entries:
            self._revisit(entry)
            self._push(entry)
        self.paged_out, self.paged_bytes = paged_out, paged_bytes
        if paged_out:
            self._paged_max = max_seq

    def _revisit(self, entry: Entry) -> None:
        """A stored message at or below the delivered mark was delivered before a restart."""
        if entry.seq <= self._marked and not entry.redelivered:
            entry.redelivered = True
            entry.record.delivery_count = max(entry.record.delivery_count, 1)

    def _push(self, entry: Entry) -> None:
        priority = entry.record.message.priority or 0
        max_priority = self.options.max_priority
        key = -min(priority, max_priority) if max_priority else 0
        heapq.heappush(self._ready, (key, entry.seq, entry))
        self.ready_bytes += entry.size
        if entry.seq > self._boundary:
            self._boundary = entry.seq
        if entry.record.expires_at is not None and self._ready[0][2] is entry:
            self._arm_expiry()

    def _arm_expiry(self) -> None:
        if self._ready and self.on_head_expiry is not None:
            expires_at = self._ready[0][2].record.expires_at
            if expires_at is not None:
                self.on_head_expiry(self, expires_at)

    # -- taking ----------------------------------------------------------------------------

    def _page_in(self) -> None:
        average = self.paged_bytes // self.paged_out if self.paged_out else 1
        limit = min(self.window // 2, self.window_bytes // 2 // max(average, 1))
        rows = self._store.load(self.store_key, self._boundary, max(1, limit))
        for seq, data in rows:
            if seq in self._removed_paged:
                self._removed_paged.discard(seq)
                continue
            entry = Entry(seq, decode_record(data), True)
            self._revisit(entry)
            self.paged_out -= 1
            self.paged_bytes -= entry.size
            self._push(entry)
        if rows:
            self._boundary = max(self._boundary, rows[-1][0])
        if self.paged_out <= 0:
            self.paged_out = self.paged_bytes = 0
        elif not self._ready and self.on_page_wait is not None:
            self.on_page_wait(self)

    def _pop(self) -> Entry | None:
        """Remove and return the head ready message (paging in if needed)."""
        if not self._ready and self.paged_out:
            self._page_in()
        if not self._ready:
            return None
        _, _, entry = heapq.heappop(self._ready)
        self.ready_bytes -= entry.size
        return entry

    def expire_head(self) -> None:
        """Dead-letter every expired message at the head (RabbitMQ expires at the head only)."""
        now = self._now()
        while self._ready:
            head = self._ready[0][2]
            expires_at = head.record.expires_at
            if expires_at is None or expires_at > now:
                break
            self._pop()
            self.counters.expired += 1
            self._dead_letter(self, head, "expired")
        self._arm_expiry()

    def take(self) -> Entry | None:
        """The next deliverable message, skipping expired ones."""
        while True:
            entry = self._pop()
            if entry is None:
                return None
            expires_at = entry.record.expires_at
            if expires_at is not None and expires_at <= self._now():
                self.counters.expired += 1
                self._dead_letter(self, entry, "expired")
                continue
            return entry

    def mark_delivered(self, entry: Entry, now: float) -> None:
        """Bookkeeping for a delivery (consumer or get)."""
        self.unacked[entry.seq] = entry
        if entry.delivered_at == 0.0 and not entry.redelivered:
            self.waiting.observe((now - entry.record.enqueued_at) * 1000.0)
        entry.delivered_at = now
        self.counters.delivered += 1
        if entry.redelivered:
            self.counters.redelivered += 1
        if entry.stored and entry.seq > self._marked:
            self._marked = entry.seq
            self._store.mark_delivered(self.store_key, entry.seq)

    def dispatch(self) -> None:
        """Deliver ready messages to consumers with room, round robin."""
        consumers = self.consumers
        single = self.options.single_active_consumer
        while consumers and (self._ready or self.paged_out):
            if single or len(consumers) == 1:
                chosen = consumers[0]
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

    # -- settling --------------------------------------------------------------------------

    def ack(self, entry: Entry) -> None:
        if self.unacked.pop(entry.seq, None) is None:
            return
        if entry.stored:
            self._store.remove(self.store_key, entry.seq)
        self.counters.acked += 1
        self.processing.observe((self._now() - entry.delivered_at) * 1000.0)

    def _returned(self, entry: Entry) -> bool:
        """Count a failed delivery; False if the message is gone (deleted, dead-lettered)."""
        if self.unacked.pop(entry.seq, None) is None or self.deleted:
            return False
        entry.record.delivery_count += 1
        limit = self.options.delivery_limit
        if limit is not None and entry.record.delivery_count > limit:
            self._dead_letter(self, entry, "delivery_limit")
            return False
        return True

    def requeue(self, entry: Entry) -> None:
        """Return an unacked message to its place, counting the failed delivery."""
        if not self._returned(entry):
            return
        entry.redelivered = True
        if entry.stored:
            self._store.replace(self.store_key, entry.seq, encode_record(entry.record))
        self._push(entry)

    def release_for_delay(self, entry: Entry) -> Record | None:
        """Take an unacked message out for a delayed retry; None if it is gone instead."""
        if not self._returned(entry):
            return None
        self.remove_stored(entry)
        return entry.record

    def discard(self, entry: Entry, reason: str) -> None:
        """Reject without requeue: dead-letter (or drop) an unacked message."""
        if self.unacked.pop(entry.seq, None) is None:
            return
        self._dead_letter(self, entry, reason)

    def remove_stored(self, entry: Entry) -> None:
        if entry.stored:
            self._store.remove(self.store_key, entry.seq)

    # -- browsing and removal --------------------------------------------------------------

    def browse(self, limit: int) -> list[Entry]:
        """Ready messages in delivery order, without delivering them."""
        entries = [e for _, _, e in sorted(self._ready, key=lambda t: (t[0], t[1]))][:limit]
        if len(entries) < limit and self.paged_out:
            rows = self._store.load(self.store_key, self._boundary, limit - len(entries))
            entries += [
                Entry(seq, decode_record(data), True)
                for seq, data in rows
                if seq not in self._removed_paged
            ]
        return entries

    def remove_ready(self, seq: int) -> Entry | None:
        """Remove one ready message by seq (cancelling a waiting job)."""
        for i, (_, s, entry) in enumerate(self._ready):
            if s == seq:
                self._ready[i] = self._ready[-1]
                self._ready.pop()
                heapq.heapify(self._ready)
                self.ready_bytes -= entry.size
                self.remove_stored(entry)
                return entry
        if seq > self._boundary and self.paged_out and seq not in self._removed_paged:
            rows = self._store.load(self.store_key, seq - 1, 1)
            if rows and rows[0][0] == seq:
                entry = Entry(seq, decode_record(rows[0][1]), True)
                self._store.remove(self.store_key, seq)
                self._removed_paged.add(seq)
                self.paged_out -= 1
                self.paged_bytes -= entry.size
                return entry
        return None

    def purge(self) -> int:
        """Drop all ready messages (unacked ones stay); return how many."""
        count = self.ready_count
        for _, _, entry in self._ready:
            self.remove_stored(entry)
        if self.paged_out:
            self._store.remove_after(self.store_key, self._boundary)
            self._boundary = max(self._boundary, self._paged_max)
        self._ready.clear()
        self._removed_paged.clear()
        self.ready_bytes = self.paged_out = self.paged_bytes = 0
        return count
