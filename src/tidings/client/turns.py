"""What one loop turn asks for, handed on together once the turn ends.

The calls an application makes at once (an ``asyncio.gather`` of sends, a producer's burst)
all run in one turn of the event loop before any of them waits. A transport whose engine takes
many messages in one request collects them here, per key (a topic, an exchange), and sends
each key's items as one list when the turn is over; each caller waits on a future of its own
item's outcome, so one item can fail alone. The Kafka outbox and the AMQP transport's batches
to a tidings server both gather this way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: One outcome per item sent: None when it was taken, else why not.
Outcomes = list[BaseException | None]


class TurnBatches(Generic[K, V]):
    """Items added in one loop turn, sent per key by ``send(key, items)`` after it."""

    def __init__(self, send: Callable[[K, list[V]], Awaitable[Outcomes]]) -> None:
        self._send = send
        self._pending: dict[K, list[tuple[V, asyncio.Future[None]]]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, key: K, item: V) -> asyncio.Future[None]:
        """Queue ``item``; the future is done with its outcome."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.setdefault(key, []).append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for key, entries in pending.items():
            task = asyncio.ensure_future(self._deliver(key, entries))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, key: K, entries: list[tuple[V, asyncio.Future[None]]]) -> None:
        try:
            outcomes = await self._send(key, [item for item, _ in entries])
        except asyncio.CancelledError:
            for _, future in entries:
                future.cancel()
            raise
        except Exception as e:  # the whole batch failed (a connection, a channel)
            outcomes = [e] * len(entries)
        for (_, future), outcome in zip(entries, outcomes, strict=True):
            if future.done():
                continue
            if outcome is None:
                future.set_result(None)
            else:
                future.set_exception(outcome)
