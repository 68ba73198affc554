"""SegmentLog: an append-only log of records in segment files, the storage under a stream.

A queue forgets a message once it is acknowledged. A stream keeps its records for a retention
period, and any number of readers read them at their own pace. The storage that fits is a
log, not a table:

- **Segments.** Records are appended to the active segment file. Each file is named by the
  offset of its first record (``00000000000000000000.seg``). Past ``max_segment_bytes`` a new
  segment starts. Retention deletes whole segments, oldest first, and never the active one.
- **Records.** Each is ``length (4) | crc32 (4) | offset (8) | timestamp ms (8) | payload``.
  The CRC covers offset, timestamp and payload. Offsets are dense: each record's offset is
  the previous one's plus one, across segments.
- **Batches.** An entry may also hold ``count`` records at once, as one opaque payload (a
  Kafka record batch, kept as its producer sent it so a fetch serves it as is): the length's
  top bit (:data:`BATCH_FLAG`) marks it, and ``count (4)`` follows the head (the CRC covers
  it too). Such an entry takes ``count`` offsets; the layer above reads its payload.
- **Seeks, not scans.** Every ``INDEX_EVERY_BYTES`` of a segment, an entry ``(offset,
  position, timestamp)`` goes to the segment's ``.idx`` file. A read at an offset or at a
  timestamp bisects the segments by first offset, then that segment's index, and reads
  forward from the entry it finds: at most ``INDEX_EVERY_BYTES`` of records before the first
  one wanted.
- **Durability.** :meth:`append` buffers in the OS. :meth:`sync` fdatasyncs the active
  segment, and is what a confirm waits for (group commit: one sync for everything appended
  before it). The index is only a hint: it is rebuilt from the records whenever it is
  behind.
- **Recovery.** On open, the last segment is read from its last index entry to its end. The
  first record whose length runs past the file, or whose CRC or offset is wrong, ends the
  log there, and the file is truncated. So after ``kill -9`` (or a power cut), the log is its
  last whole, durable record, and nothing half-written is ever read.
- **Encryption at rest** (with a keyring): each segment has its own data key, kept wrapped
  by the master key in ``<base>.key`` (``storage/segment_keys.py``), and every record's (or
  batch's) payload is sealed with it, bound to its stream, offset, timestamp and count as
  associated data. Heads stay readable, so recovery, seeks and retention work without the
  key. A record that does not open is logged and skipped, never delivered. When a keyring
  comes to a stream written without one, a new (sealed) segment starts.
- **Bounded memory.** Reads return at most ``max_records`` and ``max_bytes``; nothing but the
  index (a few entries per MB) is held per segment.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from tidings.errors import InvalidArgumentError
from tidings.files import make_private_directory, sync_directory
from tidings.storage import segment_keys
from tidings.storage.keys import OVERHEAD, Keyring, Sealer, SealError
from tidings.storage.segment_keys import SEGMENT_SUFFIX

log = logging.getLogger("tidings.storage")

HEAD = struct.Struct(">IIQq")  # length, crc32, offset, timestamp ms
_CHECKED = struct.Struct(">Qq")  # the part of the head the CRC covers (with the payload)
_LENGTH_CRC = struct.Struct(">II")
_COUNT = struct.Struct(">I")
#: A sealed record's place, after its stream's name: offset, timestamp, count (0: a record).
_PLACE = struct.Struct(">QqI")
#: The length's top bit: the entry is a batch of ``count`` records (see the module's doc).
BATCH_FLAG = 0x8000_0000
INDEX_ENTRY = struct.Struct(">QQq")  # offset, position, timestamp ms
INDEX_SUFFIX = ".idx"
#: A plain segment's sealed copy while :meth:`SegmentLog.seal_plain` writes it.
RESEALED_SUFFIX = ".sealed"
#: Bytes of records between two index entries (a seek reads at most this much to skip).
INDEX_EVERY_BYTES = 64 * 1024
#: Default size at which a new segment starts (RabbitMQ's default is 500 MB).
DEFAULT_SEGMENT_BYTES = 64 * 2**20
#: Largest record accepted (a guard against a corrupt length, too).
MAX_RECORD_BYTES = 64 * 2**20


def _swap_in(copy: Path, segment: _Segment) -> None:
    """Put the sealed ``copy`` in place of the segment's file (its index goes first: its
    positions are the plain file's)."""
    segment.index_path.unlink(missing_ok=True)
    os.replace(copy, segment.path)
    sync_directory(segment.path.parent)


