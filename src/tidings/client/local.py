"""LocalTransport: the client over an in-process :class:`~tidings.routing.front_door.FrontDoor`.

No sockets, no copies: the client's calls become broker calls on the same event loop. Sends wait
on the broker's group commit, so ``await send`` returns once the message is durable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tidings.client.transport import (
    EVENTS_EXCHANGE,
    Capabilities,
    QueueSpec,
    StreamSpec,
)
from tidings.dead_letters import dead_letter_queue
from tidings.errors import InvalidArgumentError, NotFoundError, PreconditionFailedError
from tidings.message import Delivery, Message
from tidings.routing.front_door import DEFAULT_VHOST, Consumer, FrontDoor
from tidings.transitions import TransitionCommit
from tidings.values import MAX_MESSAGE_BYTES

VHOST = DEFAULT_VHOST


def spec_arguments(name: str, spec: QueueSpec) -> dict[str, Any]:
    """RabbitMQ-style queue arguments for a :class:`QueueSpec` (an AMQP adapter can reuse it)."""
    args: dict[str, Any] = dict(spec.arguments)
    pairs = (
        ("x-delivery-limit", spec.delivery_limit),
        ("x-max-length", spec.max_length),
        ("x-max-priority", spec.max_priority),
        ("x-message-ttl", spec.message_ttl_ms),
        ("x-consumer-timeout", spec.consumer_timeout_ms),
    )
    args.update({k: v for k, v in pairs if v is not None})
    if spec.dead_letters:
        args.setdefault("x-dead-letter-exchange", "")
        args.setdefault("x-dead-letter-routing-key", dead_letter_queue(name))
    return args


def local_capabilities(*, durable: bool) -> Capabilities:
    """The embedded broker can do everything; ``memory://`` keeps nothing across a crash."""
    return Capabilities(
        "the embedded broker", durable=durable, machines=True,
        reasons=() if durable else (("durable", "memory:// keeps messages in RAM only; give "
                                                "a data directory for durable ones"),))


class _LocalSubscription:
    def __init__(self, transport: LocalTransport, consumer: Consumer) -> None:
        self._transport, self._consumer = transport, consumer

    async def cancel(self) -> None:
        self._transport.broker.cancel(self._consumer.session, self._consumer.tag)


