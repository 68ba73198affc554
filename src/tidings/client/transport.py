"""The Transport protocol: the contract every backend of the client meets.

The client speaks producers, consumers, queues and events; a transport turns that into one
broker's operations. The embedded broker (:mod:`tidings.client.local`) is the first; AMQP,
NATS JetStream and Redis Streams adapters implement the same protocol and pass the same
conformance suite (:func:`tidings.testing.check_transport`).

Messages cross this boundary as :class:`tidings.message.Message`; a received one comes with an
opaque ``token`` that only the transport that made it understands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tidings.errors import NotSupportedError
from tidings.message import Delivery, Message
from tidings.patterns import EVENTS_EXCHANGE
from tidings.transitions import TransitionCommit

__all__ = ["EVENTS_EXCHANGE", "Capabilities", "Delivery", "QueueSpec", "StreamSpec",
           "Subscription", "Transport", "WithoutMachines"]



@dataclass(frozen=True, slots=True)
class QueueSpec:
    """How the client declares a queue (translated to each broker's arguments)."""

    durable: bool = True
    #: Failed deliveries allowed before a message is dead-lettered (None: unlimited).
    delivery_limit: int | None = 10
    #: Keep a ``<name>.dead`` queue for dead letters.
    dead_letters: bool = True
    max_length: int | None = None
    max_priority: int | None = None
    message_ttl_ms: int | None = None
    consumer_timeout_ms: int | None = None
    #: Private subscription queue: deleted when the client goes away.
    exclusive: bool = False
    arguments: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """How the client declares a stream: its retention (RabbitMQ's stream arguments)."""

    #: Drop the oldest whole segments once the stream is larger (``x-max-length-bytes``).
    max_bytes: int | None = None
    #: Drop whole segments whose records are older, as ``"7D"``, ``"12h"`` (``x-max-age``).
    max_age: str | None = None
    #: Bytes per segment file (``x-stream-max-segment-size-bytes``).
    segment_bytes: int | None = None

    def arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {"x-queue-type": "stream"}
        pairs = (("x-max-length-bytes", self.max_bytes), ("x-max-age", self.max_age),
                 ("x-stream-max-segment-size-bytes", self.segment_bytes))
        args.update({k: v for k, v in pairs if v is not None})
        return args


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport's broker can do. The conformance suite skips a check only by these,
    and the docs' capability table is printed from them (``python -m tidings.testing``)."""

    #: The broker as users know it, for error messages: "RabbitMQ 3.10.7", "tidings serve".
    broker: str
    #: A confirmed send survives a crash of the broker.
    durable: bool = True
    #: ``send(delay_ms=...)`` and ``nack(delay_ms=...)``.
    delays: bool = True
    priorities: bool = True
    #: ``browse`` leaves messages in place, unmarked.
    browse: bool = True
    #: ``delete`` of a ready message by id (``client.delete``).
    delete: bool = True
    #: ``delete`` of a delayed message by id.
    delete_delayed: bool = True
    #: ``extend`` restarts a delivery's consumer-timeout clock.
    extend: bool = True
    #: Waiting and processing time percentiles in ``statistics()``.
    latency_statistics: bool = True
    #: Streams: ``client.stream``, ``append``, ``read``, named readers (and, on the brokers,
    #: ``keep_events`` with ``subscribe(replay=...)``).
    streams: bool = True
    #: State machines run durably (``client.machine``): a transition, its messages, timers
    #: and the event's ack committed as one step.
    machines: bool = False
    #: For each capability that is False: why, and what to do instead.
    reasons: tuple[tuple[str, str], ...] = ()

    def reason(self, name: str) -> str:
        if name == "machines" and name not in dict(self.reasons):
            return ("this tidings server is older than the state machine extension: upgrade "
                    "it, or run the machine on a data directory")
        return dict(self.reasons).get(name, "not available on this broker")

    def unsupported(self, name: str, operation: str) -> NotSupportedError:
        """The error for ``operation``, which needs the missing capability ``name``."""
        return NotSupportedError(self.broker, operation, self.reason(name))


class Subscription(Protocol):
    async def cancel(self) -> None: ...


class Transport(Protocol):
    capabilities: Capabilities

    async def declare_queue(self, name: str, spec: QueueSpec) -> str:
        """Create ``name`` if missing (a blank name gets a server-made one); return the name."""
        ...

    async def queue_exists(self, name: str) -> bool: ...

    async def bind_events(self, queue: str, pattern: str) -> None:
        """Route events whose topic matches ``pattern`` to ``queue``."""
        ...

    async def send(self, queue: str, messages: Sequence[Message],
                   delay_ms: int | None = None) -> None:
        """Enqueue; returns once every message is durable. Raises if a queue refused one."""
        ...

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Publish events; returns once durable."""
        ...

    async def get(self, queue: str) -> Delivery | None: ...

    async def consume(self, queue: str, prefetch: int,
                      on_message: Callable[[Delivery], None],
                      arguments: dict[str, Any] | None = None) -> Subscription:
        """Call ``on_message`` for each delivery. When ``on_message`` also has a ``many``
        method, a transport that can hand over several deliveries at once (the embedded
        broker; AMQP from a tidings server) calls ``on_message.many(list)`` instead; others
        ignore it. ``arguments``
        are the consumer's (``x-stream-offset`` for a stream)."""
        ...

    async def declare_stream(self, name: str, spec: StreamSpec) -> None:
        """Create the stream ``name`` if missing (a different redeclare raises)."""
        ...

    async def commit_offset(self, stream: str, reader: str, offset: int) -> None:
        """Store, durably, that ``reader`` has processed ``stream`` up to ``offset``; a
        consumer with the argument ``x-tidings-reader: <reader>`` starts right after it."""
        ...

    async def ack(self, tokens: Sequence[Any]) -> None: ...

    async def nack(self, token: Any, requeue: bool, delay_ms: int | None = None) -> None: ...

    async def extend(self, token: Any) -> None:
        """Restart the consumer-timeout clock of a delivery (extend its lease)."""
        ...

    async def browse(self, queue: str, limit: int) -> list[Message]: ...

    async def delete(self, queue: str, message_id: str) -> bool:
        """Remove a waiting (ready or delayed) message by id; False when none is waiting."""
        ...

    async def purge(self, queue: str) -> int: ...

    async def dead_letters(self, queue: str, limit: int) -> list[Message]:
        """Up to ``limit`` dead letters of ``queue``, oldest first, left in place."""
        ...

    async def replay_dead_letters(self, queue: str, ids: set[str] | None) -> int:
        """Move dead letters (all, or those with ``ids``) back into ``queue``."""
        ...

    async def sync(self) -> None:
        """Wait until everything done so far (acks included) is durable."""
        ...

    async def statistics(self) -> Any: ...

    async def commit_transition(self, token: Any, commit: TransitionCommit) -> None:
        """Commit a machine's transition with the ack of the delivery ``token`` (None: no
        delivery to settle) as one step (when ``capabilities.machines``)."""
        ...

    async def find_instance(self, machine: str, key: str) -> bytes | None: ...

    async def list_instances(self, machine: str) -> list[tuple[str, bytes]]: ...

    async def describe_machine(self, machine: str, description: bytes) -> None:
        """Register a machine's description (what the dashboard draws)."""
        ...

    async def close(self) -> None: ...


class WithoutMachines:
    """The machine calls of a transport whose broker cannot commit a transition with its
    event: each says so (``NotSupportedError`` naming the broker and what to do instead)."""

    capabilities: Capabilities

    async def commit_transition(self, token: Any, commit: TransitionCommit) -> None:
        raise self.capabilities.unsupported("machines", "run a state machine")

    async def find_instance(self, machine: str, key: str) -> bytes | None:
        raise self.capabilities.unsupported("machines", "read a state machine's instance")

    async def list_instances(self, machine: str) -> list[tuple[str, bytes]]:
        raise self.capabilities.unsupported("machines", "list a state machine's instances")

    async def describe_machine(self, machine: str, description: bytes) -> None:
        raise self.capabilities.unsupported("machines", "run a state machine")
