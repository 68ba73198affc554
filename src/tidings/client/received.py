"""What a consumer holds: :class:`ReceivedMessage` (settle it once) and :class:`Receiver`
(an open consumer on one queue, an async iterator and an async context manager).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tidings.client.transport import Delivery, Subscription, Transport
from tidings.errors import InvalidArgumentError
from tidings.message import Message


class MessageView:
    """What user code reads of a delivered message: body, text, JSON, headers, id, topic."""

    __slots__ = ("_incoming",)

    def __init__(self, incoming: Delivery) -> None:
        self._incoming = incoming

    @property
    def body(self) -> bytes:
        return self._incoming.message.body

    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def headers(self) -> dict[str, Any]:
        return self._incoming.message.headers or {}

    @property
    def id(self) -> str | None:
        return self._incoming.message.message_id

    @property
    def routing_key(self) -> str:
        return self._incoming.message.routing_key

    @property
    def topic(self) -> str:
        """The event's topic (for queue messages: the queue name it was sent to)."""
        return self._incoming.message.routing_key

    @property
    def content_type(self) -> str | None:
        return self._incoming.message.content_type

    @property
    def delivery(self) -> Delivery:
        """The delivery as the transport handed it over."""
        return self._incoming


class ReceivedMessage(MessageView):
    """A message handed to you by a queue or a subscription. Settle it once."""

    __slots__ = ("_transport", "settled")

    def __init__(self, transport: Transport, incoming: Delivery) -> None:
        self._transport, self._incoming = transport, incoming
        self.settled = False

    @property
    def queue(self) -> str:
        return self._incoming.queue

    @property
    def priority(self) -> int | None:
        return self._incoming.message.priority

    @property
    def redelivered(self) -> bool:
        return self._incoming.redelivered

    @property
    def delivery_count(self) -> int:
        """Deliveries so far, this one included (1 on the first delivery)."""
        return self._incoming.delivery_count + 1

    @property
    def timestamp(self) -> float | None:
        ts = self._incoming.message.timestamp
        return None if ts is None else float(ts)

    @property
    def message(self) -> Message:
        return self._incoming.message

    def take_token(self) -> Any:
        """Mark it settled and return what its transport settles it by (``client.ack``
        settles a batch this way); raises when it was settled already."""
        if self.settled:
            raise InvalidArgumentError(f"message {self.id!r} is already settled")
        self.settled = True
        return self._incoming.delivery_tag

    async def ack(self) -> None:
        """Done with it: the message is gone for good."""
        await self._transport.ack([self.take_token()])

    async def nack(self, requeue: bool = True, delay_ms: int | None = None) -> None:
        """Failed: back to its place in the queue (after ``delay_ms``), or dead-lettered."""
        await self._transport.nack(self.take_token(), requeue, delay_ms)

    async def reject(self) -> None:
        """Refuse it for good: it is dead-lettered (or dropped when the queue has none)."""
        await self._transport.nack(self.take_token(), False)

    async def extend(self) -> None:
        """Still working on it: restart its consumer-timeout clock."""
        await self._transport.extend(self._incoming.delivery_tag)

    def __repr__(self) -> str:
        return f"<ReceivedMessage id={self.id!r} topic={self.topic!r} bytes={len(self.body)}>"


#: A handler, or the rest of a middleware chain: called with a message, awaited.
CallNext = Callable[[ReceivedMessage], Awaitable[Any]]