class LogRecord(NamedTuple):
    """One entry of the log: a record, or (``batch``) ``count`` records in one payload
    starting at ``offset``. (A tuple: reads make one per record, and a tuple is the cheapest
    object to make.)"""

    offset: int
    timestamp_ms: int
    payload: bytes
    count: int = 1
    batch: bool = False

    @property
    def end(self) -> int:
        """The offset after this entry's last record."""
        return self.offset + self.count


class _Segment:
    __slots__ = ("base", "first_timestamp", "index", "last_offset", "last_timestamp", "path",
                 "sealer", "size")

    def __init__(self, path: Path, base: int) -> None:
        self.path, self.base = path, base
        self.size = 0
        #: (offset, position, timestamp) every INDEX_EVERY_BYTES; the first record's always.
        self.index: list[tuple[int, int, int]] = []
        self.last_offset = base - 1
        self.first_timestamp = self.last_timestamp = 0
        #: Seals and opens the records' payloads (None: a plain segment).
        self.sealer: Sealer | None = None

    @property
    def index_path(self) -> Path:
        return self.path.with_suffix(INDEX_SUFFIX)

    def empty(self) -> bool:
        return self.last_offset < self.base


def _entry(offset: int, timestamp_ms: int, payload: bytes, count: int) -> bytes:
    """One entry's bytes: a record (``count`` 0) or a batch of ``count`` records."""
    if count:
        tail = _CHECKED.pack(offset, timestamp_ms) + _COUNT.pack(count) + payload
        return _LENGTH_CRC.pack(len(payload) | BATCH_FLAG, zlib.crc32(tail)) + tail
    tail = _CHECKED.pack(offset, timestamp_ms) + payload
    return _LENGTH_CRC.pack(len(payload), zlib.crc32(tail)) + tail


def _name(base: int) -> str:
    return f"{base:020d}{SEGMENT_SUFFIX}"


