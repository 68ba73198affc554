"""ResilientTransport: a transport that comes back after its connection is lost.

It wraps a transport made by an ``open_inner`` function (an AMQP connection to a URL, or the
way into a shared data directory) and, when that connection closes without being asked to,
opens a new one with backoff (0.1 s doubling to 5 s), then replays what the client had set up:
queue declarations, event bindings and consumers, in that order. What happens to work in
flight, as the peers with robust connections do it (aio-pika, Celery) and a little stricter:

- A send whose confirm did not arrive is sent again on the new connection with the same
  message ids, so it is never silently lost; a consumer may see it twice (at least once) and
  can drop the duplicate by id. After ``send_retry_s`` without a connection it raises
  :class:`~tidings.errors.BrokenResourceError`.
- Deliveries of the old connection cannot be settled any more: their acks and nacks are
  dropped (the broker returns those messages, marked redelivered, to the queue).
- A private (server-named, exclusive) queue dies with its connection; it is declared anew and
  keeps its first name inside the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tidings.client.transport import Capabilities, Delivery, QueueSpec, StreamSpec
from tidings.errors import BrokenResourceError, ClosedResourceError
from tidings.message import Message
from tidings.stream_starts import OFFSET, READER
from tidings.transitions import TransitionCommit

log = logging.getLogger("tidings.client")

#: Seconds an operation waits for a lost connection to come back before it raises.
SEND_RETRY_S = 30.0
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0

OpenInner = Callable[[], Awaitable[Any]]


async def _lost(inner: Any) -> bool:
    """Whether ``inner``'s connection is gone (given a moment to notice it)."""
    closing = getattr(inner, "closing", None)
    if closing is None:
        return False
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(asyncio.shield(closing), BACKOFF_MIN_S * 5)
    return closing.done()


class _Stamped:
    """The inner transport's token stamped with the connection it came on: settling one of
    an earlier connection does nothing (that delivery went back to the queue when the
    connection was lost)."""

    __slots__ = ("generation", "inner")

    def __init__(self, generation: int, inner: Any) -> None:
        self.generation, self.inner = generation, inner


class _Consumer:
    def __init__(self, owner: ResilientTransport, queue: str, prefetch: int,
                 on_message: Callable[[Delivery], None],
                 arguments: dict[str, Any] | None = None) -> None:
        self.owner, self.queue, self.prefetch, self.on_message = owner, queue, prefetch, on_message
        self.arguments = dict(arguments) if arguments else None
        self.inner: Any = None

    async def start(self, transport: Any, generation: int) -> None:
        on_message, arguments = self.on_message, self.arguments

        def stamp(incoming: Delivery) -> None:
            incoming.delivery_tag = _Stamped(generation, incoming.delivery_tag)
            if arguments is not None:  # a stream reader resumes after what it was handed
                offset = (incoming.message.headers or {}).get(OFFSET)
                if isinstance(offset, int):
                    arguments[OFFSET] = offset + 1
                    arguments.pop(READER, None)  # resume here, not at a commit

        def deliver(incoming: Delivery) -> None:
            stamp(incoming)
            on_message(incoming)

        if (many := getattr(on_message, "many", None)) is not None:
            def deliver_many(incoming: list[Delivery]) -> None:
                for delivery in incoming:
                    stamp(delivery)
                many(incoming)

            deliver.many = deliver_many  # type: ignore[attr-defined]

        if arguments is None:
            self.inner = await transport.consume(self.owner.name(self.queue), self.prefetch,
                                                 deliver)
        else:
            self.inner = await transport.consume(self.owner.name(self.queue), self.prefetch,
                                                 deliver, dict(arguments))

    async def cancel(self) -> None:
        self.owner._consumers.discard(self)
        if self.inner is not None:
            with contextlib.suppress(Exception):
                await self.inner.cancel()


