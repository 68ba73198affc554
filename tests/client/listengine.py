"""An engine of lists, for the engine core's own tests: the smallest thing that implements
every verb of :class:`tidings.client.engine.Engine`, in memory, with no rule of its own.

That it passes the transport conformance suite under :class:`EngineTransport` shows that the
delivery rules live in the core, and what a new engine (Kafka's) has to provide. ``fail``
lets a test make one verb raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace

from tidings.client.engine import stream_statistics
from tidings.client.remote import QueueRules, broker_statistics, queue_statistics
from tidings.client.tokens import Stored, Token
from tidings.client.transport import Capabilities, QueueSpec, StreamSpec
from tidings.errors import NotFoundError, PreconditionFailedError
from tidings.message import Message
from tidings.patterns import topic_matches
from tidings.statistics import BrokerStatistics, StreamStatistics
from tidings.stream_starts import Start


@dataclass
class _Entry:
    id: int
    message: Message
    failures: int
    enqueued_ms: float
    due_ms: float = 0.0


@dataclass
class _Queue:
    rules: QueueRules
    ready: list[_Entry] = field(default_factory=list)
    held: dict[int, _Entry] = field(default_factory=dict)
    delayed: list[_Entry] = field(default_factory=list)


class _Reader:
    def __init__(self, engine: ListEngine, queue: str, room: Callable[[], int],
                 arrived: Callable[[Token], None]) -> None:
        self.engine, self.queue, self.room, self.arrived = engine, queue, room, arrived
        self._wake = asyncio.Event()
        self.stopped = False  # (Python 3.11's wait_for can swallow a cancellation)
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self.stopped:
            n = self.room()
            taken = self.engine.take(self.queue, n) if n > 0 else []
            for token in taken:
                self.arrived(token)
            if not taken:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.01)

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self.stopped = True
        self.task.cancel()
        await asyncio.wait([self.task])


class _StreamReader(_Reader):
    def __init__(self, engine: ListEngine, stream: str, at: int, room: Callable[[], int],
                 arrived: Callable[[Token], None]) -> None:
        self.at = at
        super().__init__(engine, stream, room, arrived)

    async def _run(self) -> None:
        records = self.engine.streams[self.queue]
        while not self.stopped:
            n = min(self.room(), len(records) - self.at)
            for offset in range(self.at, self.at + max(0, n)):
                message, appended_ms = records[offset]
                copy = replace(message, headers={**(message.headers or {}),
                                                 "x-stream-offset": offset})
                self.arrived(Token(self.queue, copy, 0, appended_ms, None))
            self.at += max(0, n)
            if n <= 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.01)


class ListEngine:
    """Queues as lists; a delivery is held until settled or rewritten."""

    def __init__(self) -> None:
        self.capabilities = Capabilities("a list engine", latency_statistics=False,
                                         priorities=False)
        self.queues: dict[str, _Queue] = {}
        #: stream -> its records (offset = index) with their append times, ms
        self.streams: dict[str, list[tuple[Message, float]]] = {}
        self.readers: dict[tuple[str, str], int] = {}
        self.logs = _Logs(self)
        self.bindings: list[tuple[str, str]] = []
        self.renewed: list[int] = []
        #: verb name -> the exception it raises next (once)
        self.fail: dict[str, BaseException] = {}
        self._ids = itertools.count(1)

    def _check(self, verb: str) -> None:
        if verb in self.fail:
            raise self.fail.pop(verb)

    def _queue(self, name: str) -> _Queue:
        found = self.queues.get(name)
        if found is None:
            raise NotFoundError(f"no queue '{name}' in the list engine")
        return found

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def create_queue(self, name: str, spec: QueueSpec, rules: QueueRules) -> None:
        found = self.queues.setdefault(name, _Queue(rules))
        if found.rules != rules:
            raise PreconditionFailedError(f"queue '{name}' exists with other rules")

    async def read_rules(self, name: str) -> QueueRules:
        return self._queue(name).rules

    async def bind(self, queue: str, pattern: str, rules: QueueRules) -> None:
        self.bindings.append((pattern, queue))

    def _put(self, queue: str, message: Message, failures: int, due_ms: int | None) -> None:
        q = self._queue(queue)
        entry = _Entry(next(self._ids), message, failures, time.time() * 1000, due_ms or 0)
        (q.delayed if due_ms else q.ready).append(entry)

    async def append(self, queue: str, messages: Sequence[Message],
                     due_ms: int | None) -> None:
        self._check("append")
        self._queue(queue)
        for message in messages:
            self._put(queue, message, 0, due_ms)

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        for pattern, queue in self.bindings:
            if topic_matches(pattern, topic):
                for message in messages:
                    self._put(queue, replace(message), 0, None)

    def take(self, queue: str, n: int) -> list[Token]:
        q = self._queue(queue)
        now = time.time() * 1000
        for entry in [e for e in q.delayed if e.due_ms <= now]:
            q.delayed.remove(entry)
            q.ready.append(entry)
        taken, q.ready = q.ready[:n], q.ready[n:]
        q.held.update((e.id, e) for e in taken)
        return [Token(queue, e.message, e.failures, e.enqueued_ms, e.id) for e in taken]

    async def reader(self, queue: str, room: Callable[[], int],
                     arrived: Callable[[Token], None]) -> _Reader:
        return _Reader(self, queue, room, arrived)

    async def read_one(self, queue: str) -> Token | None:
        taken = self.take(queue, 1)
        return taken[0] if taken else None

    async def settle(self, tokens: Sequence[Token]) -> None:
        for token in tokens:
            self._queue(token.queue).held.pop(token.handle, None)

    async def rewrite(self, token: Token, queue: str, message: Message, failures: int,
                      due_ms: int | None) -> None:
        self._check("rewrite")
        self._put(queue, message, failures, due_ms)
        self._queue(token.queue).held.pop(token.handle, None)

    async def renew(self, tokens: Sequence[Token]) -> None:
        self.renewed.extend(t.handle for t in tokens)

    async def scan(self, queue: str, delayed: bool = False) -> AsyncIterator[Stored]:
        q = self._queue(queue)
        for entry in [*q.ready, *(q.delayed if delayed else [])]:
            yield Stored(entry.message, entry.id)

    async def remove(self, queue: str, stored: Stored) -> bool:
        q = self._queue(queue)
        for entries in (q.ready, q.delayed):
            for entry in entries:
                if entry.id == stored.handle:
                    entries.remove(entry)
                    return True
        return False

    async def restore(self, stored: Stored, queue: str, message: Message) -> None:
        self._put(queue, message, 0, None)
        for q in self.queues.values():
            q.ready[:] = [e for e in q.ready if e.id != stored.handle]

    async def purge(self, queue: str) -> int:
        q = self._queue(queue)
        count, q.ready = len(q.ready), []
        return count

    async def statistics(self) -> BrokerStatistics:
        return broker_statistics([
            queue_statistics("/", name, ready=len(q.ready), unacked=len(q.held),
                             delayed=len(q.delayed), consumers=0)
            for name, q in sorted(self.queues.items())])

    async def sync(self) -> None:
        pass


class _Logs:
    """The list engine's streams."""

    def __init__(self, engine: ListEngine) -> None:
        self.engine = engine

    async def create(self, name: str, spec: StreamSpec) -> None:
        self.engine.streams.setdefault(name, [])

    async def exists(self, name: str) -> bool:
        return name in self.engine.streams

    async def append(self, stream: str, messages: Sequence[Message]) -> None:
        self.engine.streams[stream].extend((m, time.time() * 1000) for m in messages)

    async def reader(self, stream: str, start: Start, room: Callable[[], int],
                            arrived: Callable[[Token], None]) -> _StreamReader:
        records = self.engine.streams[stream]
        kind, n = start
        at = {"first": 0, "last": max(0, len(records) - 1), "next": len(records)}.get(kind)
        if kind == "offset":
            at = min(n, len(records))
        elif kind == "time":
            at = next((i for i, (_, t) in enumerate(records) if t >= n), len(records))
        assert at is not None
        return _StreamReader(self.engine, stream, at, room, arrived)

    async def end(self, stream: str) -> int:
        return len(self.engine.streams[stream])

    async def commit(self, stream: str, reader: str, offset: int) -> None:
        self.engine.readers[stream, reader] = offset

    async def committed(self, stream: str, reader: str) -> int | None:
        return self.engine.readers.get((stream, reader))

    async def statistics(self) -> list[StreamStatistics]:
        return [stream_statistics(
            name, records=len(records), size=sum(len(m.body) for m, _ in records), first=0,
            end=len(records), first_ms=records[0][1] if records else None,
            last_ms=records[-1][1] if records else None, max_bytes=None, max_age_s=None,
            readers=[(reader, offset, records[offset + 1][1] if offset + 1 < len(records)
                      else None) for (s, reader), offset in self.engine.readers.items()
                     if s == name])
            for name, records in sorted(self.engine.streams.items())]
