"""How tidings' names land on NATS JetStream: stream names, subjects and filters.

A queue ``q`` is the stream ``TQ_<q escaped>`` on the subject ``tidings.q.<q escaped>``; a
topic ``a.b`` the subject ``tidings.ev.a.b._`` in the stream ``TIDINGS_EVENTS``, so that the
AMQP pattern ``a.#`` is the one NATS filter ``tidings.ev.a.>``. Escaping keeps letters, digits
and ``-`` and writes every other character as ``_`` and its UTF-8 bytes in hex.
"""

from __future__ import annotations

import hashlib
import re

from tidings.errors import InvalidArgumentError

EVENTS_STREAM = "TIDINGS_EVENTS"
DELAYED_STREAM = "TIDINGS_DELAYED"
QUEUE_STREAM_PREFIX = "TQ_"
CONSUMER = "tidings"
MOVER = "tidings-mover"
#: The message's properties (JSON, :func:`tidings.message.encode_meta`).
META_HEADER = "Tidings-Meta"
#: A delayed message's due time (epoch ms) and target queue.
DUE_HEADER = "Tidings-Due"
TARGET_HEADER = "Tidings-Queue"
MSG_ID_HEADER = "Nats-Msg-Id"


def escape(name: str) -> str:
    """``name`` as a stream name and subject token: letters, digits and ``-`` kept, every
    other character as ``_`` and its UTF-8 bytes in hex (so distinct names stay distinct)."""
    return re.sub(r"[^A-Za-z0-9\-]",
                  lambda m: "".join(f"_{b:02X}" for b in m.group().encode()), name)


def stream_name(queue: str) -> str:
    return QUEUE_STREAM_PREFIX + escape(queue)


def queue_subject(queue: str) -> str:
    return f"tidings.q.{escape(queue)}"


def _check_words(text: str, what: str) -> list[str]:
    words = text.split(".")
    for word in words:
        if not word or re.search(r"[\s>]", word) or ("*" in word and word != "*"):
            raise InvalidArgumentError(
                f"{what} '{text}' cannot travel over NATS: its words must be non-empty and "
                f"free of spaces and '>' ('*' and '#' only as whole words of a pattern)")
    return words


def event_subject(topic: str) -> str:
    words = _check_words(topic, "topic")
    if "*" in words or "#" in words:
        raise InvalidArgumentError(f"topic '{topic}' has a wildcard: publish to a plain topic")
    return f"tidings.ev.{topic}._"


def event_filter(pattern: str) -> tuple[str, bool]:
    """The NATS filter subject of a topic pattern, and whether it is exact (when it is not,
    the client also checks the whole pattern)."""
    words = _check_words(pattern, "topic pattern")
    if "#" not in words:
        return f"tidings.ev.{pattern}._", True
    first = words.index("#")
    head = ".".join(["tidings", "ev", *words[:first], ">"])
    return head, first == len(words) - 1


def topic_of(subject: str) -> str:
    return subject[len("tidings.ev."):-2]


def event_consumer(queue: str, pattern: str) -> str:
    return f"{escape(queue)}_Z{hashlib.sha1(pattern.encode()).hexdigest()[:12]}"


def unescape(escaped: str) -> str:
    raw = re.sub(r"((?:_[0-9A-F]{2})+)",
                 lambda m: bytes.fromhex(m.group().replace("_", "")).decode("utf-8", "replace"),
                 escaped)
    return raw


#: A tidings stream ``s`` is the JetStream stream ``TS_<s escaped>`` on one subject.
LOG_STREAM_PREFIX = "TS_"
#: Named readers' committed offsets: the last message of a subject per (stream, reader).
READERS_STREAM = "TIDINGS_READERS"


def log_stream_name(stream: str) -> str:
    return LOG_STREAM_PREFIX + escape(stream)


def log_subject(stream: str) -> str:
    return f"tidings.s.{escape(stream)}"


def reader_subject(stream: str, reader: str) -> str:
    return f"tidings.r.{escape(stream)}.{escape(reader)}"