class SegmentLog:
    """One stream's records on disk (see the module's docstring)."""

    def __init__(self, directory: str | Path, *,
                 max_segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 keyring: Keyring | None = None) -> None:
        """``keyring``: the master keys that encrypt new segments (None: plain)."""
        if max_segment_bytes < HEAD.size + 1:
            raise InvalidArgumentError(f"max_segment_bytes {max_segment_bytes} is too small")
        self.directory = Path(directory)
        self.max_segment_bytes = max_segment_bytes
        make_private_directory(self.directory)
        self._segments: list[_Segment] = []
        self._bases: list[int] = []
        self._fd = -1
        self._index_fd = -1
        self._since_index = 0
        #: The master keys that wrap new segments' data keys (None: plain).
        self.keyring = keyring
        #: Bound into every record's associated data: a record moved to another stream fails.
        self._place = self.directory.name.encode()
        self._open()

    # -- state -------------------------------------------------------------------------------

    @property
    def first_offset(self) -> int:
        """Offset of the oldest retained record (== next_offset when the log is empty)."""
        for segment in self._segments:
            if not segment.empty():
                return segment.base
        return self.next_offset

    @property
    def next_offset(self) -> int:
        return self._segments[-1].last_offset + 1

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    def __len__(self) -> int:
        return self.next_offset - self.first_offset

    def first_timestamp_ms(self) -> int | None:
        for segment in self._segments:
            if not segment.empty():
                return segment.first_timestamp
        return None

    def last_timestamp_ms(self) -> int | None:
        last = self._segments[-1]
        if not last.empty():
            return last.last_timestamp
        for segment in reversed(self._segments):
            if not segment.empty():
                return segment.last_timestamp
        return None

    @property
    def fd(self) -> int:
        """The active segment's file descriptor (for a writer thread's fdatasync of a dup)."""
        return self._fd

    def segment_count(self) -> int:
        return len(self._segments)

    # -- appending ---------------------------------------------------------------------------

    def append(self, payloads: list[bytes], timestamp_ms: int) -> int:
        """Append records (one timestamp for the batch); returns the first one's offset.
        Durable once :meth:`sync` returns."""
        return self._append(payloads, timestamp_ms, 0)

    def append_batch(self, payload: bytes, count: int, timestamp_ms: int) -> int:
        """Append one entry holding ``count`` records (an opaque batch); returns its first
        offset. Durable once :meth:`sync` returns."""
        if count < 1:
            raise InvalidArgumentError(f"a batch holds at least one record, not {count}")
        return self._append([payload], timestamp_ms, count)

    def _append(self, payloads: list[bytes], timestamp_ms: int, count: int) -> int:
        """Each payload a record (``count`` 0), or the one payload a batch of ``count``."""
        first = self.next_offset
        for payload in payloads:
            if len(payload) > MAX_RECORD_BYTES:
                raise InvalidArgumentError(f"record of {len(payload)} bytes is larger than "
                                           f"{MAX_RECORD_BYTES}")
        parts: list[bytes] = []
        segment = self._segments[-1]
        for payload in payloads:
            if segment.size >= self.max_segment_bytes and not segment.empty():
                self._write(parts)
                parts = []
                segment = self._roll()
            offset = segment.last_offset + 1
            if segment.sealer is not None:
                payload = segment.sealer.seal(payload, self._record_place(offset, timestamp_ms,
                                                                          count))
            record = _entry(offset, timestamp_ms, payload, count)
            if segment.empty():
                segment.first_timestamp = timestamp_ms
            if segment.empty() or self._since_index >= INDEX_EVERY_BYTES:
                entry = (offset, segment.size, timestamp_ms)
                segment.index.append(entry)
                os.write(self._index_fd, INDEX_ENTRY.pack(*entry))
                self._since_index = 0
            parts.append(record)
            segment.size += len(record)
            self._since_index += len(record)
            segment.last_offset = offset + count - 1 if count else offset
            segment.last_timestamp = timestamp_ms
        self._write(parts)
        return first

    def _record_place(self, offset: int, timestamp_ms: int, count: int) -> bytes:
        return self._place + _PLACE.pack(offset, timestamp_ms, count)

    def _write(self, parts: list[bytes]) -> None:
        if parts:
            data = b"".join(parts)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]

    def sync(self) -> None:
        """Make every appended record durable (one fdatasync for all of them)."""
        os.fdatasync(self._fd)

    def _roll(self) -> _Segment:
        os.fdatasync(self._fd)  # a later segment never outlives an earlier one's tail
        self._close_files()
        base = self.next_offset
        segment = _Segment(self.directory / _name(base), base)
        if self.keyring is not None:
            segment.sealer = segment_keys.new_segment_key(segment.path, base, self.keyring)
        self._segments.append(segment)
        self._bases.append(base)
        self._open_active(segment)
        return segment

    # -- reading -----------------------------------------------------------------------------

    def read(self, offset: int, max_records: int = 1000, max_bytes: int = 4 * 2**20,
             until: int | None = None) -> list[LogRecord]:
        """Entries from the one holding ``offset`` on (from the first retained one if it is
        older), at most ``max_records`` of them and about ``max_bytes`` of payload (at least
        one entry), none starting at or after ``until``. A batch entry may start before
        ``offset``."""
        offset = max(offset, self.first_offset)
        if until is None:
            until = self.next_offset
        out: list[LogRecord] = []
        taken = 0
        i = max(0, bisect.bisect_right(self._bases, offset) - 1)
        while i < len(self._segments) and len(out) < max_records:
            segment = self._segments[i]
            if segment.last_offset >= offset:
                start = self._position(segment, offset)
                for record in self._scan(segment, start, opened=True, since=offset,
                                         until=until):
                    if len(out) >= max_records or (out and taken >= max_bytes):
                        return out
                    out.append(record)
                    taken += len(record.payload)
                offset = segment.last_offset + 1
            i += 1
        return out

    def offset_at(self, timestamp_ms: int) -> int:
        """The first offset of the first entry whose timestamp is at or after
        ``timestamp_ms`` (next_offset when none is)."""
        for segment in self._segments:
            if segment.empty() or segment.last_timestamp < timestamp_ms:
                continue
            times = [t for _, _, t in segment.index]
            i = max(0, bisect.bisect_left(times, timestamp_ms) - 1)
            for record in self._scan(segment, segment.index[i][1]):
                if record.timestamp_ms >= timestamp_ms:
                    return record.offset
        return self.next_offset

    def _position(self, segment: _Segment, offset: int) -> int:
        offsets = [o for o, _, _ in segment.index]
        i = bisect.bisect_right(offsets, offset) - 1
        return segment.index[i][1] if i >= 0 else 0

    def _scan(self, segment: _Segment, position: int, opened: bool = False,
              since: int = 0, until: int | None = None) -> Iterator[LogRecord]:
        """Records of ``segment`` from byte ``position`` up to its known end or the first one
        starting at ``until``, leaving out those that end before offset ``since`` (unread),
        with their payloads opened when ``opened`` (one that does not open is logged and
        skipped)."""
        sealer = segment.sealer if opened else None
        end = segment.size
        with open(segment.path, "rb") as f:
            f.seek(position)
            while position < end:
                length, _, offset, timestamp = HEAD.unpack(f.read(HEAD.size))
                if until is not None and offset >= until:
                    return
                count, batch = 1, False
                if length & BATCH_FLAG:
                    length &= ~BATCH_FLAG
                    (count,) = _COUNT.unpack(f.read(_COUNT.size))
                    batch = True
                    position += _COUNT.size
                position += HEAD.size + length
                if offset + count <= since:
                    f.seek(length, os.SEEK_CUR)
                    continue
                payload = f.read(length)
                if sealer is not None:
                    try:
                        payload = sealer.open_sealed(payload, self._record_place(
                            offset, timestamp, count if batch else 0))
                    except SealError as e:
                        log.error("stream %s: the record at offset %d is not delivered: %s",
                                  self.directory, offset, e)
                        continue
                yield LogRecord(offset, timestamp, payload, count, batch)

    # -- retention ---------------------------------------------------------------------------

    def retain(self, *, max_bytes: int | None = None, max_age_ms: int | None = None,
               now_ms: int = 0) -> int:
        """Delete whole segments, oldest first, while the log is over ``max_bytes`` or the
        segment's newest record is older than ``max_age_ms``; the active segment stays.
        Returns how many records went."""
        removed = 0
        while len(self._segments) > 1:
            oldest = self._segments[0]
            too_big = max_bytes is not None and self.size_bytes > max_bytes
            too_old = max_age_ms is not None and not oldest.empty() and \
                oldest.last_timestamp < now_ms - max_age_ms
            if not (too_big or too_old):
                break
            removed += oldest.last_offset - oldest.base + 1
            oldest.path.unlink(missing_ok=True)
            oldest.index_path.unlink(missing_ok=True)
            segment_keys.key_path(oldest.path).unlink(missing_ok=True)
            del self._segments[0]
            del self._bases[0]
        return removed

    # -- encryption of plain segments ------------------------------------------------------------

    def plain_segments(self) -> int:
        """How many segments holding records are plain (written before encryption was on)."""
        return sum(1 for s in self._segments if s.sealer is None and not s.empty())

    def seal_plain(self) -> int:
        """Rewrite every plain segment sealed under a new data key of its own; returns how
        many. All or nothing per segment: the sealed copy is written and synced first, its
        key file is the commit point, then the copy replaces the plain file (an open after a
        crash finishes or forgets the swap)."""
        if self.keyring is None:
            raise InvalidArgumentError("sealing needs a keyring")
        done = 0
        for segment in self._segments:
            if segment.sealer is not None or segment.empty():
                continue
            copy = segment.path.with_name(segment.path.name + RESEALED_SUFFIX)
            key = os.urandom(32)
            sealer = Sealer({segment_keys.SEGMENT_KEY_NUMBER: key},
                            segment_keys.SEGMENT_KEY_NUMBER)
            with open(copy, "wb") as f:
                for record in self._scan(segment, 0):
                    count = record.count if record.batch else 0
                    place = self._record_place(record.offset, record.timestamp_ms, count)
                    f.write(_entry(record.offset, record.timestamp_ms,
                                   sealer.seal(record.payload, place), count))
                f.flush()
                os.fsync(f.fileno())
            active = segment is self._segments[-1]
            if active:
                self._close_files()
            segment_keys.store_segment_key(segment.path, segment.base, key, self.keyring)
            _swap_in(copy, segment)
            segment.sealer = sealer
            self._load(segment, recover=active)
            if active:
                self._open_active(segment)
            done += 1
        return done

    def _finish_resealing(self) -> None:
        """A crash in :meth:`seal_plain`: the swap finishes when the key file was written,
        else the copy goes."""
        for copy in self.directory.glob(f"*{SEGMENT_SUFFIX}{RESEALED_SUFFIX}"):
            base = copy.name.removesuffix(SEGMENT_SUFFIX + RESEALED_SUFFIX)
            if not base.isdigit():
                continue
            segment = _Segment(self.directory / _name(int(base)), int(base))
            if segment_keys.key_path(segment.path).exists():
                _swap_in(copy, segment)
            else:
                copy.unlink()

    # -- opening and recovery ------------------------------------------------------------------

    def _open(self) -> None:
        self._finish_resealing()
        bases = sorted(int(p.stem) for p in self.directory.glob(f"*{SEGMENT_SUFFIX}")
                       if p.stem.isdigit())
        if not bases:
            bases = [0]
        for base in bases:
            segment = _Segment(self.directory / _name(base), base)
            segment.sealer = segment_keys.segment_key(segment.path, base, self.keyring)
            self._segments.append(segment)
            self._bases.append(base)
        for segment in self._segments[:-1]:
            self._load(segment, recover=False)
        last = self._segments[-1]
        self._load(last, recover=True)
        self._open_active(last)
        if self.keyring is not None and last.sealer is None:
            if last.empty():
                last.sealer = segment_keys.new_segment_key(last.path, last.base, self.keyring)
            else:  # a plain segment takes no sealed record: the sealed ones start anew
                self._roll()

    def _load(self, segment: _Segment, recover: bool) -> None:
        """Read the segment's index, then its records after the last index entry (all of
        them for the last segment, which may end in a torn write)."""
        segment.index = []
        try:
            raw = segment.index_path.read_bytes()
        except FileNotFoundError:
            raw = b""
        size = segment.path.stat().st_size if segment.path.exists() else 0
        for i in range(0, len(raw) - len(raw) % INDEX_ENTRY.size, INDEX_ENTRY.size):
            entry = INDEX_ENTRY.unpack_from(raw, i)
            if entry[1] >= size:
                break
            segment.index.append(entry)
        position = segment.index[-1][1] if segment.index else 0
        expected = segment.index[-1][0] if segment.index else segment.base
        if segment.index:
            segment.first_timestamp = segment.index[0][2]
        good = position
        since = 0
        with open(segment.path, "ab+") as f:
            f.seek(position)
            while True:
                head = f.read(HEAD.size)
                if len(head) < HEAD.size:
                    break
                length, crc, offset, timestamp = HEAD.unpack(head)
                count, extra = 1, b""
                if length & BATCH_FLAG:
                    length &= ~BATCH_FLAG
                    extra = f.read(_COUNT.size)
                    if len(extra) < _COUNT.size:
                        break
                    (count,) = _COUNT.unpack(extra)
                if length > MAX_RECORD_BYTES + OVERHEAD or offset != expected or count < 1:
                    break
                payload = f.read(length)
                if len(payload) < length or \
                        zlib.crc32(head[8:] + extra + payload) != crc:
                    break
                if not segment.index or (since >= INDEX_EVERY_BYTES and \
                        segment.index[-1][0] < offset):
                    segment.index.append((offset, good, timestamp))
                    since = 0
                if offset == segment.base:
                    segment.first_timestamp = timestamp
                segment.last_offset, segment.last_timestamp = offset + count - 1, timestamp
                good += HEAD.size + len(extra) + length
                since += HEAD.size + len(extra) + length
                expected += count
            if good < size:
                if not recover:
                    raise OSError(f"segment {segment.path} is damaged at byte {good}")
                f.truncate(good)
                os.fsync(f.fileno())
        segment.size = good
        self._since_index = since
        # The index on disk: rewritten whole when it was behind or ahead of the records.
        wanted = b"".join(INDEX_ENTRY.pack(*e) for e in segment.index)
        if wanted != raw:
            tmp = segment.index_path.with_suffix(".idx.tmp")
            tmp.write_bytes(wanted)
            os.replace(tmp, segment.index_path)

    def _open_active(self, segment: _Segment) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        self._fd = os.open(segment.path, flags, 0o600)
        self._index_fd = os.open(segment.index_path, flags, 0o600)
        if segment.empty():
            self._since_index = 0

    def _close_files(self) -> None:
        for fd in (self._fd, self._index_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._index_fd = -1

    def close(self) -> None:
        if self._fd >= 0:
            os.fdatasync(self._fd)
        self._close_files()
