"""Kafka's RecordBatch (magic 2): the bytes of a stream's batch entries.

A Kafka producer sends records in batches; tidings keeps each batch whole as one entry of the
stream's log (:meth:`~tidings.storage.segments.SegmentLog.append_batch`), so a Kafka fetch
serves it as the producer sent it. Every other face reads a batch record by record: this
module is the one place that knows the format, below both the broker and the Kafka face.

- :func:`read_header` and :func:`check_batch` read and check a batch's fixed 61-byte head
  (CRC-32C over everything after the CRC, magic, length, count) without touching the records;
- :func:`decode_records` decompresses (gzip, snappy raw or xerial-framed, lz4 frame, zstd; the
  last three with cramjam) within :data:`MAX_DECODED_BYTES`, and reads each record;
- :func:`encode_batch` writes records that came in through another face as one uncompressed
  batch, for a Kafka fetch.

kio reads batches too, but it rounds timestamps to whole seconds and does not decompress, so
the records are read here with kio's native varint readers.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import cramjam
from crc32c import crc32c
from kio._kio_native import read_signed_varint, read_signed_varlong

from tidings.errors import InvalidArgumentError

__all__ = ["HEAD", "BatchError", "BatchHeader", "KafkaRecord", "check_batch", "decode_records",
           "encode_batch", "read_header", "with_base_offset"]

#: baseOffset, batchLength, partitionLeaderEpoch, magic, crc, attributes, lastOffsetDelta,
#: baseTimestamp, maxTimestamp, producerId, producerEpoch, baseSequence, recordsCount.
HEAD = struct.Struct(">qiibIhiqqqhii")
#: Bytes before batchLength's count starts (baseOffset and batchLength themselves).
LOG_OVERHEAD = 12
#: Where the CRC-covered part starts (attributes on).
CRC_FROM = 21
COMPRESSION_MASK = 0x07
TRANSACTIONAL, CONTROL = 0x10, 0x20
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
#: Most bytes a batch's records may decompress to (a compressed bomb is refused, not run).
MAX_DECODED_BYTES = 64 * 2**20
_XERIAL = b"\x82SNAPPY\x00"


class BatchError(InvalidArgumentError, ValueError):
    """A batch that is not a well-formed RecordBatch v2 (Kafka's CORRUPT_MESSAGE)."""


@dataclass(frozen=True, slots=True)
class BatchHeader:
    base_offset: int
    batch_length: int
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    count: int

    @property
    def size(self) -> int:
        """Bytes of the whole batch."""
        return self.batch_length + LOG_OVERHEAD

    @property
    def codec(self) -> int:
        return self.attributes & COMPRESSION_MASK

    @property
    def last_sequence(self) -> int:
        return self.base_sequence + self.count - 1


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


def read_header(data: bytes | memoryview, position: int = 0) -> BatchHeader:
    if len(data) - position < HEAD.size:
        raise BatchError(f"a record batch needs {HEAD.size} bytes of head, got "
                         f"{len(data) - position}")
    return BatchHeader(*HEAD.unpack_from(data, position))


def check_batch(data: bytes | memoryview, position: int = 0) -> BatchHeader:
    """The head of the batch at ``position``, checked whole (raises :class:`BatchError`)."""
    head = read_header(data, position)
    if head.magic != 2:
        raise BatchError(f"record batch magic {head.magic}: only magic 2 is supported")
    if head.batch_length < HEAD.size - LOG_OVERHEAD or \
            position + head.size > len(data):
        raise BatchError(f"record batch length {head.batch_length} does not match the "
                         f"{len(data) - position} bytes sent")
    if head.count < 1 or head.count != head.last_offset_delta + 1:
        raise BatchError(f"record batch of {head.count} records has last offset delta "
                         f"{head.last_offset_delta}")
    if head.codec not in CODECS:
        raise BatchError(f"record batch compression codec {head.codec} is unknown")
    end = position + head.size
    if crc32c(memoryview(data)[position + CRC_FROM:end]) != head.crc:
        raise BatchError("record batch CRC-32C does not match its bytes")
    return head


def with_base_offset(data: bytes | memoryview, base_offset: int) -> bytes:
    """The batch with its base offset set (outside the CRC, as a broker assigns it)."""
    return struct.pack(">q", base_offset) + bytes(memoryview(data)[8:])


# -- reading records -----------------------------------------------------------------------

def _decompress(codec: int, data: bytes) -> bytes:
    if codec == 1:
        inflater = zlib.decompressobj(47)  # gzip or zlib framing
        out = inflater.decompress(data, MAX_DECODED_BYTES + 1)
        if len(out) > MAX_DECODED_BYTES:
            raise BatchError(f"record batch decompresses to more than {MAX_DECODED_BYTES} "
                             f"bytes")
        return out
    if codec == 2 and data.startswith(_XERIAL):
        parts, position = [], 16
        while position < len(data):
            (length,) = struct.unpack_from(">I", data, position)
            parts.append(_bounded(cramjam.snappy.decompress_raw_into,
                                  data[position + 4:position + 4 + length]))
            position += 4 + length
        return b"".join(parts)
    decompress = {2: cramjam.snappy.decompress_raw_into, 3: cramjam.lz4.decompress_into,
                  4: cramjam.zstd.decompress_into}[codec]
    return _bounded(decompress, data)


def _bounded(decompress_into: Callable[[bytes, bytearray], int], data: bytes) -> bytes:
    """Decompress into buffers growing up to MAX_DECODED_BYTES (never past it)."""
    size = min(MAX_DECODED_BYTES, max(1 << 20, 8 * len(data)))
    while True:
        out = bytearray(size)
        try:
            n = decompress_into(data, out)
            return bytes(memoryview(out)[:n])
        except cramjam.DecompressionError as e:
            if size >= MAX_DECODED_BYTES:
                raise BatchError(f"record batch does not decompress within "
                                 f"{MAX_DECODED_BYTES} bytes: {e}") from None
            size = min(MAX_DECODED_BYTES, size * 8)


def _bytes(buffer: bytes, position: int) -> tuple[bytes | None, int]:
    length, n = read_signed_varint(buffer, position)
    position += n
    if length < 0:
        return None, position
    if position + length > len(buffer):
        raise BatchError("record runs past its batch")
    return buffer[position:position + length], position + length


def decode_records(data: bytes, position: int = 0) -> tuple[BatchHeader, list[KafkaRecord]]:
    """The batch's head and records (decompressed; raises :class:`BatchError`)."""
    head = read_header(data, position)
    body = data[position + HEAD.size:position + head.size]
    try:
        if head.codec:
            body = _decompress(head.codec, body)
        records, at = [], 0
        for _ in range(head.count):
            length, n = read_signed_varint(body, at)
            at += n
            end = at + length
            at += 1  # attributes
            ts_delta, n = read_signed_varlong(body, at)
            at += n
            offset_delta, n = read_signed_varint(body, at)
            at += n
            key, at = _bytes(body, at)
            value, at = _bytes(body, at)
            count, n = read_signed_varint(body, at)
            at += n
            headers = []
            for _ in range(count):
                name, at = _bytes(body, at)
                header_value, at = _bytes(body, at)
                headers.append(((name or b"").decode(errors="replace"), header_value))
            if at != end:
                raise BatchError("record length does not match its fields")
            records.append(KafkaRecord(head.base_offset + offset_delta,
                                       head.base_timestamp + ts_delta, key, value,
                                       tuple(headers)))
    except (IndexError, ValueError, struct.error, cramjam.DecompressionError) as e:
        if isinstance(e, BatchError):
            raise
        raise BatchError(f"unreadable record batch ({type(e).__name__}: {e})") from None
    return head, records


# -- writing records -----------------------------------------------------------------------

def _varint(value: int) -> bytes:
    value = (value << 1) ^ (value >> 63)  # zigzag
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(value: bytes | None) -> bytes:
    return _varint(-1) if value is None else _varint(len(value)) + value


def encode_batch(base_offset: int, records: list[tuple[int, bytes | None, bytes | None,
                                                       list[tuple[str, bytes | None]]]],
                 *, producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1
                 ) -> bytes:
    """One uncompressed batch of ``(timestamp_ms, key, value, headers)`` at dense offsets
    from ``base_offset`` (by default of no idempotent producer)."""
    base_ts = records[0][0]
    max_ts = max(r[0] for r in records)
    parts = []
    for delta, (ts, key, value, headers) in enumerate(records):
        body = b"".join([b"\x00", _varint(ts - base_ts), _varint(delta), _field(key),
                         _field(value), _varint(len(headers)),
                         *(_field(k.encode()) + _field(v) for k, v in headers)])
        parts.append(_varint(len(body)) + body)
    tail = struct.pack(">hiqqqhii", 0, len(records) - 1, base_ts, max_ts, producer_id,
                       producer_epoch, base_sequence, len(records)) + b"".join(parts)
    head = struct.pack(">qiib", base_offset, len(tail) + 9, 0, 2)
    return head + struct.pack(">I", crc32c(tail)) + tail
