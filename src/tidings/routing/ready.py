"""A queue's ready messages: delivery order by priority, a bounded window in memory, paging.

Ready messages are ordered by ``(-priority, seq)``: FIFO within a priority, and a requeued
message (its old seq) goes back to its place. A plain queue keeps its new messages, which
arrive in seq order, in a deque (``tail``: append and pop at the ends, no tuple per message);
everything else (priorities, requeued, recovered and paged-in messages) sits in a heap. The
head is the smaller of the two heads. Only a bounded *window* of ready messages is kept
in memory; once it is full, newer messages live only in the store ("paged out") and are read
back a page at a time as the window drains.

Paging is per *lane*: a plain queue has one, a priority queue one per level (RabbitMQ's classic
priority queue is likewise one sub-queue per level), each under its own store key. Invariant:
every paged-out message of a lane has a greater seq than every message of that lane in memory,
so paging a lane in is one index range scan; and the head is never taken while a lane of a
higher level has messages paged out (that lane is paged in first).

Paged-out rows written in this loop turn are not readable until their commit lands: then
:attr:`ReadyMessages.awaiting_commit` is set, no store read happens, and the owner calls
:meth:`ReadyMessages.after_commit` once the store has committed.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable

from tidings.codecs import encode_record
from tidings.message import Record
from tidings.storage.base import TRANSIENT, Store
from tidings.storage.quarantine import decode_or_quarantine

#: Ready messages held in memory per (non-priority) queue before paging to the store.
DEFAULT_WINDOW = 20_000
#: ... and at most this many body bytes of them (large messages page out sooner).
WINDOW_BYTES = 32 * 2**20

#: Separates a queue's store key from a priority level's lane (level 0 uses the bare key).
LANE_SEPARATOR = "\x1e"


class Entry:
    """One message's place in one queue (its seq, lane and delivery state)."""

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


