"""Delayed delivery: messages held durably until due, then moved into their queue or
exchange once.

:class:`DelayedMessages` is the data (durable buckets, a heap of the near ones);
:class:`DelayedDelivery` is the broker's collaborator that adds to it, keeps one timer armed
for the earliest due time and decides where a due message goes (its queue, or its exchange's
routing).

Each delayed message is one store record carrying its due time and target, stored under the
key of its due-time *bucket* (one per :data:`BUCKET_SECONDS`). Only the buckets that fall due
within the next bucket are held in memory, in a heap by ``(due_at, seq)``; later buckets stay on
disk, merely counted, and are read in one bucket ahead of their time. A backlog of scheduled
jobs is therefore bounded by disk, not RAM (with ``memory://`` everything stays in memory).

Reading a bucket in waits until every write submitted before the decision to read it is
committed (reads see only committed state; later writes to it go to memory directly), and
nothing is released meanwhile, so due order holds across buckets.
Moving a message into its queue is a remove plus an append submitted in the same loop turn, so
both land in one transaction: a delayed message is never lost and never delivered twice,
across restarts too (the peers' complaint #3).
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterator

from tidings.clock import Clock, Timer
from tidings.codecs import RecordError, decode_record, encode_record
from tidings.message import Message, Record
from tidings.routing.queue import Entry, Queue
from tidings.routing.vhost import Sequence, VirtualHosts
from tidings.storage.base import Store
from tidings.storage.quarantine import decode_or_quarantine

#: The key of every delayed record before buckets existed (recovery moves such rows).
STORE_KEY = "\x00delayed"
#: The width of a due-time bucket.
BUCKET_SECONDS = 60.0
_SEPARATOR = "\x1e"
_READ_CHUNK = 10_000


def header_delay_ms(message: Message) -> int | None:
    """The delay an ``x-delayed-message`` exchange holds a publish for: its ``x-delay``
    header in ms, when that is a positive integer (RabbitMQ's delayed-message plugin)."""
    delay = (message.headers or {}).get("x-delay")
    if isinstance(delay, int) and not isinstance(delay, bool) and delay > 0:
        return delay
    return None


def bucket_of(due_at: float) -> int:
    return int(due_at // BUCKET_SECONDS)


def bucket_key(bucket: int) -> str:
    return f"{STORE_KEY}{_SEPARATOR}{bucket}"


def is_delayed_key(key: str) -> bool:
    return key == STORE_KEY or key.startswith(STORE_KEY + _SEPARATOR)


class DelayedMessages:
    def __init__(self, store: Store, now: Callable[[], float]) -> None:
        self._store, self._now = store, now
        self._keep = store.keeps_messages
        self._heap: list[tuple[float, int, Record]] = []
        self._removed: set[int] = set()
        #: Buckets on disk only: bucket -> how many messages it holds.
        self._cold: dict[int, int] = {}
        self._cold_total = 0
        #: Buckets up to this one are held in memory.
        self._hot_bucket = bucket_of(now()) + 1 if self._keep else 1 << 62
        #: Cold buckets turned hot whose rows are not read in yet (waiting for a commit).
        self._promoting: set[int] = set()
        #: Resolved once the writes made before the promotion decision are committed.
        self._promote_after: asyncio.Future[None] | None = None
        #: Cold rows cancelled and not read since (their removal may be uncommitted): seq ->
        #: bucket. Reads skip them; a second cancel of one finds it gone.
        self._cancelled: dict[int, int] = {}
        self.per_queue: dict[tuple[str, str], int] = {}
        #: Queues deleted while messages were delayed for them: (vhost, queue) -> [greatest
        #: voided seq, how many voided messages are still stored]. Those messages are dropped
        #: when due instead of entering a later queue of the same name.
        self._void: dict[tuple[str, str], list[int]] = {}

    def __len__(self) -> int:
        return len(self._heap) - len(self._removed) + self._cold_total

    # -- queues deleted with messages delayed for them ---------------------------------------

    def void_queue(self, vhost: str, queue: str, up_to_seq: int) -> int:
        """The queue was deleted: its delayed messages (seq <= ``up_to_seq``) will never be
        delivered. Durable (a definition), so a restart does not bring them back. Returns how
        many were voided."""
        key = (vhost, queue)
        count = self.per_queue.pop(key, 0)
        if count <= 0:
            return 0
        void = self._void.setdefault(key, [up_to_seq, 0])
        void[0], void[1] = up_to_seq, void[1] + count
        self._store.put_definition(VOID_KIND, _void_key(key), str(up_to_seq).encode())
        return count

    def is_void(self, seq: int, record: Record) -> bool:
        """True (and forgotten) for a message of a queue deleted since it was delayed."""
        key = _queue_of(record)
        void = self._void.get(key) if key else None
        if void is None or seq > void[0]:
            return False
        void[1] -= 1
        if void[1] <= 0 and key is not None:
            del self._void[key]
            self._store.delete_definition(VOID_KIND, _void_key(key))
        return True

    def _voided(self, seq: int, record: Record) -> bool:
        key = _queue_of(record)
        void = self._void.get(key) if key else None
        return void is not None and seq <= void[0]

    # -- adding ----------------------------------------------------------------------------

    def add(self, seq: int, record: Record) -> None:
        """Hold a new delayed message (``record.due_at`` set) and store it."""
        if self._keep:
            self._store.append(bucket_key(bucket_of(record.due_at or 0.0)), seq,
                               encode_record(record))
        self._index(seq, record)

    def _index(self, seq: int, record: Record) -> None:
        self._count(seq, record, 1)
        bucket = bucket_of(record.due_at or 0.0)
        if bucket <= self._hot_bucket:
            heapq.heappush(self._heap, (record.due_at or 0.0, seq, record))
        else:
            self._cold[bucket] = self._cold.get(bucket, 0) + 1
            self._cold_total += 1

    def recover(self) -> None:
        """Read the stored delayed messages: near buckets into memory, the rest counted."""
        for ident, data in self._store.definitions(VOID_KIND):
            vhost, _, queue = ident.partition("\x1f")
            self._void[(vhost, queue)] = [int(data), 0]
        for key in [k for k in self._store.queues() if is_delayed_key(k)]:
            legacy = key == STORE_KEY
            for seq, data in _rows(self._store, key):
                record = decode_or_quarantine(self._store, key, seq, data, self._now())
                if record is None:
                    continue
                if self._voided(seq, record):
                    self._void[_queue_of(record)][1] += 1  # type: ignore[index]
                if legacy:  # moved under its bucket key, in the same transaction
                    self._store.remove(STORE_KEY, seq)
                    self.add(seq, record)
                else:
                    self._index(seq, record)
        for key, (_, left) in list(self._void.items()):
            if not left:  # all of them went before the restart
                del self._void[key]
                self._store.delete_definition(VOID_KIND, _void_key(key))

    # -- releasing -------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """When to look again: the earliest due time, or when a cold bucket should be read."""
        self._skip_removed()
        due = self._heap[0][0] if self._heap else None
        if self._cold:
            read_at = (min(self._cold) - 1) * BUCKET_SECONDS
            due = read_at if due is None else min(due, read_at)
        return due

    def promote(self, now: float) -> asyncio.Future[None] | None:
        """Read in the buckets due by the end of the next one. While the writes made before
        are not all committed, returns the future to wait for (release nothing meanwhile,
        then call again); None once done."""
        target = bucket_of(now) + 1
        if target > self._hot_bucket:
            self._hot_bucket = target  # from here on new messages for them stay in memory
            newly = [b for b in self._cold if b <= target and b not in self._promoting]
            if newly:
                self._promoting.update(newly)
                # A later commit covers every earlier write: wait for the newest.
                self._promote_after = self._store.sync() if self._store.backlog() else None
        if not self._promoting:
            return None
        after = self._promote_after
        if after is not None and not after.done():
            return after
        held = {seq for _, seq, _ in self._heap} | self._cancelled.keys()
        for bucket in sorted(self._promoting):
            self._cold_total -= self._cold.pop(bucket, 0)
            for seq, data in _rows(self._store, bucket_key(bucket)):
                if seq not in held and (record := decode_or_quarantine(
                        self._store, bucket_key(bucket), seq, data, now)) is not None:
                    heapq.heappush(self._heap, (record.due_at or 0.0, seq, record))
        self._cancelled = {s: b for s, b in self._cancelled.items() if b not in self._promoting}
        self._promoting.clear()
        self._promote_after = None
        return None

    def pop_due(self, now: float) -> list[tuple[int, Record]]:
        """Take the messages due by ``now`` (after :meth:`promote`), removing their records."""
        out: list[tuple[int, Record]] = []
        while True:
            self._skip_removed()
            if not self._heap or self._heap[0][0] > now:
                return out
            due_at, seq, record = heapq.heappop(self._heap)
            self._count(seq, record, -1)
            if self._keep:
                self._store.remove(bucket_key(bucket_of(due_at)), seq)
            out.append((seq, record))

    # -- looking and cancelling ------------------------------------------------------------

    def entries(self) -> list[tuple[int, Record]]:
        """Every delayed message in due order. Cold buckets are read from the store, which
        shows committed rows only: await ``store.sync()`` first to see every one."""
        found = [(due, seq, r) for due, seq, r in self._heap
                 if seq not in self._removed and not self._voided(seq, r)]
        for bucket in self._cold:
            for seq, data in _rows(self._store, bucket_key(bucket)):
                if seq in self._cancelled:
                    continue
                try:
                    record = decode_record(data)
                except RecordError:  # quarantined when its bucket is read in
                    continue
                if self._voided(seq, record):
                    continue
                found.append((record.due_at or 0.0, seq, record))
        return [(seq, r) for _, seq, r in sorted(found, key=lambda t: (t[0], t[1]))]

    def remove(self, seq: int, record: Record) -> bool:
        """Cancel one delayed message (as found by :meth:`entries`); False if it is gone."""
        bucket = bucket_of(record.due_at or 0.0)
        if bucket in self._cold:
            if seq in self._cancelled:
                return False
            self._cancelled[seq] = bucket  # reads may come before this removal commits
            self._cold[bucket] -= 1
            self._cold_total -= 1
            if not self._cold[bucket]:
                del self._cold[bucket]
                if bucket not in self._promoting:  # nothing reads it any more
                    self._cancelled = {s: b for s, b in self._cancelled.items() if b != bucket}
        else:
            if seq in self._removed or not any(s == seq for _, s, _ in self._heap):
                return False
            self._removed.add(seq)
        self._count(seq, record, -1)
        if self._keep:
            self._store.remove(bucket_key(bucket), seq)
        return True

    # -- helpers ---------------------------------------------------------------------------

    def _count(self, seq: int, record: Record, delta: int) -> None:
        key = _queue_of(record)
        if key is not None and not self._voided(seq, record):
            self.per_queue[key] = self.per_queue.get(key, 0) + delta

    def _skip_removed(self) -> None:
        while self._heap and self._heap[0][1] in self._removed:
            self._removed.discard(heapq.heappop(self._heap)[1])


#: Definition kind of the voided-queue marks.
VOID_KIND = "delayed-void"


def _queue_of(record: Record) -> tuple[str, str] | None:
    target = record.target
    return (target.get("vhost", "/"), target["queue"]) if "queue" in target else None


def _void_key(key: tuple[str, str]) -> str:
    return f"{key[0]}\x1f{key[1]}"


def _rows(store: Store, key: str) -> Iterator[tuple[int, bytes]]:
    after = -1
    while rows := store.load(key, after, _READ_CHUNK):
        yield from rows
        after = rows[-1][0]


class DelayedDelivery:
    """Holds messages until due and releases them into their queue or exchange."""

    def __init__(self, messages: DelayedMessages, vhosts: VirtualHosts, clock: Clock,
                 seq: Sequence) -> None:
        self.messages, self._vhosts, self._clock, self._seq = messages, vhosts, clock, seq
        self._timer: tuple[float, Timer] | None = None

    def publish_later(self, vhost: str, exchange: str, message: Message, now: float,
                      delay_ms: int) -> None:
        """A publish held for ``delay_ms``: then routed by ``exchange`` (or, on the default
        exchange, put in the queue its routing key names)."""
        target = {"vhost": vhost, "exchange": exchange} if exchange else \
            {"vhost": vhost, "queue": message.routing_key}
        self.delay(Record(message, now), target, now + delay_ms / 1000.0)

    def delay(self, record: Record, target: dict[str, str], due_at: float) -> None:
        record.due_at, record.target = due_at, target
        self.messages.add(self._seq.next(), record)
        self.arm()

    def requeue_later(self, queue: Queue, entry: Entry, delay_ms: int) -> None:
        """nack with a delay: back into ``queue`` no earlier than ``delay_ms`` from now."""
        record = queue.release_for_delay(entry)
        if record is not None:
            now = self._clock.time()
            target = {"vhost": queue.vhost, "queue": queue.name}
            self.delay(Record(record.message, now, record.delivery_count), target,
                       now + delay_ms / 1000.0)

    def cancel(self, seq: int, record: Record) -> bool:
        """Cancel a delayed message found by ``messages.entries()``; False if it is gone."""
        return self.messages.remove(seq, record)

    def arm(self) -> None:
        """Keep one timer armed for the earliest due time (no running loop yet: the broker's
        ``start()`` arms it)."""
        due = self.messages.next_due()
        if due is None:
            return
        if self._timer is not None:
            if self._timer[0] <= due:
                return
            self._timer[1].cancel()
        try:
            self._timer = (due, self._clock.call_at(due, self._release))
        except RuntimeError:
            self._timer = None

    def stop(self) -> None:
        if self._timer:
            self._timer[1].cancel()
            self._timer = None

    def _release(self) -> None:
        self._timer = None
        now = self._clock.time()
        wait = self.messages.promote(now)
        if wait is not None:  # a bucket is read in once the writes before it are committed
            wait.add_done_callback(lambda _: self._release())
            return
        for seq, record in self.messages.pop_due(now):
            if not self.messages.is_void(seq, record):  # its queue was deleted meanwhile
                self._release_one(record, now)
        self.arm()

    def _release_one(self, record: Record, now: float) -> None:
        v = self._vhosts.find(record.target.get("vhost", "/"))
        if v is None:
            return
        if "queue" in record.target:
            queue = v.queues.get(record.target["queue"])
            if queue is not None:
                v.enqueue([queue], record.message, now, record.delivery_count)
            return
        ex = v.exchanges.get(record.target.get("exchange", ""))
        if ex is not None:
            v.enqueue(v.route(ex, record.message), record.message, now, record.delivery_count)
