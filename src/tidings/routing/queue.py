"""Queue: ready ⇄ unacked, in order, by priority, with TTL, overflow, dead-lettering and paging.

Ready messages sit in a heap keyed ``(-priority, seq)``: FIFO within a priority, and a requeued
message (its old seq) goes back to its place. Only a bounded *window* of ready messages is kept
in memory; once it is full, newer messages live only in the store ("paged out") and are read
back a page at a time as the window drains.

Paging is per *lane*: a plain queue has one, a priority queue one per level (RabbitMQ's classic
priority queue is likewise one sub-queue per level), each under its own store key. Invariant:
every paged-out message of a lane has a greater seq than every message of that lane in memory,
so paging a lane in is one index range scan; and the head is never taken while a lane of a
higher level has messages paged out (that lane is paged in first).

The queue never awaits. It calls ``deliver`` on consumers and tells the broker to dead-letter;
the store calls it makes join the current group commit.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tidings.message import Record, encode_record
from tidings.routing.arguments import QueueOptions
from tidings.routing.quarantine import decode_or_quarantine
from tidings.statistics import Counters, Histogram
from tidings.storage.base import TRANSIENT, Store

if TYPE_CHECKING:  # the consumer type is only named in annotations
    from tidings.routing.session import Consumer

#: Ready messages held in memory per (non-priority) queue before paging to the store.
DEFAULT_WINDOW = 20_000
#: ... and at most this many body bytes of them (large messages page out sooner).
WINDOW_BYTES = 32 * 2**20


#: Separates a queue's store key from a priority level's lane (level 0 uses the bare key).
LANE_SEPARATOR = "\x1e"


class Entry:
    """One message in one queue."""

    __slots__ = ("delivered_at", "level", "record", "redelivered", "seq", "size", "stored")

    def __init__(self, seq: int, record: Record, stored: bool, level: int = 0) -> None:
        self.seq = seq
        self.record = record
        self.size = len(record.message.body)
        self.stored = stored
        self.level = level
        self.redelivered = False
        self.delivered_at = 0.0


class Lane:
    """The paging state of one priority level (all of a plain queue's messages)."""

    __slots__ = ("boundary", "key", "level", "marked", "paged_bytes", "paged_max", "paged_out",
                 "removed")

    def __init__(self, key: str, level: int) -> None:
        self.key, self.level = key, level
        self.paged_out = 0
        self.paged_bytes = 0
        #: Greatest seq of this lane ever held in memory; its paged-out messages lie above it.
        self.boundary = -1
        #: Greatest seq ever paged out (an upper bound after recovery).
        self.paged_max = -1
        #: Paged-out seqs removed while their rows may still be pending removal.
        self.removed: set[int] = set()
        #: Delivered high-water mark (delivery is in seq order within a lane).
        self.marked = -1


def lane_key(store_key: str, level: int) -> str:
    return store_key if level == 0 else f"{store_key}{LANE_SEPARATOR}{level}"


def split_lane_key(key: str) -> tuple[str, int]:
    """A store key -> (the queue's store key, priority level), if it names a lane above 0.
    (A queue name may itself contain the separator: callers try the whole key first.)"""
    base, sep, level = key.rpartition(LANE_SEPARATOR)
    return (base, int(level)) if sep and level.isdigit() else (key, 0)


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
        # A store that keeps no messages cannot page.
        self.window = window if self._keep else 1 << 62
        self.window_bytes = WINDOW_BYTES if self._keep else 1 << 62
        self._ready: list[tuple[int, int, Entry]] = []
        self.ready_bytes = 0
        #: Totals over the lanes.
        self.paged_out = 0
        self.paged_bytes = 0
        self._max_level = options.max_priority or 0
        self.lanes = [Lane(lane_key(self.store_key, level), level)
                      for level in range(self._max_level + 1)]
        #: Levels whose lane has messages paged out.
        self._paged: set[int] = set()
        self.unacked: dict[int, Entry] = {}
        #: Body bytes of the unacked messages (what the memory alarm counts, with ready_bytes).
        self.unacked_bytes = 0
        self.consumers: list[Consumer] = []
        self._rr = 0
        self.deleted = False
        self.counters = Counters()
        self.waiting = Histogram()
        self.processing = Histogram()
        #: Called when paged-out messages are not readable yet (their commit is pending).
        self.on_page_wait: Callable[[Queue], None] | None = None
        #: Set while paged-out rows are awaited: no store reads until :meth:`after_commit`.
        self._awaiting_commit = False
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
            if entry is None:  # the head is paged out and not readable until the commit
                break
            self._dead_letter(self, entry, "maxlen")
        return "drop-head" if over() else None

    def enqueue(self, seq: int, record: Record) -> None:
        """Add a message (overflow already checked by :meth:`make_room`)."""
        persistent = self.durable and record.message.persistent and self._keep
        # The lane: the priority capped at x-max-priority (as in RabbitMQ); 0 for plain queues.
        level = min(record.message.priority or 0, self._max_level) if self._max_level else 0
        entry = Entry(seq, record, persistent, level)
        entry.redelivered = record.delivery_count > 0
        self.counters.published += 1
        lane = self.lanes[level]
        if lane.paged_out or len(self._ready) >= self.window or \
                self.ready_bytes >= self.window_bytes:
            flags = 0 if persistent else TRANSIENT
            self._store.append(lane.key, seq, encode_record(record), flags)
            lane.paged_out += 1
            lane.paged_bytes += entry.size
            lane.paged_max = seq
            self.paged_out += 1
            self.paged_bytes += entry.size
            self._paged.add(level)
            return
        if persistent:
            self._store.append(lane.key, seq, encode_record(record))
        self._push(entry)
        if self.consumers:
            self.dispatch()

    def restore(self, level: int, entries: list[Entry], paged_out: int, paged_bytes: int,
                max_seq: int, mark: int = -1, read_up_to: int = -1) -> None:
        """Recovery of one lane: its first stored messages plus counts of the rest.

        ``read_up_to`` is the last seq recovery read (quarantined rows included): paging in
        resumes after it.

        ``mark`` is the lane's stored delivered high-water mark: messages at or below it were
        delivered before the restart, so they come back marked redelivered, including the
        ones paged in later."""
        lane = self.lanes[level]
        lane.marked = max(lane.marked, mark)
        lane.boundary = max(lane.boundary, read_up_to)
        for entry in entries:
            entry.level = level
            self._revisit(lane, entry)
            self._push(entry)
        if paged_out:
            lane.paged_out, lane.paged_bytes = paged_out, paged_bytes
            lane.paged_max = max_seq
            self.paged_out += paged_out
            self.paged_bytes += paged_bytes
            self._paged.add(level)

    @staticmethod
    def _revisit(lane: Lane, entry: Entry) -> None:
        """A stored message at or below the delivered mark was delivered before a restart."""
        if entry.seq <= lane.marked and not entry.redelivered:
            entry.redelivered = True
            entry.record.delivery_count = max(entry.record.delivery_count, 1)

    def _push(self, entry: Entry) -> None:
        heapq.heappush(self._ready, (-entry.level, entry.seq, entry))
        self.ready_bytes += entry.size
        lane = self.lanes[entry.level]
        if entry.seq > lane.boundary:
            lane.boundary = entry.seq
        if entry.record.expires_at is not None and self._ready[0][2] is entry:
            self._arm_expiry()

    def _arm_expiry(self) -> None:
        if self._ready and self.on_head_expiry is not None:
            expires_at = self._ready[0][2].record.expires_at
            if expires_at is not None:
                self.on_head_expiry(self, expires_at)

    # -- taking ----------------------------------------------------------------------------

    def _page_in(self, lane: Lane) -> None:
        """Read the next page of ``lane``; pages whose rows were all removed meanwhile (or
        quarantined) are passed over, so one call leaves a message ready if there is one."""
        level = lane.level
        while True:
            average = lane.paged_bytes // lane.paged_out if lane.paged_out > 0 else 1
            limit = min(self.window // 2, self.window_bytes // 2 // max(average, 1))
            rows = self._store.load(lane.key, lane.boundary, max(1, limit))
            pushed = False
            for seq, data in rows:
                if seq in lane.removed:
                    lane.removed.discard(seq)
                    continue
                record = self._decode(lane, seq, data)
                if record is None:  # moved to the quarantine: no longer paged out
                    self._unpage(lane, len(data))
                    continue
                entry = Entry(seq, record, True, level)
                self._revisit(lane, entry)
                self._unpage(lane, entry.size)
                self._push(entry)
                pushed = True
            if rows:
                lane.boundary = max(lane.boundary, rows[-1][0])
            if lane.paged_out <= 0:
                self.paged_out -= lane.paged_out
                self.paged_bytes -= lane.paged_bytes
                lane.paged_out = lane.paged_bytes = 0
                self._paged.discard(level)
                return
            if not rows:
                if self.on_page_wait is not None:
                    self._awaiting_commit = True  # not readable until the pending commit
                    self.on_page_wait(self)
                return
            if pushed:
                return

    def _decode(self, lane: Lane, seq: int, data: bytes) -> Record | None:
        return decode_or_quarantine(self._store, lane.key, seq, data, self._now())

    def _unpage(self, lane: Lane, size: int) -> None:
        """Count one paged-out message of ``lane`` as no longer in the store."""
        lane.paged_out -= 1
        lane.paged_bytes -= size
        self.paged_out -= 1
        self.paged_bytes -= size

    def after_commit(self, deliver: bool = True) -> None:
        """The commit awaited for paged-out rows has landed: read them (and deliver)."""
        self._awaiting_commit = False
        if deliver and not self.deleted:
            self.dispatch()

    def _head(self) -> Entry | None:
        """The head ready message, paging in first when it is (or outranks it) in the store."""
        if self._paged and not self._awaiting_commit:
            top = max(self._paged)
            if not self._ready or top > self._ready[0][2].level:
                self._page_in(self.lanes[top])
        return self._ready[0][2] if self._ready else None

    def _pop(self) -> Entry | None:
        """Remove and return the head ready message (paging in if needed)."""
        if self._paged:
            self._head()
        if not self._ready:
            return None
        _, _, entry = heapq.heappop(self._ready)
        self.ready_bytes -= entry.size
        return entry

    def expire_head(self) -> None:
        """Dead-letter every expired message at the head (RabbitMQ expires at the head only)."""
        now = self._now()
        while (head := self._head()) is not None:
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
        self.unacked_bytes += entry.size
        if entry.delivered_at == 0.0 and not entry.redelivered:
            self.waiting.observe((now - entry.record.enqueued_at) * 1000.0)
        entry.delivered_at = now
        self.counters.delivered += 1
        if entry.redelivered:
            self.counters.redelivered += 1
        if entry.stored:
            lane = self.lanes[entry.level]
            if entry.seq > lane.marked:
                lane.marked = entry.seq
                self._store.mark_delivered(lane.key, entry.seq)

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

    def _take_unacked(self, entry: Entry) -> bool:
        if self.unacked.pop(entry.seq, None) is None:
            return False
        self.unacked_bytes -= entry.size
        return True

    def ack(self, entry: Entry) -> None:
        if not self._take_unacked(entry):
            return
        if entry.stored:
            self._store.remove(self.lanes[entry.level].key, entry.seq)
        self.counters.acked += 1
        self.processing.observe((self._now() - entry.delivered_at) * 1000.0)

    def _returned(self, entry: Entry) -> bool:
        """Count a failed delivery; False if the message is gone (deleted, dead-lettered)."""
        if not self._take_unacked(entry) or self.deleted:
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
            self._store.replace(self.lanes[entry.level].key, entry.seq,
                                encode_record(entry.record))
        self._push(entry)

    def release_for_delay(self, entry: Entry) -> Record | None:
        """Take an unacked message out for a delayed retry; None if it is gone instead."""
        if not self._returned(entry):
            return None
        self.remove_stored(entry)
        return entry.record

    def discard(self, entry: Entry, reason: str) -> None:
        """Reject without requeue: dead-letter (or drop) an unacked message."""
        if not self._take_unacked(entry):
            return
        self._dead_letter(self, entry, reason)

    def remove_stored(self, entry: Entry) -> None:
        if entry.stored:
            self._store.remove(self.lanes[entry.level].key, entry.seq)

    # -- browsing and removal --------------------------------------------------------------

    def browse(self, limit: int) -> list[Entry]:
        """Ready messages in delivery order, without delivering them."""
        ready = sorted(self._ready, key=lambda t: (t[0], t[1]))[:limit]
        for level in self._paged:  # merged by (level, seq): the store rows follow memory's
            lane = self.lanes[level]
            for seq, data in self._store.load(lane.key, lane.boundary, limit):
                if seq in lane.removed:
                    continue
                record = self._decode(lane, seq, data)
                if record is None:
                    lane.removed.add(seq)
                    self._unpage(lane, len(data))
                else:
                    ready.append((-level, seq, Entry(seq, record, True, level)))
        if self._paged:
            ready.sort(key=lambda t: (t[0], t[1]))
        return [e for _, _, e in ready[:limit]]

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
        for level in self._paged:
            lane = self.lanes[level]
            if seq <= lane.boundary or seq in lane.removed:
                continue
            rows = self._store.load(lane.key, seq - 1, 1)
            if rows and rows[0][0] == seq:
                record = self._decode(lane, seq, rows[0][1])
                lane.removed.add(seq)
                if record is None:
                    self._unpage(lane, len(rows[0][1]))
                    return None
                entry = Entry(seq, record, True, level)
                self._store.remove(lane.key, seq)
                self._unpage(lane, entry.size)
                return entry
        return None

    def purge(self) -> int:
        """Drop all ready messages (unacked ones stay); return how many."""
        count = self.ready_count
        for _, _, entry in self._ready:
            self.remove_stored(entry)
        for level in self._paged:
            lane = self.lanes[level]
            self._store.remove_after(lane.key, lane.boundary)
            lane.boundary = max(lane.boundary, lane.paged_max)
            lane.removed.clear()
            lane.paged_out = lane.paged_bytes = 0
        self._paged.clear()
        self._ready.clear()
        self.ready_bytes = self.paged_out = self.paged_bytes = 0
        return count

    def store_keys(self) -> list[str]:
        """The store keys of this queue's messages (one per lane)."""
        return [lane.key for lane in self.lanes]