class ResilientTransport:
    def __init__(self, open_inner: OpenInner, *, send_retry_s: float = SEND_RETRY_S) -> None:
        self._open_inner = open_inner
        self.send_retry_s = send_retry_s
        self._inner: Any = None
        self._generation = 0
        self._connected = asyncio.Event()
        self._closed = False
        self._watcher: asyncio.Task[None] | None = None
        self._declared: dict[str, QueueSpec] = {}
        self._renamed: dict[str, str] = {}
        self._bindings: list[tuple[str, str]] = []
        self._consumers: set[_Consumer] = set()
        #: Connections lost and made again so far.
        self.reconnects = 0
        #: Set by a client that is stopping: a connection the broker closes meanwhile (its
        #: own clean shutdown, as when processes sharing a directory stop together) is no news.
        self.stopping = False

    @property
    def capabilities(self) -> Capabilities:
        return self._inner.capabilities

    @property
    def inner(self) -> Any:
        return self._inner

    @property
    def broker_in_process(self) -> bool:
        """True once this process owns the directory it reached through another's socket."""
        return bool(getattr(self._inner, "broker_in_process", False))

    async def open(self, first: Any = None) -> ResilientTransport:
        """Connect (or start from ``first``, a transport ``open_inner`` already made)."""
        self._inner = first if first is not None else await self._open_inner()
        self._generation = 1
        self._connected.set()
        self._watch()
        return self

    def _watch(self) -> None:
        closing = getattr(self._inner, "closing", None)
        if closing is not None:
            self._watcher = asyncio.get_running_loop().create_task(self._reconnect_after(closing))

    async def _reconnect_after(self, closing: Awaitable[Any]) -> None:
        reason: object = "closed"
        try:
            await closing
        except BaseException as e:
            reason = e
        if self._closed:
            return
        self._connected.clear()
        if self.stopping:
            log.info("the broker closed the connection while this client was stopping (%s)",
                     reason)
        elif "CONNECTION_FORCED" in str(reason):
            log.warning("the broker shut down (%s); reconnecting", reason)
        else:
            log.warning("connection to the broker lost (%s); reconnecting", reason)
        delay = BACKOFF_MIN_S
        while not self._closed:
            try:
                inner = await self._open_inner()
                await self._replay(inner, self._generation + 1)
            except Exception as e:
                log.info("reconnect failed (%s); next try in %.1f s", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            old, self._inner = self._inner, inner
            with contextlib.suppress(Exception):
                await old.close()
            self._generation += 1
            self.reconnects += 1
            self._connected.set()
            # (while stopping, a reconnect only lets the work in flight finish: no news)
            (log.info if self.stopping else log.warning)("reconnected to the broker")
            self._watch()
            return

    async def _replay(self, inner: Any, generation: int) -> None:
        for first, spec in self._declared.items():
            name = await inner.declare_queue("" if spec.exclusive else first, spec)
            if name != first:
                self._renamed[first] = name
        for queue, pattern in self._bindings:
            await inner.bind_events(self.name(queue), pattern)
        for consumer in list(self._consumers):
            await consumer.start(inner, generation)

    def name(self, queue: str) -> str:
        """The queue's name on the current connection (a private queue's changes)."""
        return self._renamed.get(queue, queue)

    async def _run(self, operation: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run ``operation`` on the current connection; if the connection breaks under it,
        wait for the next one and run it again (bounded by ``send_retry_s``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.send_retry_s
        while True:
            if self._closed:
                raise ClosedResourceError("the client is closed")
            if not self._connected.is_set():
                try:
                    await asyncio.wait_for(self._connected.wait(),
                                           max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise BrokenResourceError(
                        f"no connection to the broker for {self.send_retry_s:.0f} s") from None
            inner = self._inner
            try:
                return await operation(inner)
            except BrokenResourceError:
                if loop.time() >= deadline or self._closed or not await _lost(inner):
                    raise  # (not the connection: e.g. a management API that did not answer)
                if inner is self._inner:  # the watcher has not noticed yet
                    self._connected.clear()
                    await asyncio.sleep(BACKOFF_MIN_S)

    # -- the Transport protocol --------------------------------------------------------------

    async def declare_queue(self, name: str, spec: QueueSpec) -> str:
        declared = await self._run(lambda t: t.declare_queue(name, spec))
        self._declared[declared] = spec
        return declared

    async def queue_exists(self, name: str) -> bool:
        return await self._run(lambda t: t.queue_exists(self.name(name)))

    async def declare_stream(self, name: str, spec: StreamSpec) -> None:
        await self._run(lambda t: t.declare_stream(name, spec))

    async def commit_offset(self, stream: str, reader: str, offset: int) -> None:
        await self._run(lambda t: t.commit_offset(stream, reader, offset))

    async def bind_events(self, queue: str, pattern: str) -> None:
        await self._run(lambda t: t.bind_events(self.name(queue), pattern))
        self._bindings.append((queue, pattern))

    async def send(self, queue: str, messages: Sequence[Message],
                   delay_ms: int | None = None) -> None:
        await self._run(lambda t: t.send(self.name(queue), messages, delay_ms))

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        await self._run(lambda t: t.publish(topic, messages))

    async def get(self, queue: str) -> Delivery | None:
        incoming = await self._run(lambda t: t.get(self.name(queue)))
        if incoming is not None:
            incoming.delivery_tag = _Stamped(self._generation, incoming.delivery_tag)
        return incoming

    async def consume(self, queue: str, prefetch: int,
                      on_message: Callable[[Delivery], None],
                      arguments: dict[str, Any] | None = None) -> _Consumer:
        consumer = _Consumer(self, queue, prefetch, on_message, arguments)
        await self._run(lambda t: consumer.start(t, self._generation))
        self._consumers.add(consumer)
        return consumer

    def _current(self, tokens: Sequence[Any]) -> list[Any]:
        """The inner tokens of deliveries made on the current connection."""
        generation = self._generation
        return [t.inner for t in tokens if t.generation == generation]

    async def ack(self, tokens: Sequence[Any]) -> None:
        current = self._current(tokens)
        if current and self._connected.is_set():
            with contextlib.suppress(BrokenResourceError):
                await self._inner.ack(current)

    async def nack(self, token: Any, requeue: bool, delay_ms: int | None = None) -> None:
        if token.generation == self._generation and self._connected.is_set():
            with contextlib.suppress(BrokenResourceError):
                await self._inner.nack(token.inner, requeue, delay_ms)

    async def extend(self, token: Any) -> None:
        if token.generation == self._generation:
            await self._inner.extend(token.inner)

    async def browse(self, queue: str, limit: int) -> list[Message]:
        return await self._run(lambda t: t.browse(self.name(queue), limit))

    async def delete(self, queue: str, message_id: str) -> bool:
        return await self._run(lambda t: t.delete(self.name(queue), message_id))

    async def purge(self, queue: str) -> int:
        return await self._run(lambda t: t.purge(self.name(queue)))

    async def dead_letters(self, queue: str, limit: int) -> list[Message]:
        return await self._run(lambda t: t.dead_letters(queue, limit))

    async def replay_dead_letters(self, queue: str, ids: set[str] | None) -> int:
        return await self._run(lambda t: t.replay_dead_letters(queue, ids))

    async def sync(self) -> None:
        await self._run(lambda t: t.sync())

    async def statistics(self) -> Any:
        return await self._run(lambda t: t.statistics())

    async def commit_transition(self, token: Any, commit: TransitionCommit) -> None:
        if token is None:
            await self._run(lambda t: t.commit_transition(None, commit))
            return
        if token.generation != self._generation or not self._connected.is_set():
            # (never sent again on a new connection: the broker gives the event again)
            raise BrokenResourceError("the connection that delivered the event is gone; the "
                                      "broker delivers it again")
        await self._inner.commit_transition(token.inner, commit)

    async def find_instance(self, machine: str, key: str) -> bytes | None:
        return await self._run(lambda t: t.find_instance(machine, key))  # type: ignore[no-any-return]

    async def list_instances(self, machine: str) -> list[tuple[str, bytes]]:
        return await self._run(lambda t: t.list_instances(machine))  # type: ignore[no-any-return]

    async def describe_machine(self, machine: str, description: bytes) -> None:
        await self._run(lambda t: t.describe_machine(machine, description))

    async def close(self) -> None:
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(BaseException):
                await self._watcher
        if self._inner is not None:
            await self._inner.close()
