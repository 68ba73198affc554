"""How one process reads one queue on Kafka: a :class:`Cursor` is one aiokafka consumer of the
queue's consumer group over the queue's topics, with a :class:`~tidings.client.kafka_ledger.
Ledger` per partition so that messages are acknowledged one by one.

A cursor is **grouped** when the process consumes the queue: it joins the group, Kafka shares
the partitions among the members of every process, and a member that dies or leaves hands its
partitions on (from the committed offsets). A cursor that only answers gets while nobody
consumes the queue is **alone**: it takes every partition without joining (no rebalance wait)
and commits as Kafka lets a group without members commit.

Readers (the engine core's consumers) ask for room; the cursor fetches at most the room they
have together and hands the records out among them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from tidings.client.kafka_ledger import Ledger, deliveries_before, history
from tidings.client.tokens import Token

log = logging.getLogger("tidings.client.kafka")

#: How often a cursor looks again which topics its queue reads (new bindings, new topics).
FOLLOW_S = 1.0

#: A record as the cursor's owner turns it into a Token (None: skip it, settled), given the
#: token's handle and how often the record was delivered to members that died.
Decode = Callable[[Any, tuple["Cursor", TopicPartition, int, Ledger], int], Token | None]


async def room_or_wait(room: Callable[[], int], wake: asyncio.Event) -> int:
    """The room a reader's consumers have, or 0 once ``wake`` is set or a second passed
    (a loop asks again then)."""
    found = room()
    if found <= 0:
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), 1.0)
    return found


class CursorReader:
    """One consumer's share of a cursor (the core's Reader)."""

    def __init__(self, cursor: Cursor, room: Callable[[], int],
                 arrived: Callable[[Token], None]) -> None:
        self.cursor, self.room, self.arrived = cursor, room, arrived

    def wake(self) -> None:
        self.cursor.wake()

    async def stop(self) -> None:
        await self.cursor.remove(self)


class Cursor(ConsumerRebalanceListener):  # type: ignore[misc]
    """One consumer of a queue's group in this process (see the module)."""

    def __init__(self, consumer: AIOKafkaConsumer, name: str, group: str, grouped: bool,
                 topics: Callable[[bool], Awaitable[list[str]]],
                 partitions: Callable[[list[str]], Awaitable[list[TopicPartition]]],
                 decode: Decode,
                 ends: Callable[[list[TopicPartition]], Awaitable[dict[TopicPartition, int]]],
                 ends_lag: Callable[[], bool],
                 metadata: Callable[[str, list[TopicPartition]],
                                    Awaitable[dict[TopicPartition, str]]],
                 idle: Callable[[Cursor], Awaitable[None]] | None = None) -> None:
        """``idle``: called when the last reader left."""
        self.consumer, self.name, self.grouped = consumer, name, grouped
        self.group = group
        self._metadata, self._idle = metadata, idle
        #: What each partition's last committer said: (handed-out mark, delivery counts).
        self._history: dict[TopicPartition, tuple[int, dict[int, int]]] = {}
        self._topics, self._partitions, self._decode = topics, partitions, decode
        self._ends, self._ends_lag = ends, ends_lag
        self.topics: list[str] = []
        self.ledgers: dict[TopicPartition, Ledger] = {}
        #: Records fetched and not handed out yet, by partition.
        self.buffered: dict[TopicPartition, deque[Any]] = {}
        self._unclaimed: list[Token] = []
        self.readers: list[CursorReader] = []
        self.joined = asyncio.Event()
        self._fetching = asyncio.Lock()
        self._committing = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._followed = 0.0
        self.closed = False
        self._closing: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None

    # -- membership ------------------------------------------------------------------------

    async def start(self) -> Cursor:
        self.topics = sorted(await self._topics(False))
        self._followed = time.monotonic()
        if self.grouped:
            self.consumer.subscribe(self.topics, listener=self)
            await self.consumer.start()
        else:
            await self.consumer.start()
            assigned = await self._partitions(self.topics)
            await self._read_history(assigned)
            self.consumer.assign(assigned)
            self.joined.set()
        return self

    async def _read_history(self, tps: Any) -> None:
        """What the partitions' last committers said of their deliveries."""
        try:
            found = await self._metadata(self.group, list(tps))
        except Exception as e:  # (counts are lost, deliveries are not)
            log.debug("reading the commits of '%s' failed: %r", self.name, e)
            return
        for tp in tps:
            self._history[tp] = history(found.get(tp))

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.commit()
        for tp in revoked:
            self.ledgers.pop(tp, None)  # its open deliveries go to the next owner
            self.buffered.pop(tp, None)
        self._unclaimed = [t for t in self._unclaimed if t.handle[1] not in revoked]
        # a rebalance is often another member that found a new topic: join with it known,
        # or the partitions of that topic all go to the member that found it
        with contextlib.suppress(Exception):
            await self.follow(now=True)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._read_history(assigned)
        self.joined.set()

    async def follow(self, now: bool = False) -> None:
        """Read the topics again that the queue reads (bindings made since, topics created
        since): at most every :data:`FOLLOW_S`, or ``now`` from the server."""
        if not now and time.monotonic() - self._followed < FOLLOW_S:
            return
        self._followed = time.monotonic()
        topics = sorted(await self._topics(now))
        if topics == self.topics:
            return
        self.topics = topics
        if self.grouped:
            self.consumer.subscribe(topics, listener=self)
        else:
            kept = set(await self._partitions(topics))
            for tp in list(self.ledgers):
                if tp not in kept:
                    self.ledgers.pop(tp)
                    self.buffered.pop(tp, None)
            self.consumer.assign(sorted(kept, key=lambda tp: (tp.topic, tp.partition)))

    def follow_soon(self) -> None:
        """Look for the queue's topics before the next fetch (a topic was just made)."""
        self._followed = 0.0

    # -- reading ---------------------------------------------------------------------------

    async def fetch(self, room: int, timeout_ms: int) -> list[Token]:
        """Up to ``room`` records, fetched when fewer are buffered; the partitions' records
        are merged by their timestamps (each partition's in offset order), so a queue that
        reads several topics hands out events in the order they were published."""
        if self._unclaimed:  # (handed out to readers that left before they got them)
            tokens, self._unclaimed = self._unclaimed[:room], self._unclaimed[room:]
            return tokens
        if sum(len(b) for b in self.buffered.values()) < room:
            async with self._fetching:
                batches = await self.consumer.getmany(timeout_ms=timeout_ms,
                                                      max_records=max(room, 100))
            for tp, records in batches.items():
                if records:
                    if tp not in self.ledgers:
                        self.ledgers[tp] = Ledger(records[0].offset,
                                                  self._history.get(tp, (0, {}))[0])
                    self.buffered.setdefault(tp, deque()).extend(records)
        tokens: list[Token] = []
        skipped = False
        while len(tokens) < room:
            heads = [(b[0].timestamp, i, tp) for i, (tp, b) in enumerate(self.buffered.items())
                     if b]
            if not heads:
                break
            tp = min(heads)[2]
            record = self.buffered[tp].popleft()
            ledger = self.ledgers[tp]
            before = deliveries_before(record.offset, self._history.get(tp, (0, {})))
            ledger.handed(record.offset, before + 1)
            token = self._decode(record, (self, tp, record.offset, ledger), before)
            if token is None:
                ledger.settle(record.offset)
                skipped = True
            else:
                tokens.append(token)
        if skipped:
            await self.commit()
        elif tokens:
            self.commit_soon()  # (how far it handed out, for the next owner to count)
        return tokens

    async def waiting(self) -> bool:
        """Whether a partition this cursor holds has records it has not handed out."""
        if any(self.buffered.values()):
            return True
        assigned = list(self.consumer.assignment())
        if not assigned:
            return False
        ends = await self._ends(assigned)
        for tp in assigned:
            if await self.consumer.position(tp) < ends.get(tp, 0):
                return True
        return False

    async def get(self, timeout_s: float) -> Token | None:
        """The next record of the queue, or None when none is waiting."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.joined.wait(), timeout_s)
        await self.follow()
        deadline = time.monotonic() + timeout_s
        while await self.waiting():
            tokens = await self.fetch(1, 200)
            if tokens:
                return tokens[0]
            if time.monotonic() > deadline:
                return None
        if not self._ends_lag():
            return None
        # (a server may say a partition ends before records it has: Tansu answers the end
        # of the last batch's first record; a short fetch finds them)
        tokens = await self.fetch(1, 50)
        return tokens[0] if tokens else None

    def add(self, room: Callable[[], int], arrived: Callable[[Token], None]) -> CursorReader:
        reader = CursorReader(self, room, arrived)
        self.readers.append(reader)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return reader

    async def remove(self, reader: CursorReader) -> None:
        with contextlib.suppress(ValueError):
            self.readers.remove(reader)
        if not self.readers and self._task is not None:
            task, self._task = self._task, None
            self._wake.set()
            task.cancel()
            await asyncio.wait([task], timeout=10)
            if self._idle is not None:
                await self._idle(self)

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        # (the condition, not only a cancel, ends it: wait_for can swallow a cancellation)
        while not self.closed and self.readers:
            room = await room_or_wait(lambda: sum(r.room() for r in self.readers), self._wake)
            if room <= 0:
                continue
            try:
                await self.follow()
                tokens = await self.fetch(room, 200)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the server went away: aiokafka reconnects
                log.debug("reading '%s' failed: %r; again shortly", self.name, e)
                await asyncio.sleep(0.5)
                continue
            self._hand(tokens)

    def _hand(self, tokens: list[Token]) -> None:
        readers = self.readers
        i = 0
        for reader in list(readers):
            for _ in range(reader.room()):
                if i == len(tokens):
                    return
                reader.arrived(tokens[i])
                i += 1
        for token in tokens[i:]:  # (room shrank meanwhile: the first reader takes them)
            if readers:
                readers[0].arrived(token)
            else:  # (every reader left while it was fetched: the next one gets it)
                self._unclaimed.append(token)

    # -- settling --------------------------------------------------------------------------

    def settle(self, tokens: Sequence[Token]) -> None:
        for token in tokens:
            _, tp, offset, ledger = token.handle
            if self.ledgers.get(tp) is ledger:
                ledger.settle(offset)

    async def commit(self) -> bool:
        """Commit each partition's point (every record below it settled); False when Kafka
        refused (a rebalance: the next owner delivers those records again)."""
        async with self._committing:
            due = {tp: (ledger.point, ledger.next, ledger.metadata())
                   for tp, ledger in self.ledgers.items() if ledger.advanced()}
            if not due:
                return True
            try:
                await self.consumer.commit({tp: (point, metadata)
                                            for tp, (point, _, metadata) in due.items()})
            except KafkaError as e:
                log.debug("committing '%s' failed: %r", self.name, e)
                return False
            for tp, (point, handed, _) in due.items():
                ledger = self.ledgers.get(tp)
                if ledger is not None:
                    ledger.committed = max(ledger.committed, point)
                    ledger.marked = max(ledger.marked, handed)
            return True

    def commit_soon(self) -> None:
        """Commit in the background, once for every acknowledgement made meanwhile (a
        commit per message would cost a round trip each; what a crash leaves uncommitted is
        delivered again, as Kafka consumers' own commits are)."""
        if self._committer is None or self._committer.done():
            self._committer = asyncio.get_running_loop().create_task(self._commit_while())

    async def _commit_while(self) -> None:
        await asyncio.sleep(0)  # (the acknowledgements of this loop turn join)
        while any(ledger.advanced() for ledger in self.ledgers.values()):
            if not await self.commit():
                return

    async def flush(self) -> None:
        """Wait for the commits under way."""
        if self._committer is not None:
            await asyncio.shield(self._committer)

    @property
    def open(self) -> int:
        return sum(ledger.open for ledger in self.ledgers.values())

    async def reset(self) -> None:
        """Forget what was handed out and go on from the group's committed offsets (after a
        purge moved them)."""
        await self.flush()
        self.ledgers.clear()
        self.buffered.clear()
        self._unclaimed.clear()
        for tp in self.consumer.assignment():
            committed = await self.consumer.committed(tp)
            if committed is not None:
                self.consumer.seek(tp, committed)

    async def close(self) -> None:
        """Commit what is settled and leave (a close that was cancelled goes on: whoever
        closes next waits for the same one)."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self.closed = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=10)
        with contextlib.suppress(Exception):
            await self.flush()
            await self.commit()
        with contextlib.suppress(Exception):
            await self.consumer.stop()
