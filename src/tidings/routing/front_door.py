"""The front door: everything a face (the AMQP server, the HTTP gateway, the embedded
transport, the CLI) may ask of the broker, as one typed protocol.

Faces hold a :class:`FrontDoor`, never the broker's insides: they see queues, exchanges and
bindings as the plain records below (``QueueInfo``, ``ExchangeInfo``, ``BindingInfo``),
messages as :class:`~tidings.message.Message`, deliveries as :class:`Delivery` and numbers as
the records of :mod:`tidings.statistics`. A session (one AMQP channel's worth of delivery
state) and its consumers are the two live objects a face keeps. ``tests/test_layers.py``
holds every face to this module.

Verbs keep fixed meanings: ``declare_`` is idempotent, ``describe_`` and ``get`` raise
:class:`~tidings.errors.NotFoundError` when the thing is missing, ``list_`` returns records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tidings.message import Delivery, Message
from tidings.routing.machines import TransitionCommit
from tidings.routing.policies import Policy, make_policy
from tidings.routing.session import Consumer, Session
from tidings.routing.vhost import DEFAULT_VHOST
from tidings.statistics import (
    BrokerStatistics,
    Histogram,
    QueueStatistics,
    StreamStatistics,
    TransitionNumbers,
)
from tidings.storage.key_admin import KeyStatus, Rotated
from tidings.storage.quarantine import QuarantinedRecord

__all__ = ["DEFAULT_VHOST", "BindingInfo", "Consumer", "Delivery", "ExchangeInfo", "FrontDoor",
           "Policy", "PublishResult", "QuarantinedRecord", "QueueInfo", "Session",
           "TransitionCommit", "make_policy"]


@dataclass(frozen=True, slots=True)
class PublishResult:
    #: Number of queues the message was enqueued in (or 1 for a delayed message).
    routed: int
    #: True when a queue refused it (``x-overflow: reject-publish``): confirm with a nack.
    refused: bool = False
    #: True when it was mandatory and routed nowhere: return it to the publisher.
    returned: bool = False


@dataclass(frozen=True, slots=True)
class QueueInfo:
    vhost: str
    name: str
    durable: bool
    exclusive: bool
    auto_delete: bool
    arguments: dict[str, Any]
    #: ``classic``, ``quorum`` or ``stream`` (``x-queue-type``).
    queue_type: str
    #: Ready messages (``queue.declare-ok``'s message-count; a stream's records).
    ready: int
    consumers: int
    #: The policy and operator policy that apply, and the definition keys in effect.
    policy: str | None = None
    operator_policy: str | None = None
    effective_policy_definition: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExchangeInfo:
    vhost: str
    name: str
    kind: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: dict[str, Any]
    policy: str | None = None


@dataclass(frozen=True, slots=True)
class BindingInfo:
    vhost: str
    source: str
    destination: str
    to_exchange: bool
    routing_key: str
    arguments: dict[str, Any]
    #: Kept across restarts: its source and destination are both durable.
    durable: bool


class FrontDoor(Protocol):
    """The broker as every face sees it."""

    # -- lifecycle and durability
    @property
    def durable(self) -> bool: ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def sync(self) -> asyncio.Future[None]:
        """Resolved when everything done so far is durable (what a confirm waits on)."""
        ...

    def write_backlog_exceeded(self) -> bool: ...

    def write_error(self) -> str | None: ...

    # -- topology
    def vhost_names(self) -> list[str]: ...

    def declare_vhost(self, name: str) -> None: ...

    def delete_vhost(self, name: str) -> None: ...

    def declare_exchange(self, vhost: str, name: str, kind: str = "direct", *,
                         durable: bool = True, auto_delete: bool = False,
                         internal: bool = False, arguments: dict[str, Any] | None = None,
                         passive: bool = False) -> ExchangeInfo: ...

    def delete_exchange(self, vhost: str, name: str, *, if_unused: bool = False) -> None: ...

    def list_exchanges(self, vhost: str) -> list[ExchangeInfo]: ...

    def bind(self, vhost: str, source: str, destination: str, routing_key: str = "",
             arguments: dict[str, Any] | None = None, *, to_exchange: bool = False) -> None: ...

    def unbind(self, vhost: str, source: str, destination: str, routing_key: str = "",
               arguments: dict[str, Any] | None = None, *,
               to_exchange: bool = False) -> None: ...

    def list_bindings(self, vhost: str) -> list[BindingInfo]: ...

    def declare_queue(self, vhost: str, name: str = "", *, durable: bool = True,
                      exclusive: bool = False, auto_delete: bool = False,
                      arguments: dict[str, Any] | None = None, passive: bool = False,
                      connection_id: str | None = None,
                      reserved_ok: bool = False) -> QueueInfo: ...

    def new_queue_name(self) -> str: ...

    def delete_queue(self, vhost: str, name: str, *, if_unused: bool = False,
                     if_empty: bool = False, connection_id: str | None = None) -> int: ...

    def purge_queue(self, vhost: str, name: str, connection_id: str | None = None) -> int: ...

    def list_queues(self, vhost: str) -> list[QueueInfo]: ...

    def describe_queue(self, vhost: str, name: str) -> QueueInfo: ...

    def queue_exists(self, vhost: str, name: str) -> bool: ...

    # -- state machines (``routing/machines.py``): instances are opaque rows
    def commit_transition(self, session: Session, delivery_tag: int | None,
                          commit: TransitionCommit) -> None:
        """The new row, the messages, the timers and the event's ack, as one step."""
        ...

    def find_instance(self, vhost: str, machine: str, key: str) -> bytes | None: ...

    def list_instances(self, vhost: str, machine: str) -> list[tuple[str, bytes]]: ...

    def machine_names(self, vhost: str) -> list[str]:
        """The machines of ``vhost``: those described or with instances."""
        ...

    def describe_machine(self, vhost: str, machine: str, description: bytes) -> None:
        """Keep a machine's description (JSON: states, transitions; see ``Machine.describe``)."""
        ...

    def machine_description(self, vhost: str, machine: str) -> bytes | None: ...

    def machine_statistics(self, vhost: str, machine: str) -> dict[str, Any]:
        """Per transition since start: committed, failed, rate, handler and commit time (to
        durable), ms; and the machine's dead letters."""
        ...

    def transition_numbers(self, vhost: str) -> list[tuple[str, str, TransitionNumbers]]:
        """(machine, transition, numbers) of ``vhost``'s machines."""
        ...

    # -- policies (``make_policy`` checks one; see ``routing/policies.py``)
    def set_policy(self, policy: Policy) -> None: ...

    def delete_policy(self, vhost: str, name: str, *, operator: bool = False) -> None: ...

    def list_policies(self, vhost: str, *, operator: bool = False) -> list[Policy]: ...

    # -- messages
    def publish(self, vhost: str, exchange: str, message: Message, *,
                mandatory: bool = False, delay_ms: int | None = None) -> PublishResult: ...

    def browse(self, vhost: str, queue_name: str, limit: int) -> list[Message]: ...

    def take(self, vhost: str, queue_name: str, message_id: str) -> Message | None: ...

    # -- dead letters
    def dead_letter_queue(self, vhost: str, queue_name: str) -> str: ...

    def dead_letters(self, vhost: str, queue_name: str, limit: int) -> list[Message]: ...

    def replay_dead_letters(self, vhost: str, queue_name: str,
                            ids: set[str] | None = None) -> int: ...

    def purge_dead_letters(self, vhost: str, queue_name: str) -> int: ...

    # -- connections, sessions and consumers
    def open_session(self, vhost: str = DEFAULT_VHOST,
                     connection_id: str = "local") -> Session: ...

    def session_count(self, vhosts: set[str] | None = None) -> int: ...

    def consume(self, session: Session, queue_name: str,
                on_delivery: Callable[[Delivery], None], *, prefetch_count: int = 0,
                no_ack: bool = False, exclusive: bool = False, consumer_tag: str = "",
                arguments: dict[str, Any] | None = None,
                dispatch: bool = True) -> Consumer: ...

    def cancel(self, session: Session, consumer_tag: str) -> None: ...

    def get(self, session: Session, queue_name: str, *,
            no_ack: bool = False) -> Delivery | None: ...

    def close_connection(self, connection_id: str) -> None: ...

    # -- numbers
    def statistics(self, vhosts: set[str] | None = None) -> BrokerStatistics: ...

    def queue_statistics(self, vhost: str, name: str) -> QueueStatistics: ...

    def stream_statistics(self, vhost: str, name: str) -> StreamStatistics: ...

    # streams: named readers' committed offsets

    def commit_offset(self, vhost: str, stream: str, reader: str, offset: int,
                      metadata: str | None = None) -> None: ...

    def find_reader(self, vhost: str, stream: str, reader: str) -> tuple[int, str] | None: ...

    def list_readers(self, vhost: str, stream: str) -> list[str]: ...

    def forget_reader(self, vhost: str, stream: str, reader: str) -> None: ...

    # streams as Kafka partitions

    def append_batch(self, vhost: str, stream: str, batch: bytes, count: int) -> int: ...

    def read_batches(self, vhost: str, stream: str, offset: int, max_bytes: int
                     ) -> list[bytes]: ...

    def stream_bounds(self, vhost: str, stream: str) -> tuple[int, int]: ...

    def stream_offset_at(self, vhost: str, stream: str, timestamp_ms: int
                         ) -> tuple[int, int]: ...

    def wait_for_records(self, vhost: str, stream: str) -> asyncio.Future[None]: ...

    def queue_histograms(self, vhost: str, name: str) -> tuple[Histogram, Histogram]: ...

    def held_bytes(self) -> int: ...

    def quarantined(self) -> list[QuarantinedRecord]: ...

    def drop_quarantined(self, ident: str) -> None: ...

    async def key_status(self) -> KeyStatus: ...

    async def rotate_keys(self) -> Rotated: ...
