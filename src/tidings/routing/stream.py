"""Stream queues: a log that keeps its messages after they are read (RabbitMQ's
``x-queue-type: stream``).

A :class:`StreamQueue` is a queue to everything that routes and declares (bindings, the
default exchange, publisher confirms), but a message appended to it gets the next offset
in the stream's segment log (:mod:`tidings.storage.streams`) and stays there until the
retention removes its whole segment (``x-max-length-bytes``, ``x-max-age``). Each consumer
reads on its own, from where its ``x-stream-offset`` argument says, and every delivery
carries its ``x-stream-offset`` header. As in RabbitMQ, consumers must acknowledge (an ack
only gives credit: nothing is removed) and need a prefetch, which bounds what each one holds;
``basic.get`` and purge are refused. Readers see a record once it is durable.

A consumer reads ahead at most :data:`READ_RECORDS` records or :data:`READ_BYTES` bytes, so
a stream far larger than memory is read with memory bounded by the readers, not the stream.

The Kafka face appends whole record batches (:meth:`StreamQueue.append_batch`: one entry,
many offsets) and reads entries back as batches (:meth:`StreamQueue.read_batches`: a stored
batch as it came, a run of other records encoded into one batch). An AMQP consumer of a
stream reads a stored batch record by record (:mod:`tidings.kafka_records` maps them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tidings.codecs import RecordError, decode_record, encode_record
from tidings.errors import InvalidArgumentError, PreconditionFailedError, QueueTypeError
from tidings.kafka_records import kafka_fields, record_of
from tidings.message import Record
from tidings.record_batch import (
    BatchError,
    decode_records,
    encode_batch,
    read_header,
    with_base_offset,
)
from tidings.routing.arguments import QueueOptions
from tidings.routing.policies import Applied
from tidings.routing.queue import Entry, Queue, QueueConsumer
from tidings.statistics import ReaderStatistics, StreamStatistics
from tidings.storage.segments import DEFAULT_SEGMENT_BYTES
from tidings.storage.streams import StreamFiles
from tidings.stream_starts import OFFSET, READER, START_FORMS, Start, clamp, offset_of
from tidings.stream_starts import parse_start as parse_stream_start

__all__ = ["READER", "READER_ROWS", "READ_BYTES", "READ_RECORDS", "ConsumerSpec",
           "StreamQueue", "parse_start", "start_offset"]

log = logging.getLogger("tidings.broker")

#: Most records one consumer reads ahead from the log.
READ_RECORDS = 256
#: About the most payload bytes one consumer reads ahead.
READ_BYTES = 1 * 2**20
#: Read-aheads one consumer does in one dispatch; more wait for the next loop turn.
READS_PER_TURN = 16
#: Named readers one stream keeps (each any client may make by committing under a new name,
#: a Kafka group too): past it, a new name is refused.
MAX_NAMED_READERS = 10_000
#: The store's definitions of named readers' committed offsets.
READER_ROWS = "stream-reader"
#: Filtering (RabbitMQ 3.13's names): a consumer's ``x-stream-filter`` (a value or a list)
#: takes only records whose ``x-stream-filter-value`` header is among them, and those with
#: none too when ``x-stream-match-unfiltered`` is true.
FILTER, FILTER_VALUE, MATCH_UNFILTERED = (
    "x-stream-filter", "x-stream-filter-value", "x-stream-match-unfiltered")


#: One record read ahead: its offset, timestamp ms, and its stored bytes (or, from a
#: batch, the record already decoded; None for the last offset of a batch that cannot be
#: read, which is skipped).
Ahead = tuple[int, int, "bytes | Record | None"]


class _Cursor:
    """Where one consumer reads: its next offset and the records read ahead."""

    __slots__ = ("ahead", "filters", "name", "offset", "unfiltered")

    def __init__(self, offset: int, name: str, filters: frozenset[str] | None = None,
                 unfiltered: bool = False) -> None:
        self.offset = offset
        self.ahead: deque[Ahead] = deque()
        #: What the statistics call it: its reader name, or its consumer tag.
        self.name = name
        self.filters, self.unfiltered = filters, unfiltered

    def wants(self, entry: Entry) -> bool:
        if self.filters is None:
            return True
        value = _text((entry.record.message.headers or {}).get(FILTER_VALUE))
        return self.unfiltered if value is None else value in self.filters


class StreamQueue(Queue):
    def __init__(self, *args: Any, streams: StreamFiles, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams = streams
        self.log = streams.open(self.store_key,
                                self.options.segment_bytes or DEFAULT_SEGMENT_BYTES)
        streams.on_commit(self.store_key, self._committed)
        self._cursors: dict[QueueConsumer, _Cursor] = {}
        #: Futures of Kafka fetches waiting for more records (resolved on every commit).
        self._waiters: list[asyncio.Future[None]] = []
        #: Named readers' committed offsets (the last offset each has processed).
        self.readers: dict[str, int] = {}
        #: The metadata committed with a reader's offset, where there is any.
        self.reader_notes: dict[str, str] = {}

    # -- what it holds -----------------------------------------------------------------------

    @property
    def ready_count(self) -> int:
        return self.records()  # as RabbitMQ: a stream's declare-ok counts its records

    @property
    def end_offset(self) -> int:
        """The offset after the last durable record (what readers may see)."""
        return self.streams.committed(self.store_key)

    def records(self) -> int:
        return max(0, self.end_offset - self.log.first_offset)

    def held_bytes(self) -> int:
        return sum(len(r[2]) if isinstance(r[2], bytes) else
                   len(r[2].message.body) if r[2] is not None else 0
                   for c in self._cursors.values() for r in c.ahead)

    # -- named readers ---------------------------------------------------------------------

    def _reader_key(self, reader: str) -> str:
        return f"{self.store_key}\x1f{reader}"

    def commit(self, reader: str, offset: int, metadata: str | None = None) -> None:
        """Remember that ``reader`` has processed everything up to ``offset`` (durable with
        the next sync); -1: nothing yet (it starts at the first record). ``metadata`` is a
        note kept with it (a Kafka group's commit metadata)."""
        if not reader:
            raise PreconditionFailedError("a stream reader needs a name")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < -1:
            raise PreconditionFailedError(f"invalid offset {offset!r} for reader '{reader}'")
        if reader not in self.readers and len(self.readers) >= MAX_NAMED_READERS:
            raise PreconditionFailedError(
                f"stream '{self.name}' in vhost '{self.vhost}' has {MAX_NAMED_READERS} named "
                f"readers, the most it keeps: reuse a name, or delete the stream's old ones")
        if offset >= self.end_offset:  # it would skip records not yet written
            raise InvalidArgumentError(
                f"offset {offset} for reader '{reader}' is past the end of stream "
                f"'{self.name}' in vhost '{self.vhost}' (its last offset is "
                f"{self.end_offset - 1})")
        self.readers[reader] = offset
        row: dict[str, Any] = {"vhost": self.vhost, "stream": self.name, "reader": reader,
                               "offset": offset}
        if metadata:
            self.reader_notes[reader] = row["metadata"] = metadata
        else:
            self.reader_notes.pop(reader, None)
        self._store.put_definition(READER_ROWS, self._reader_key(reader),
                                   json.dumps(row).encode())

    def forget_reader(self, reader: str) -> None:
        self.reader_notes.pop(reader, None)
        if self.readers.pop(reader, None) is not None:
            self._store.delete_definition(READER_ROWS, self._reader_key(reader))

    # -- numbers -----------------------------------------------------------------------------

    def stream_statistics(self, now: float) -> StreamStatistics:
        end, first = self.end_offset, self.log.first_offset
        first_ts, last_ts = self.log.first_timestamp_ms(), self.log.last_timestamp_ms()
        positions = [(name, offset + 1, False) for name, offset in self.readers.items()]
        positions += [(cur.name, cur.offset, True) for cur in self._cursors.values()]
        readers = []
        for name, position, live in sorted(positions):
            position = max(position, first)
            lag = max(0, end - position)
            lag_s = 0.0
            if lag:
                found = self.log.read(position, 1, 1)
                if found:
                    lag_s = max(0.0, now - found[0].timestamp_ms / 1000.0)
            readers.append(ReaderStatistics(name, position, live, lag, lag_s))
        o = self.options
        return StreamStatistics(
            vhost=self.vhost, name=self.name, records=max(0, end - first),
            bytes=self.log.size_bytes, segments=self.log.segment_count(),
            first_offset=first if end > first else None,
            last_offset=end - 1 if end > first else None,
            first_timestamp=None if first_ts is None else first_ts / 1000.0,
            last_timestamp=None if last_ts is None else last_ts / 1000.0,
            max_bytes=o.max_length_bytes,
            max_age_s=None if o.max_age_ms is None else o.max_age_ms / 1000.0,
            segment_bytes=self.log.max_segment_bytes, readers=tuple(readers))

    # -- appending ---------------------------------------------------------------------------

    def offer(self, record: Record, now: float, next_seq: Callable[[], int]) -> bool:
        self.append([encode_record(record)], now)
        return True

    def enqueue(self, seq: int, record: Record) -> None:
        self.append([encode_record(record)], record.enqueued_at)

    def append(self, payloads: list[bytes], now: float) -> int:
        """Append encoded records; returns the first one's offset (durable after a sync)."""
        first = self.streams.append(self.store_key, payloads, int(now * 1000))
        self.counters.published += len(payloads)
        self._after_append(now)
        return first

    def append_batch(self, batch: bytes, count: int, now: float) -> int:
        """Append one Kafka record batch of ``count`` records as one entry, its base offset
        set to the one it gets (as a Kafka broker does); returns that offset (durable after a
        sync)."""
        batch = with_base_offset(batch, self.log.next_offset)
        first = self.streams.append_batch(self.store_key, batch, count, int(now * 1000))
        self.counters.published += count
        self._after_append(now)
        return first

    def _after_append(self, now: float) -> None:
        o = self.options
        if o.max_length_bytes is not None and self.log.segment_count() > 1 \
                and self.log.size_bytes > o.max_length_bytes:
            self.housekeep(now)
        if not self.streams.durable:
            self._committed()

    def _committed(self) -> None:
        """More records became readable: consumers read on, waiting fetches wake."""
        if self.consumers:
            self.dispatch()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def wait_for_records(self) -> asyncio.Future[None]:
        """A future resolved when more records become readable (or the stream goes)."""
        waiter = asyncio.get_running_loop().create_future()
        if len(self._waiters) >= 64:  # fetches that gave up waiting leave theirs behind
            self._waiters = [w for w in self._waiters if not w.done()]
        self._waiters.append(waiter)
        return waiter

    def offset_for_time(self, timestamp_ms: int) -> tuple[int, int]:
        """The first record whose timestamp is at or after ``timestamp_ms``: its offset and
        timestamp (the end and -1 when there is none). The log's seek by append time first,
        then the batch's own records' times (a producer stamps a record before the broker
        appends it)."""
        end = self.end_offset
        offset = min(self.log.offset_at(timestamp_ms), end)
        scanned = 0
        while offset < end and scanned < 16 * READ_BYTES:
            entries = self.log.read(offset, READ_RECORDS, READ_BYTES, until=end)
            if not entries:
                break
            for found in entries:
                if found.offset >= end:
                    return end, -1
                scanned += len(found.payload)
                if not found.batch:
                    if found.timestamp_ms >= timestamp_ms:
                        return max(found.offset, offset), found.timestamp_ms
                elif read_header(found.payload).max_timestamp >= timestamp_ms:
                    with contextlib.suppress(BatchError):
                        for record in decode_records(found.payload)[1]:
                            if record.offset >= offset and record.timestamp_ms >= timestamp_ms:
                                return record.offset, record.timestamp_ms
                offset = found.end
        return offset, -1

    def read_batches(self, offset: int, max_bytes: int) -> list[bytes]:
        """Kafka record batches from the one holding ``offset`` on, up to about
        ``max_bytes`` (at least one batch when there is a record): stored batches as they
        are, runs of records from other faces encoded into one batch each."""
        end = self.end_offset
        out: list[bytes] = []
        taken = 0
        run: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = []
        run_start = 0
        while offset < end and taken < max_bytes:
            entries = self.log.read(offset, READ_RECORDS, max(1, max_bytes - taken), until=end)
            if not entries:
                break
            for found in entries:
                if found.offset >= end or (taken and taken >= max_bytes):
                    offset = end
                    break
                message = None
                if not found.batch:
                    with contextlib.suppress(RecordError):  # (logged where AMQP reads it)
                        message = decode_record(found.payload).message
                if message is None and run:  # a batch, or a gap: the run's offsets end here
                    out.append(encode_batch(run_start, run))
                    run = []
                if found.batch:
                    out.append(found.payload)
                    self.counters.delivered += found.count
                elif message is not None:
                    if not run:
                        run_start = found.offset
                    run.append(kafka_fields(message, found.timestamp_ms))
                    self.counters.delivered += 1
                taken += len(found.payload)
                offset = found.end
        if run:
            out.append(encode_batch(run_start, run))
        return out

    def reconfigure(self, options: QueueOptions, applied: Applied) -> None:
        """A policy changed the retention or the segment size: new segments take the size,
        the retention applies now."""
        self.options, self.applied = options, applied
        self.log.max_segment_bytes = options.segment_bytes or DEFAULT_SEGMENT_BYTES
        self.housekeep(self._now())

    def housekeep(self, now: float) -> None:
        """Apply the retention: whole segments over ``x-max-length-bytes`` or older than
        ``x-max-age`` go."""
        o = self.options
        if o.max_length_bytes is None and o.max_age_ms is None:
            return
        removed = self.log.retain(max_bytes=o.max_length_bytes, max_age_ms=o.max_age_ms,
                                  now_ms=int(now * 1000))
        if removed:
            self.counters.expired += removed

    # -- consumers ---------------------------------------------------------------------------

    def check_consumer(self, prefetch_count: int, no_ack: bool,
                       arguments: dict[str, Any]) -> None:
        where = f"queue '{self.name}' in vhost '{self.vhost}'"
        if no_ack:
            raise QueueTypeError(
                f"automatic acknowledgement not supported by stream queues {where}")
        if not prefetch_count:
            raise PreconditionFailedError(f"consumer prefetch count is not set for '{where}'")
        ConsumerSpec.of(arguments)

    def add_consumer(self, consumer: QueueConsumer, now: float) -> None:
        spec = ConsumerSpec.of(getattr(consumer, "arguments", None) or {})
        start = spec.start
        if spec.reader is not None and spec.reader in self.readers:
            start = self.readers[spec.reader] + 1  # resume after the reader's commit
        self._cursors[consumer] = _Cursor(
            start_offset(start, self.log, self.end_offset, now),
            spec.reader or str(getattr(consumer, "tag", "?")), spec.filters, spec.unfiltered)
        super().add_consumer(consumer, now)

    def remove_consumer(self, consumer: QueueConsumer, now: float) -> None:
        self._cursors.pop(consumer, None)
        super().remove_consumer(consumer, now)

    def dispatch(self) -> None:
        if self.deleted:
            return
        for consumer in list(self.consumers):
            self._feed(consumer)

    def _feed(self, consumer: QueueConsumer) -> None:
        cursor = self._cursors.get(consumer)
        if cursor is None:
            return
        end = self.end_offset
        ahead = cursor.ahead
        reads = 0
        while True:
            if not ahead:
                if cursor.offset >= end or not consumer.has_room():
                    return
                if reads == READS_PER_TURN:  # (a filter that matches little): the rest
                    self._dispatch_at_turn_end()  # on a later turn, not blocking the loop
                    return
                reads += 1
                cursor.offset = max(cursor.offset, self.log.first_offset)
                self._read_ahead(cursor, end)
                if not ahead:
                    return
            if consumer.on_deliveries is not None and (room := consumer.batch_room()) > 1:
                entries = []
                while ahead and len(entries) < room:
                    found = ahead.popleft()
                    cursor.offset = found[0] + 1
                    if (entry := self._entry(found)) is not None and cursor.wants(entry):
                        entries.append(entry)
                if entries:
                    self.counters.delivered += len(entries)
                    consumer.deliver_many(self, entries)
                continue
            if not consumer.has_room():
                return
            found = ahead.popleft()
            cursor.offset = found[0] + 1
            entry = self._entry(found)
            if entry is not None and cursor.wants(entry):
                self.counters.delivered += 1
                consumer.deliver(self, entry)

    def _read_ahead(self, cursor: _Cursor, end: int) -> None:
        """Fill ``cursor.ahead`` from the log (a batch entry record by record)."""
        for found in self.log.read(cursor.offset, READ_RECORDS, READ_BYTES, until=end):
            if found.offset >= end:
                break
            if not found.batch:
                cursor.ahead.append((found.offset, found.timestamp_ms, found.payload))
                continue
            try:
                _, records = decode_records(found.payload)
            except BatchError as e:
                log.error("stream '%s' in vhost '%s': batch at offsets %d-%d skipped: %s",
                          self.name, self.vhost, found.offset, found.end - 1, e)
                cursor.ahead.append((found.end - 1, found.timestamp_ms, None))  # go past it
                continue
            cursor.ahead.extend((found.offset + i, r.timestamp_ms, record_of(r, self.name))
                                for i, r in enumerate(records)
                                if cursor.offset <= found.offset + i < end)

    def _entry(self, found: Ahead) -> Entry | None:
        offset, timestamp_ms, stored = found
        if stored is None:
            return None
        if isinstance(stored, Record):
            record = stored
        else:
            try:
                record = decode_record(stored)
            except RecordError as e:
                log.error("stream '%s' in vhost '%s': record at offset %d skipped: %s",
                          self.name, self.vhost, offset, e)
                return None
        message = record.message
        headers = dict(message.headers) if message.headers else {}
        headers[OFFSET] = offset
        message.headers = headers
        if message.timestamp is None:
            message.timestamp = timestamp_ms // 1000
        record.enqueued_at = timestamp_ms / 1000.0
        entry = Entry(offset, record, False)
        entry.delivered_at = self._now()
        return entry

    # -- settlement: an ack (or a nack, a reject) gives credit; nothing leaves the log --------

    def ack(self, entry: Entry) -> None:
        self.counters.acked += 1

    def requeue(self, entry: Entry) -> None:
        pass

    def release_for_delay(self, entry: Entry) -> Record | None:
        return None

    def discard(self, entry: Entry, reason: str) -> None:
        pass

    def mark_delivered(self, entry: Entry, now: float) -> None:
        self.counters.delivered += 1

    # -- what a stream refuses ---------------------------------------------------------------

    def take(self) -> Entry | None:
        raise QueueTypeError(
            f"basic.get not supported by stream queues queue '{self.name}' in vhost "
            f"'{self.vhost}'")

    def purge(self) -> int:
        raise QueueTypeError(
            f"queue.purge not supported by stream queues queue '{self.name}' in vhost "
            f"'{self.vhost}'")

    def close(self) -> list[str]:
        super().close()
        self._cursors.clear()
        self._committed()  # waiting fetches wake, and find the stream gone
        for reader in list(self.readers):
            self.forget_reader(reader)
        self.streams.delete(self.store_key)
        return []


def _text(value: Any) -> Any:
    """An AMQP byte array (pika sends Python bytes as one) as text; anything else as is."""
    return bytes(value).decode(errors="replace") if isinstance(value, bytes | bytearray) \
        else value


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A stream consumer's arguments, checked: where it starts, as whom, what it filters."""

    start: Start
    reader: str | None
    filters: frozenset[str] | None
    unfiltered: bool

    @classmethod
    def of(cls, arguments: dict[str, Any]) -> ConsumerSpec:
        """Parse (no I/O); a bad value is PRECONDITION_FAILED naming the argument."""
        reader = _text(arguments.get(READER))
        if reader is not None and (not isinstance(reader, str) or not reader):
            raise PreconditionFailedError(f"invalid '{READER}' {str(reader)[:40]!r}: not a "
                                          f"reader name")
        filters = None
        if (value := arguments.get(FILTER)) is not None:
            values = [_text(v) for v in (value if isinstance(value, list) else [value])]
            if not all(isinstance(v, str) for v in values):
                raise PreconditionFailedError(f"invalid '{FILTER}' {str(value)[:40]!r}: not "
                                              f"a string or a list of strings")
            filters = frozenset(values)
        return cls(parse_start(arguments.get(OFFSET, "next")), reader, filters,
                   arguments.get(MATCH_UNFILTERED) is True)


def parse_start(value: Any) -> Start:
    """An ``x-stream-offset`` value as RabbitMQ reads it (:mod:`tidings.stream_starts`); a
    bad one is PRECONDITION_FAILED naming the argument."""
    start = parse_stream_start(value)
    if start is None:
        raise PreconditionFailedError(
            f"invalid '{OFFSET}' {str(_text(value))[:40]!r}: not {START_FORMS}")
    return start


def start_offset(start: Start | int, log: Any, end: int, now: float) -> int:
    """The offset a parsed start means now (an int: that offset). Offsets past the tail
    start at the tail; offsets before the first retained record start at it."""
    kind, n = ("offset", start) if isinstance(start, int) else start
    first = log.first_offset
    found = offset_of((kind, n), first, end)
    if found is not None:
        return found
    return clamp(log.offset_at(n if kind == "time" else int(now * 1000) - n), first, end)