class LocalTransport:
    #: The broker runs in this process (the client's handler runner commits a batch's
    #: deliveries before it runs their handlers: a handler that kills the process must count).
    broker_in_process = True

    def __init__(self, broker: FrontDoor, *, owns_broker: bool = True) -> None:
        self.broker = broker
        self._owns = owns_broker
        self._session = broker.open_session(VHOST, connection_id=f"local-{id(self):x}")
        self._events_ready = False
        self.capabilities = local_capabilities(durable=broker.durable)

    async def declare_queue(self, name: str, spec: QueueSpec) -> str:
        args = spec_arguments(name, spec) if name else dict(spec.arguments)
        queue = self.broker.declare_queue(
            VHOST, name, durable=spec.durable and not spec.exclusive, exclusive=spec.exclusive,
            auto_delete=spec.exclusive, arguments=args,
            connection_id=self._session.connection_id,
        )
        if spec.dead_letters and name:
            self.broker.declare_queue(VHOST, dead_letter_queue(name), durable=spec.durable)
        return queue.name

    async def queue_exists(self, name: str) -> bool:
        return self.broker.queue_exists(VHOST, name)

    async def declare_stream(self, name: str, spec: StreamSpec) -> None:
        self.broker.declare_queue(VHOST, name, durable=True, arguments=spec.arguments())

    async def commit_offset(self, stream: str, reader: str, offset: int) -> None:
        self.broker.commit_offset(VHOST, stream, reader, offset)
        await self.broker.sync()

    def _declare_events(self) -> None:
        if not self._events_ready:
            self.broker.declare_exchange(VHOST, EVENTS_EXCHANGE, "topic", durable=True)
            self._events_ready = True

    async def bind_events(self, queue: str, pattern: str) -> None:
        self._declare_events()
        self.broker.bind(VHOST, EVENTS_EXCHANGE, queue, pattern)

    async def send(self, queue: str, messages: Sequence[Message],
                   delay_ms: int | None = None) -> None:
        publish = self.broker.publish
        for message in messages:
            if len(message.body) > MAX_MESSAGE_BYTES:
                _too_large(message)
            message.routing_key = queue
            result = publish(VHOST, "", message, delay_ms=delay_ms)
            if result.refused:
                raise PreconditionFailedError(
                    f"queue '{queue}' in vhost '{VHOST}' refused a message: it is full "
                    f"(x-overflow reject-publish)"
                )
            if not result.routed:
                raise NotFoundError(f"no queue '{queue}' in vhost '{VHOST}'")
        if self.broker.durable:  # memory://: nothing to wait for
            await self.broker.sync()

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        self._declare_events()
        publish = self.broker.publish
        for message in messages:
            if len(message.body) > MAX_MESSAGE_BYTES:
                _too_large(message)
            message.routing_key = topic
            publish(VHOST, EVENTS_EXCHANGE, message)
        await self.broker.sync()

    # Deliveries are the broker's own: one session per transport, so the delivery tag alone
    # settles a message.

    async def get(self, queue: str) -> Delivery | None:
        return self.broker.get(self._session, queue)

    async def consume(self, queue: str, prefetch: int,
                      on_message: Callable[[Delivery], None],
                      arguments: dict[str, Any] | None = None) -> _LocalSubscription:
        consumer = self.broker.consume(self._session, queue, on_message, prefetch_count=prefetch,
                                       arguments=arguments, dispatch=False)
        # A receiver that takes lists gets them (see Transport.consume).
        consumer.on_deliveries = getattr(on_message, "many", None)
        consumer.start()
        return _LocalSubscription(self, consumer)

    async def ack(self, tokens: Sequence[Any]) -> None:
        if len(tokens) == 1:
            self._session.ack(tokens[0])
        else:
            self._session.ack_many(list(tokens))
        if self.broker.write_backlog_exceeded():
            await self.broker.sync()

    async def nack(self, token: Any, requeue: bool, delay_ms: int | None = None) -> None:
        self._session.nack(token, requeue=requeue, delay_ms=delay_ms)

    async def extend(self, token: Any) -> None:
        self._session.extend(token)

    async def browse(self, queue: str, limit: int) -> list[Message]:
        return self.broker.browse(VHOST, queue, limit)

    async def delete(self, queue: str, message_id: str) -> bool:
        await self.broker.sync()  # far delayed messages are listed from committed rows
        return self.broker.take(VHOST, queue, message_id) is not None

    async def dead_letters(self, queue: str, limit: int) -> list[Message]:
        return self.broker.dead_letters(VHOST, queue, limit)

    async def replay_dead_letters(self, queue: str, ids: set[str] | None) -> int:
        replayed = self.broker.replay_dead_letters(VHOST, queue, ids)
        await self.broker.sync()
        return replayed

    async def purge(self, queue: str) -> int:
        return self.broker.purge_queue(VHOST, queue)

    async def sync(self) -> None:
        await self.broker.sync()

    async def statistics(self) -> Any:
        return self.broker.statistics()

    async def commit_transition(self, token: Any, commit: TransitionCommit) -> None:
        self.broker.commit_transition(self._session, token, commit)

    async def find_instance(self, machine: str, key: str) -> bytes | None:
        return self.broker.find_instance(VHOST, machine, key)

    async def list_instances(self, machine: str) -> list[tuple[str, bytes]]:
        return self.broker.list_instances(VHOST, machine)

    async def describe_machine(self, machine: str, description: bytes) -> None:
        self.broker.describe_machine(VHOST, machine, description)

    async def close(self) -> None:
        self._session.close()
        self.broker.close_connection(self._session.connection_id)
        if self._owns:
            await self.broker.sync()
            self.broker.close()


def _too_large(message: Message) -> None:
    """The embedded broker takes no larger message than ``tidings serve`` does."""
    raise InvalidArgumentError(f"message size {len(message.body)} is larger than the "
                               f"maximum message size {MAX_MESSAGE_BYTES}")
