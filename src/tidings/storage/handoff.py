"""Work handed from the event loop's thread to one writer thread, and futures resolved back.

Both durable stores (SQLite for queues, segment files for streams) keep the loop free of
disk waits the same way: the loop hands batches over, one thread takes *everything* handed
since its last round, does the slow part once (a commit, an fdatasync), and resolves the
round's futures on their loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[T] = []
        #: Set by :meth:`close`: the writer ends once it has taken what is left.
        self.closing = False

    def put(self, item: T) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def take(self) -> list[T] | None:
        """Everything handed over since the last call (waits for some); None once closed
        and empty: the writer's signal to stop."""
        with self._cond:
            while not self._items and not self.closing:
                self._cond.wait()
            batch, self._items = self._items, []
        return batch or None

    def pause(self, seconds: float) -> None:
        """Sleep in the writer (a retry's backoff); a close wakes it."""
        with self._cond:
            self._cond.wait(seconds)

    def close(self) -> None:
        with self._cond:
            self.closing = True
            self._cond.notify()


def resolve(futures: Iterable[asyncio.Future[None]], error: BaseException | None) -> None:
    """From the writer thread: settle ``futures`` on their own loops (with ``error``, if
    the round failed)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for f in futures:
        by_loop.setdefault(f.get_loop(), []).append(f)
    for loop, fs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop has nobody waiting
            loop.call_soon_threadsafe(_settle, fs, error)


def _settle(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for f in futures:
        if f.done():
            continue
        if error is None:
            f.set_result(None)
        else:
            f.set_exception(error)
