"""Names and records of the Kafka engine: which topic and consumer group a tidings queue,
stream or event topic is, and how a message travels as a Kafka record.

- A **queue** ``q`` is the topic ``tidings.q.<q>`` read by the consumer group ``tidings.q.<q>``;
  its dead letters are the queue ``q.dead`` (so the topic ``tidings.q.<q>.dead``).
- A **stream** or an **event topic** ``s`` is the topic ``s`` itself, so that other Kafka
  programs produce and consume it under the name they know. Names made of letters, digits,
  ``.``, ``_`` and ``-`` are kept as they are; any other character is written ``_`` and its
  UTF-8 bytes in hex (Kafka allows no other characters in a topic name).
- A **named reader** of a stream is the consumer group of that name: its committed offset is
  the reader's place, as a Kafka consumer of that group would see it.
- The **catalog** topic keeps what Kafka has no place for (queues' rules, bindings of event
  patterns to queues, dead letters replayed): one compacted record per key.

A record's value is the message body; ``x-kafka-key`` (the header the Kafka face uses) is its
key, so a key decides its partition; the message's headers are Kafka headers; the header
``tidings-meta`` carries every property as JSON (so nothing is lost between tidings
processes) and ``tidings-failures`` the failed deliveries before it was written.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from tidings.client.remote import message_of
from tidings.codecs import encode_meta
from tidings.errors import InvalidArgumentError
from tidings.kafka_records import KEY_HEADER, MAX_NAME_BYTES, kafka_fields
from tidings.message import Message
from tidings.stream_starts import OFFSET

#: Where a queue's topic and consumer group names start.
QUEUE_PREFIX = "tidings.q."
#: The compacted topic of queues' rules, bindings and replayed dead letters.
CATALOG = "tidings.catalog"
#: Where a client finds out, when it connects, how the server answers a partition's end.
PROBE = "tidings.probe"
#: Delayed messages wait here, each with its queue and due time in headers.
DELAYED = "tidings.delayed"
#: The consumer group of the processes that move due messages into their queues.
DELAY_GROUP = "tidings.delayed"
#: Kafka's longest topic name.
MAX_TOPIC = 249

META = "tidings-meta"
FAILURES = "tidings-failures"
DUE = "tidings-due"
TARGET = "tidings-queue"
#: The partition a stream record came from (reading a topic of several partitions).
PARTITION = "x-kafka-partition"
#: The headers this engine writes for itself (never shown as the message's).
OWN = frozenset({META, FAILURES, DUE, TARGET})

Headers = list[tuple[str, bytes]]


@functools.lru_cache(maxsize=4096)
def topic_of(name: str) -> str:
    """The Kafka topic of a stream or event topic called ``name``."""
    topic = re.sub(r"[^A-Za-z0-9._\-]",
                   lambda m: "".join(f"_{b:02X}" for b in m.group().encode()), name)
    if not topic or topic in (".", "..") or len(topic) > MAX_TOPIC:
        raise InvalidArgumentError(
            f"'{name[:60]}' cannot be a Kafka topic: a topic name is 1 to {MAX_TOPIC} "
            f"characters and neither '.' nor '..'")
    return topic


@functools.lru_cache(maxsize=4096)
def queue_topic(queue: str) -> str:
    return topic_of(QUEUE_PREFIX + queue)


def queue_group(queue: str) -> str:
    return QUEUE_PREFIX + queue


def record_of(message: Message, failures: int = 0,
              extra: Headers | None = None) -> tuple[bytes | None, bytes, Headers]:
    """``(key, value, headers)`` of the record that carries ``message``."""
    _, key, value, fields = kafka_fields(message, 0)
    headers: Headers = [(n, v if v is not None else b"") for n, v in fields]
    headers.append((META, encode_meta(message).encode()))
    if failures:
        headers.append((FAILURES, str(failures).encode()))
    headers.extend(extra or ())
    return key, value or b"", headers


def header(headers: Any, name: str) -> bytes | None:
    for n, v in headers or ():
        if n == name:
            return bytes(v) if v is not None else None
    return None


def message_of_record(value: bytes | None, key: bytes | None, headers: Any,
                      timestamp_ms: int, name: str) -> tuple[Message, int]:
    """The message a record carries, and its failed deliveries so far. A record another
    program produced (no ``tidings-meta``) keeps its headers and key as the Kafka face
    shows them."""
    meta = header(headers, META)
    if meta is not None:
        message = message_of(value or b"", meta, name)
    else:
        found: dict[str, Any] = {}
        for n, v in headers or ():
            if n not in OWN and len(n.encode(errors="surrogatepass")) <= MAX_NAME_BYTES:
                found[n] = _text(v)
        if key is not None:
            found[KEY_HEADER] = _text(key)
        message = Message(value or b"", name, "", found or None, True)
        message.timestamp = timestamp_ms // 1000
    failures = header(headers, FAILURES)
    return message, int(failures) if failures and failures.isdigit() else 0


def with_offset(message: Message, offset: int, partition: int | None) -> Message:
    """A stream record's message, carrying its offset (and partition, when the topic has
    several) as every face shows it."""
    headers = dict(message.headers or {})
    headers[OFFSET] = offset
    if partition is not None:
        headers[PARTITION] = partition
    message.headers = headers
    return message


def _text(value: bytes | None) -> str | bytes | None:
    if value is None:
        return None
    try:
        return bytes(value).decode()
    except UnicodeDecodeError:
        return bytes(value)
