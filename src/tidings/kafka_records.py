"""How a Kafka record and a tidings :class:`~tidings.message.Message` map onto each other,
both ways, so that a stream reads the same on every face.

- **value** ↔ the message body (a null value is an empty body);
- **key** ↔ the header :data:`KEY_HEADER` (``x-kafka-key``): text when it is UTF-8, else
  bytes; no key, no header;
- **headers** ↔ AMQP headers. A Kafka header value becomes text when it is UTF-8, else bytes
  (a null stays null). The other way, text is UTF-8, bytes stay bytes, numbers, booleans and
  dates are written as text, tables and arrays as JSON. A Kafka header whose name is longer
  than an AMQP field name may be (255 bytes) cannot travel on AMQP and is dropped on that face;
- **timestamp** ↔ the stream's own append time in milliseconds: a Kafka record's timestamp is
  the message's ``timestamp`` property (seconds, as AMQP has it) and its ``enqueued_at``; a
  record appended by another face has the time it was appended.

The offset is the stream offset on every face (the ``x-stream-offset`` header on AMQP).
"""

from __future__ import annotations

import datetime
import decimal
import json
from typing import Any

from tidings.message import Message, Record
from tidings.record_batch import KafkaRecord
from tidings.stream_starts import OFFSET

__all__ = ["KEY_HEADER", "OFFSET_HEADER", "kafka_fields", "record_of"]

KEY_HEADER = "x-kafka-key"
#: The header every stream delivery carries (never sent on to Kafka: the offset is there).
OFFSET_HEADER = OFFSET
#: The longest AMQP field name.
MAX_NAME_BYTES = 255

#: A record as a Kafka batch holds it: timestamp ms, key, value, headers.
KafkaFields = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]


def _text_or_bytes(value: bytes | None) -> str | bytes | None:
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value


def record_of(kafka: KafkaRecord, stream: str) -> Record:
    """A Kafka record as the message every other face delivers."""
    headers: dict[str, Any] = {}
    for name, value in kafka.headers:
        if len(name.encode(errors="surrogatepass")) <= MAX_NAME_BYTES:
            headers[name] = _text_or_bytes(value)
    if kafka.key is not None:
        headers[KEY_HEADER] = _text_or_bytes(kafka.key)
    message = Message(kafka.value or b"", stream, "", headers or None, True)
    message.timestamp = kafka.timestamp_ms // 1000
    return Record(message, kafka.timestamp_ms / 1000.0)


def _as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode(errors="surrogatepass")
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, int | float | decimal.Decimal):
        return str(value).encode()
    if isinstance(value, datetime.datetime):
        return value.isoformat().encode()
    return json.dumps(value, default=str, ensure_ascii=False).encode(errors="surrogatepass")


def kafka_fields(message: Message, timestamp_ms: int) -> KafkaFields:
    """A message that came in through another face, as a Kafka record's fields."""
    key: bytes | None = None
    headers: list[tuple[str, bytes | None]] = []
    for name, value in (message.headers or {}).items():
        if name == KEY_HEADER:
            key = _as_bytes(value)
        elif name != OFFSET_HEADER:
            headers.append((name, _as_bytes(value)))
    return timestamp_ms, key, message.body, headers
