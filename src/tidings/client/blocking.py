"""A blocking facade over :class:`~tidings.client.client.Client` for scripts and workers.

The async client runs on an event loop in a background thread; every method here hands a
coroutine to it and waits for the result. Received messages are wrapped so that ``ack()``,
``nack()`` and ``reject()`` block too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from tidings.client.client import Client, ReceivedMessage

T = TypeVar("T")


class BlockingMessage:
    """A :class:`ReceivedMessage` whose settling calls block."""

    def __init__(self, owner: BlockingClient, message: ReceivedMessage) -> None:
        self._owner, self.message = owner, message

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)

    def json(self) -> Any:
        return self.message.json()

    def ack(self) -> None:
        self._owner._call(self.message.ack())

    def nack(self, requeue: bool = True, delay_ms: int | None = None) -> None:
        self._owner._call(self.message.nack(requeue, delay_ms))

    def reject(self) -> None:
        self._owner._call(self.message.reject())

    def extend(self) -> None:
        self._owner._call(self.message.extend())


class BlockingClient:
    """``with tidings.connect_blocking("./data") as client: client.send("jobs", {...})``."""

    def __init__(self, client: Client) -> None:
        """Opens ``client`` (not yet open) on a loop of its own, in a thread."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tidings-client",
                                        daemon=True)
        self._thread.start()
        self.client: Client = self._call(client.open())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def declare_queue(self, name: str, **options: Any) -> str:
        return self._call(self.client.declare_queue(name, **options))

    def send(self, queue: str, body: Any, **options: Any) -> str:
        return self._call(self.client.send(queue, body, **options))

    def send_many(self, queue: str, bodies: Iterable[Any], **options: Any) -> list[str]:
        return self._call(self.client.send_many(queue, list(bodies), **options))

    def publish(self, topic: str, event: Any, **options: Any) -> str:
        return self._call(self.client.publish(topic, event, **options))

    def get(self, queue: str) -> BlockingMessage | None:
        message = self._call(self.client.get(queue))
        return None if message is None else BlockingMessage(self, message)

    def receive(self, queue: str, *, prefetch: int = 100,
                timeout_s: float | None = None) -> Iterator[BlockingMessage]:
        """Messages as they come; stops after ``timeout_s`` without one (None: never)."""
        iterator = self.client.receive(queue, prefetch=prefetch)
        try:
            while True:
                try:
                    message = self._call(asyncio.wait_for(iterator.__anext__(), timeout_s))
                except TimeoutError:
                    return
                yield BlockingMessage(self, message)
        finally:
            self._call(iterator.aclose())

    def delete(self, queue: str, message_id: str) -> bool:
        return self._call(self.client.delete(queue, message_id))

    def dead_letters(self, queue: str, limit: int = 100) -> list[Any]:
        return self._call(self.client.dead_letters(queue, limit))

    def replay_dead_letters(self, queue: str, ids: Iterable[str] | None = None) -> int:
        return self._call(self.client.replay_dead_letters(queue, ids))

    def purge_dead_letters(self, queue: str) -> int:
        return self._call(self.client.purge_dead_letters(queue))

    def purge(self, queue: str) -> int:
        return self._call(self.client.purge(queue))

    def request(self, queue: str, body: Any, **options: Any) -> Any:
        return self._call(self.client.request(queue, body, **options))

    def statistics(self) -> Any:
        return self._call(self.client.statistics())