class Receiver:
    """An open consumer on one queue: an async iterator and an async context manager.

    ``async for message in receiver`` hands out one message at a time;
    ``async for batch in receiver.batches(100)`` hands out lists of whatever has arrived (at
    least one, at most 100), which is cheaper per message. Settle each message either way, or
    use ``client.ack(batch)``.
    """

    def __init__(self, transport: Transport, queue: str, prefetch: int, *,
                 declare: Callable[[str], Awaitable[None]],
                 closed: Callable[[Receiver], None]) -> None:
        """``declare`` makes sure the queue exists before consuming; ``closed`` is told when
        the receiver closes (its owner stops tracking it)."""
        self._transport, self.queue, self.prefetch = transport, queue, prefetch
        self._declare, self._on_close = declare, closed
        buffer: deque[Delivery] = deque()
        self._buffer = buffer
        self._waiter: asyncio.Future[None] | None = None
        self._subscription: Subscription | None = None
        self._closed = False

        # The transport's callback: one delivery at a time, or a list (``.many``).
        def arrived(incoming: Delivery) -> None:
            buffer.append(incoming)
            self._wake()

        def arrived_many(incoming: list[Delivery]) -> None:
            buffer.extend(incoming)
            self._wake()

        arrived.many = arrived_many  # type: ignore[attr-defined]
        self._arrived: Callable[[Delivery], None] = arrived

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _start(self) -> None:
        if self._subscription is None and not self._closed:
            await self._declare(self.queue)
            self._subscription = await self._transport.consume(
                self.queue, self.prefetch, self._arrived)

    async def _wait(self) -> None:
        """Until a message is buffered; StopAsyncIteration once the receiver is closed."""
        if self._subscription is None:
            await self._start()
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def __aiter__(self) -> Receiver:
        return self

    async def __anext__(self) -> ReceivedMessage:
        if self._closed:
            raise StopAsyncIteration
        if not self._buffer:
            await self._wait()
        return ReceivedMessage(self._transport, self._buffer.popleft())

    async def batches(self, max_count: int = 100) -> AsyncIterator[list[ReceivedMessage]]:
        """Lists of received messages: waits for the first, then takes up to ``max_count``
        of those already here (never more than ``prefetch``, which bounds the buffer)."""
        if max_count < 1:
            raise InvalidArgumentError(f"max_count must be >= 1, got {max_count}")
        transport, buffer = self._transport, self._buffer
        while not self._closed:
            try:
                await self._wait()
            except StopAsyncIteration:
                return
            n = min(max_count, len(buffer))
            yield [ReceivedMessage(transport, buffer.popleft()) for _ in range(n)]

    async def __aenter__(self) -> Receiver:
        await self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop receiving; messages not yet handed out go back to the queue."""
        if self._closed:
            return
        self._closed = True
        self._wake()  # a consumer waiting in another task stops iterating
        self._on_close(self)
        if self._subscription is not None:
            await self._subscription.cancel()
        while self._buffer:
            await self._transport.nack(self._buffer.popleft().delivery_tag, True)


class Inbox:
    """Deliveries waiting for a subscription's workers: a deque that the transport fills
    (one at a time with ``put``, or a list with ``put.many``) and workers drain, waiting on
    a future only when it is empty. Cheaper per event than an ``asyncio.Queue``."""

    def __init__(self) -> None:
        items: deque[Delivery] = deque()
        waiters: deque[asyncio.Future[None]] = deque()
        self.items, self._waiters = items, waiters
        self.closed = False

        def put(delivery: Delivery) -> None:
            items.append(delivery)
            if waiters:
                self._wake(1)

        def put_many(deliveries: list[Delivery]) -> None:
            items.extend(deliveries)
            if waiters:
                self._wake(len(deliveries))

        put.many = put_many  # type: ignore[attr-defined]
        #: The transport's callback.
        self.put: Callable[[Delivery], None] = put

    def _wake(self, n: int) -> None:
        waiters = self._waiters
        while n and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                n -= 1

    async def wait(self) -> None:
        """Until something is in, or the inbox is closed."""
        if not self.items and not self.closed:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def close(self) -> None:
        """Wake every waiter (for good: :meth:`wait` returns at once from now on)."""
        self.closed = True
        self._wake(len(self._waiters))

    async def get(self) -> Delivery:
        items = self.items
        while not items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        return items.popleft()