class ReadyMessages:
    """The ready messages of one queue, over ``max_level + 1`` lanes."""

    def __init__(self, store_key: str, max_level: int, store: Store,
                 now: Callable[[], float], window: int = DEFAULT_WINDOW) -> None:
        self._store, self._now = store, now
        # A store that keeps no messages cannot page.
        keeps = store.keeps_messages
        self.window = window if keeps else 1 << 62
        self.window_bytes = WINDOW_BYTES if keeps else 1 << 62
        #: The in-memory ready messages: a heap by (-level, seq), and (plain queues) a deque
        #: of new messages in seq order. Owners only test them for emptiness (the hot path's
        #: cheapest check); everything else goes through methods.
        self.heap: list[tuple[int, int, Entry]] = []
        self.tail: deque[Entry] = deque()
        #: Body bytes of the messages in memory.
        self.bytes = 0
        #: Totals over the lanes.
        self.paged_out = 0
        self.paged_bytes = 0
        self.max_level = max_level
        self.lanes = [Lane(lane_key(store_key, level), level) for level in range(max_level + 1)]
        #: Levels whose lane has messages paged out.
        self._paged: set[int] = set()
        #: Set while paged-out rows are awaited: no store reads until :meth:`after_commit`.
        self.awaiting_commit = False

    # -- counts ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.heap) + len(self.tail) + self.paged_out

    def in_memory(self) -> int:
        return len(self.heap) + len(self.tail)

    def _entries(self) -> list[Entry]:
        """The in-memory ready messages, in no particular order."""
        return [e for _, _, e in self.heap] + list(self.tail)

    def total_bytes(self) -> int:
        return self.bytes + self.paged_bytes

    def oldest_enqueued_at(self) -> float | None:
        sample = [e for _, _, e in self.heap[:64]] + [e for _, e in zip(range(64), self.tail,
                                                                         strict=False)]
        return min(e.record.enqueued_at for e in sample) if sample else None

    # -- adding ----------------------------------------------------------------------------

    def add(self, entry: Entry) -> bool:
        """Add a new message; False when it was paged out (written to the store only)."""
        lane = self.lanes[entry.level]
        if lane.paged_out or len(self.heap) + len(self.tail) >= self.window or \
                self.bytes >= self.window_bytes:
            self._store.append(lane.key, entry.seq, encode_record(entry.record),
                               0 if entry.stored else TRANSIENT)
            lane.paged_out += 1
            lane.paged_bytes += entry.size
            lane.paged_max = entry.seq
            self.paged_out += 1
            self.paged_bytes += entry.size
            self._paged.add(entry.level)
            return False
        if entry.stored:
            self._store.append(lane.key, entry.seq, encode_record(entry.record))
        tail = self.tail
        if not self.max_level and (not tail or tail[-1].seq < entry.seq):
            tail.append(entry)
        else:
            heapq.heappush(self.heap, (-entry.level, entry.seq, entry))
        self.bytes += entry.size
        if entry.seq > lane.boundary:
            lane.boundary = entry.seq
        return True

    def push(self, entry: Entry) -> None:
        """Put a message (new, requeued or read back) in memory at its place."""
        heapq.heappush(self.heap, (-entry.level, entry.seq, entry))
        self.bytes += entry.size
        lane = self.lanes[entry.level]
        if entry.seq > lane.boundary:
            lane.boundary = entry.seq

    def restore(self, level: int, entries: list[Entry], paged_out: int, paged_bytes: int,
                max_seq: int, mark: int = -1, read_up_to: int = -1) -> None:
        """Recovery of one lane: its first stored messages plus counts of the rest.

        ``read_up_to`` is the last seq recovery read (quarantined rows included): paging in
        resumes after it. ``mark`` is the lane's stored delivered high-water mark: messages at
        or below it were delivered before the restart, so they come back marked redelivered,
        including the ones paged in later."""
        lane = self.lanes[level]
        lane.marked = max(lane.marked, mark)
        lane.boundary = max(lane.boundary, read_up_to)
        for entry in entries:
            entry.level = level
            _revisit(lane, entry)
            self.push(entry)
        if paged_out:
            lane.paged_out, lane.paged_bytes = paged_out, paged_bytes
            lane.paged_max = max_seq
            self.paged_out += paged_out
            self.paged_bytes += paged_bytes
            self._paged.add(level)

    # -- taking ----------------------------------------------------------------------------

    def head(self) -> Entry | None:
        """The head ready message, paging in first when it is (or outranks it) in the store."""
        if self._paged and not self.awaiting_commit:
            top = max(self._paged)
            first = self._first()
            if first is None or top > first.level:
                self._page_in(self.lanes[top])
        return self._first()

    def _first(self) -> Entry | None:
        heap, tail = self.heap, self.tail
        if not heap:
            return tail[0] if tail else None
        if tail and tail[0].seq < heap[0][1]:  # a plain queue: every level is 0
            return tail[0]
        return heap[0][2]

    def pop(self) -> Entry | None:
        """Remove and return the head ready message (paging in if needed)."""
        if self._paged:
            self.head()
        heap, tail = self.heap, self.tail
        if heap and not (tail and tail[0].seq < heap[0][1]):
            entry = heapq.heappop(heap)[2]
        elif tail:
            entry = tail.popleft()
        else:
            return None
        self.bytes -= entry.size
        return entry

    def is_head(self, entry: Entry) -> bool:
        return self._first() is entry

    def after_commit(self) -> None:
        """The commit awaited for paged-out rows has landed: they may be read now."""
        self.awaiting_commit = False

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
                _revisit(lane, entry)
                self._unpage(lane, entry.size)
                self.push(entry)
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
                self.awaiting_commit = True  # not readable until the pending commit
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

    # -- browsing and removal --------------------------------------------------------------

    def browse(self, limit: int) -> list[Entry]:
        """Ready messages in delivery order, without taking them."""
        ready = sorted(((-e.level, e.seq, e) for e in self._entries()),
                       key=lambda t: (t[0], t[1]))[:limit]
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

    def remove(self, seq: int) -> Entry | None:
        """Remove one ready message by seq, from memory or the store (its row too)."""
        for i, (_, s, entry) in enumerate(self.heap):
            if s == seq:
                self.heap[i] = self.heap[-1]
                self.heap.pop()
                heapq.heapify(self.heap)
                self.bytes -= entry.size
                self.forget(entry)
                return entry
        for entry in self.tail:
            if entry.seq == seq:
                self.tail.remove(entry)
                self.bytes -= entry.size
                self.forget(entry)
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

    def forget(self, entry: Entry) -> None:
        """Remove a message's row from the store (it has left the queue)."""
        if entry.stored:
            self._store.remove(self.lanes[entry.level].key, entry.seq)

    def purge(self) -> int:
        """Drop every ready message; return how many."""
        count = len(self)
        for entry in self._entries():
            self.forget(entry)
        for level in self._paged:
            lane = self.lanes[level]
            self._store.remove_after(lane.key, lane.boundary)
            lane.boundary = max(lane.boundary, lane.paged_max)
            lane.removed.clear()
            lane.paged_out = lane.paged_bytes = 0
        self._paged.clear()
        self.heap.clear()
        self.tail.clear()
        self.bytes = self.paged_out = self.paged_bytes = 0
        return count

    def mark_delivered(self, entry: Entry) -> None:
        """Raise the lane's delivered high-water mark (stored, for recovery's redelivered)."""
        lane = self.lanes[entry.level]
        if entry.seq > lane.marked:
            lane.marked = entry.seq
            self._store.mark_delivered(lane.key, entry.seq)

    def store_keys(self) -> list[str]:
        """The store keys of this queue's messages (one per lane)."""
        return [lane.key for lane in self.lanes]


def _revisit(lane: Lane, entry: Entry) -> None:
    """A stored message at or below the delivered mark was delivered before a restart."""
    if entry.seq <= lane.marked and not entry.redelivered:
        entry.redelivered = True
        entry.record.delivery_count = max(entry.record.delivery_count, 1)
