"""Queue arguments (``x-*``) parsed and checked once, at declare time.

Names and meanings are RabbitMQ's; a bad value is refused with the argument and queue named,
as RabbitMQ does (PRECONDITION_FAILED, 406).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tidings.errors import InvalidArgumentError
from tidings.stream_starts import parse_age

OVERFLOWS = ("drop-head", "reject-publish", "reject-publish-dlx")
QUEUE_TYPES = ("classic", "quorum", "stream")
#: Queue arguments a stream refuses (RabbitMQ's list: they describe a queue that forgets).
NOT_FOR_STREAMS = ("x-message-ttl", "x-expires", "x-max-length", "x-overflow",
                   "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-max-priority",
                   "x-delivery-limit", "x-single-active-consumer", "x-consumer-timeout")
#: Highest x-max-priority RabbitMQ accepts.
MAX_PRIORITY = 255
#: Longest timer RabbitMQ accepts, ms (``x-message-ttl``, ``x-expires``, ``expiration``).
MAX_EXPIRY_MS = 2**32 - 1
#: Every other integer argument fits AMQP's signed 64-bit integer.
MAX_LONG = 2**63 - 1


@dataclass(frozen=True, slots=True)
class QueueOptions:
    message_ttl_ms: int | None = None
    expires_ms: int | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    max_priority: int | None = None
    delivery_limit: int | None = None
    single_active_consumer: bool = False
    #: A single-active-consumer queue that is partition I of a set: its active consumer is
    #: the (I mod n)-th of its n consumers, so the partitions spread over them
    #: (``x-tidings-partition``, as RabbitMQ's super streams spread theirs).
    partition: int | None = None
    consumer_timeout_ms: int | None = None
    queue_type: str = "classic"
    #: Streams: drop whole segments once records are older than this (``x-max-age``).
    max_age_ms: int | None = None
    #: Streams: bytes per segment file (``x-stream-max-segment-size-bytes``).
    segment_bytes: int | None = None


def _int(name: str, value: Any, queue: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(
            f"invalid arg '{name}' for queue '{queue}': {str(value)[:40]} is not an integer "
            f">= {minimum}"
        )
    if value > maximum:
        raise InvalidArgumentError(
            f"invalid arg '{name}' for queue '{queue}': {str(value)[:40]} is larger than "
            f"{maximum}"
        )
    return value


def _choice(name: str, value: Any, queue: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidArgumentError(
            f"invalid arg '{name}' for queue '{queue}': {value!r} is not one of {allowed}"
        )
    return str(value)


def parse_queue_arguments(queue: str, arguments: dict[str, Any]) -> QueueOptions:
    """Check and parse queue arguments; unknown ``x-`` arguments are ignored, as RabbitMQ does."""
    a = arguments
    ints = {
        "x-message-ttl": ("message_ttl_ms", 0, MAX_EXPIRY_MS),
        "x-expires": ("expires_ms", 1, MAX_EXPIRY_MS),
        "x-max-length": ("max_length", 0, MAX_LONG),
        "x-max-length-bytes": ("max_length_bytes", 0, MAX_LONG),
        "x-max-priority": ("max_priority", 0, MAX_PRIORITY),
        "x-delivery-limit": ("delivery_limit", 0, MAX_LONG),
        "x-consumer-timeout": ("consumer_timeout_ms", 1, MAX_EXPIRY_MS),
        "x-stream-max-segment-size-bytes": ("segment_bytes", 64, MAX_LONG),
        "x-tidings-partition": ("partition", 0, MAX_LONG),
    }
    values: dict[str, Any] = {}
    for arg, (field_name, minimum, maximum) in ints.items():
        if a.get(arg) is not None:
            values[field_name] = _int(arg, a[arg], queue, minimum, maximum)
    if "x-overflow" in a:
        values["overflow"] = _choice("x-overflow", a["x-overflow"], queue, OVERFLOWS)
    if "x-queue-type" in a:
        values["queue_type"] = _choice("x-queue-type", a["x-queue-type"], queue, QUEUE_TYPES)
    if values.get("queue_type") == "stream":
        for arg in NOT_FOR_STREAMS:
            if arg in a:
                raise InvalidArgumentError(
                    f"invalid arg '{arg}' for queue '{queue}' of queue type stream")
    if a.get("x-max-age") is not None:
        age = parse_age(a["x-max-age"])
        if age is None or age <= 0:
            raise InvalidArgumentError(
                f"invalid arg 'x-max-age' for queue '{queue}': {str(a['x-max-age'])[:40]!r} is "
                f"not an age such as '7D' (units Y, M, D, h, m, s)")
        values["max_age_ms"] = age
    for arg, field_name in (
        ("x-dead-letter-exchange", "dead_letter_exchange"),
        ("x-dead-letter-routing-key", "dead_letter_routing_key"),
    ):
        if arg in a:
            if not isinstance(a[arg], str):
                raise InvalidArgumentError(
                    f"invalid arg '{arg}' for queue '{queue}': {a[arg]!r} is not a string"
                )
            values[field_name] = a[arg]
    if "x-single-active-consumer" in a:
        if not isinstance(a["x-single-active-consumer"], bool):
            raise InvalidArgumentError(
                f"invalid arg 'x-single-active-consumer' for queue '{queue}': not a boolean"
            )
        values["single_active_consumer"] = a["x-single-active-consumer"]
    if values.get("partition") is not None and not values.get("single_active_consumer"):
        raise InvalidArgumentError(f"invalid arg 'x-tidings-partition' for queue '{queue}': "
                                   f"only with x-single-active-consumer")
    return QueueOptions(**values)


def message_ttl_ms(expiration: str | None) -> int | None:
    """Per-message TTL from the ``expiration`` property (a decimal string of milliseconds)."""
    if expiration is None:
        return None
    shown = expiration[:40]
    try:
        ttl = int(expiration) if len(expiration) <= 20 else -1
    except ValueError as e:
        raise InvalidArgumentError(f"invalid expiration '{shown}': not an integer") from e
    if not 0 <= ttl <= MAX_EXPIRY_MS:
        raise InvalidArgumentError(f"invalid expiration '{shown}': not an integer from 0 to "
                                   f"{MAX_EXPIRY_MS}")
    return ttl


