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
"""

from __future__ import annotations

import datetime
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from tidings.errors import PreconditionFailedError, QueueTypeError
from tidings.message import Record, RecordError, decode_record, encode_record
from tidings.routing.arguments import parse_age
from tidings.routing.queue import Entry, Queue, QueueConsumer
from tidings.statistics import ReaderStatistics, StreamStatistics
from tidings.storage.segments import DEFAULT_SEGMENT_BYTES, LogRecord
from tidings.storage.streams import StreamFiles

__all__ = ["READER", "READER_ROWS", "READ_BYTES", "READ_RECORDS", "StreamQueue", "start_offset"]

log = logging.getLogger("tidings.broker")

#: Most records one consumer reads ahead from the log.
READ_RECORDS = 256
#: About the most payload bytes one consumer reads ahead.
READ_BYTES = 1 * 2**20
#: The consumer argument that says where to start, and the header each delivery carries.
OFFSET = "x-stream-offset"
#: The store's definitions of named readers' committed offsets.
READER_ROWS = "stream-reader"
#: tidings' consumer argument: this consumer is the named reader ``x``, and starts after the
#: offset that name last committed (at ``x-stream-offset`` when it has committed none).
READER = "x-tidings-reader"
#: Filtering (RabbitMQ 3.13's names): a consumer's ``x-stream-filter`` (a value or a list)
#: takes only records whose ``x-stream-filter-value`` header is among them, and those with
#: none too when ``x-stream-match-unfiltered`` is true.
FILTER, FILTER_VALUE, MATCH_UNFILTERED = (
    "x-stream-filter", "x-stream-filter-value", "x-stream-match-unfiltered")


class _Cursor:
    """Where one consumer reads: its next offset and the records read ahead."""

    __slots__ = ("ahead", "filters", "name", "offset", "unfiltered")

    def __init__(self, offset: int, name: str, filters: frozenset[str] | None = None,
                 unfiltered: bool = False) -> None:
        self.offset = offset
        self.ahead: deque[LogRecord] = deque()
        #: What the statistics call it: its reader name, or its consumer tag.
        self.name = name
        self.filters, self.unfiltered = filters, unfiltered

    def wants(self, entry: Entry) -> bool:
        if self.filters is None:
            return True
        value = (entry.record.message.headers or {}).get(FILTER_VALUE)
        if isinstance(value, bytes | bytearray):
            value = value.decode(errors="replace")
        return self.unfiltered if value is None else value in self.filters


class StreamQueue(Queue):
    def __init__(self, *args: Any, streams: StreamFiles, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams = streams
        self.log = streams.open(self.store_key,
                                self.options.segment_bytes or DEFAULT_SEGMENT_BYTES)
        streams.on_commit(self.store_key, self.dispatch)
        self._cursors: dict[QueueConsumer, _Cursor] = {}
        #: Named readers' committed offsets (the last offset each has processed).
        self.readers: dict[str, int] = {}

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
        return sum(len(r.payload) for c in self._cursors.values() for r in c.ahead)

    # -- named readers ---------------------------------------------------------------------

    def _reader_key(self, reader: str) -> str:
        return f"{self.store_key}\x1f{reader}"

    def commit(self, reader: str, offset: int) -> None:
        """Remember that ``reader`` has processed everything up to ``offset`` (durable with
        the next sync)."""
        if not reader:
            raise PreconditionFailedError("a stream reader needs a name")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise PreconditionFailedError(f"invalid offset {offset!r} for reader '{reader}'")
        self.readers[reader] = offset
        self._store.put_definition(READER_ROWS, self._reader_key(reader), json.dumps(
            {"vhost": self.vhost, "stream": self.name, "reader": reader,
             "offset": offset}).encode())

    def forget_reader(self, reader: str) -> None:
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
        o = self.options
        if o.max_length_bytes is not None and self.log.segment_count() > 1 \
                and self.log.size_bytes > o.max_length_bytes:
            self.housekeep(now)
        if not self.streams.durable and self.consumers:
            self.dispatch()
        return first

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
        self._start(arguments, self._now())
        _filters(arguments)

    def _start(self, arguments: dict[str, Any], now: float) -> int:
        reader = arguments.get(READER)
        if reader is not None:
            if isinstance(reader, bytes | bytearray):
                reader = reader.decode(errors="replace")
            if not isinstance(reader, str) or not reader:
                raise PreconditionFailedError(f"invalid '{READER}' {str(reader)[:40]!r}: "
                                              f"not a reader name")
            if reader in self.readers:
                return start_offset(self.readers[reader] + 1, self.log, self.end_offset, now)
        return start_offset(arguments.get(OFFSET, "next"), self.log, self.end_offset, now)

    def add_consumer(self, consumer: QueueConsumer, now: float) -> None:
        arguments = getattr(consumer, "arguments", {}) or {}
        name = arguments.get(READER) or getattr(consumer, "tag", "?")
        self._cursors[consumer] = _Cursor(self._start(arguments, now), str(name),
                                          _filters(arguments),
                                          arguments.get(MATCH_UNFILTERED) is True)
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
        while True:
            if not ahead:
                if cursor.offset >= end or not consumer.has_room():
                    return
                cursor.offset = max(cursor.offset, self.log.first_offset)
                ahead.extend(r for r in self.log.read(cursor.offset, READ_RECORDS, READ_BYTES)
                             if r.offset < end)
                if not ahead:
                    return
            if consumer.on_deliveries is not None and (room := consumer.batch_room()) > 1:
                entries = []
                while ahead and len(entries) < room:
                    found = ahead.popleft()
                    cursor.offset = found.offset + 1
                    if (entry := self._entry(found)) is not None and cursor.wants(entry):
                        entries.append(entry)
                if entries:
                    self.counters.delivered += len(entries)
                    consumer.deliver_many(self, entries)
                continue
            if not consumer.has_room():
                return
            found = ahead.popleft()
            cursor.offset = found.offset + 1
            entry = self._entry(found)
            if entry is not None and cursor.wants(entry):
                self.counters.delivered += 1
                consumer.deliver(self, entry)

    def _entry(self, found: LogRecord) -> Entry | None:
        try:
            record = decode_record(found.payload)
        except RecordError as e:
            log.error("stream '%s' in vhost '%s': record at offset %d skipped: %s",
                      self.name, self.vhost, found.offset, e)
            return None
        message = record.message
        headers = dict(message.headers) if message.headers else {}
        headers[OFFSET] = found.offset
        message.headers = headers
        if message.timestamp is None:
            message.timestamp = found.timestamp_ms // 1000
        record.enqueued_at = found.timestamp_ms / 1000.0
        entry = Entry(found.offset, record, False)
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
        for reader in list(self.readers):
            self.forget_reader(reader)
        self.streams.delete(self.store_key)
        return []


def _filters(arguments: dict[str, Any]) -> frozenset[str] | None:
    """A consumer's ``x-stream-filter`` values (None: it takes every record)."""
    value = arguments.get(FILTER)
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    found = set()
    for v in values:
        if isinstance(v, bytes | bytearray):
            v = v.decode(errors="replace")
        if not isinstance(v, str):
            raise PreconditionFailedError(f"invalid '{FILTER}' {str(value)[:40]!r}: not a "
                                          f"string or a list of strings")
        found.add(v)
    return frozenset(found)


def start_offset(value: Any, log: Any, end: int, now: float) -> int:
    """Where a reader starts, from an ``x-stream-offset`` value as RabbitMQ reads it:
    ``first``, ``last``, ``next``, an offset, a timestamp (AMQP's, a datetime), or an age
    such as ``1h`` (that long before ``now``). Offsets past the tail start at the tail;
    offsets before the first retained record start at it."""
    first = log.first_offset
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode(errors="replace")
    if value == "first":
        return first
    if value == "last":
        return max(first, end - 1)
    if value == "next":
        return end
    if isinstance(value, int) and not isinstance(value, bool):
        return min(max(value, first), end)
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return min(max(log.offset_at(int(value.timestamp() * 1000)), first), end)
    age = parse_age(value)
    if age is not None:
        return min(max(log.offset_at(int(now * 1000) - age), first), end)
    raise PreconditionFailedError(
        f"invalid '{OFFSET}' {str(value)[:40]!r}: not 'first', 'last', 'next', an offset, a "
        f"timestamp or an age such as '1h'")
