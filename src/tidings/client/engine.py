"""The engine core: tidings' delivery rules, applied in the client, over engines that do not
apply them themselves (NATS JetStream, Redis Streams; Kafka next).

:class:`EngineTransport` is the client's :class:`~tidings.client.transport.Transport`. It
owns every rule once: admitting a delivery (the delivery limit and message TTL, checked on
receipt), the leases that renew what this process holds, the consumer with its prefetch and
half-batch refill, the nack ladder (rejected → dead letter; past the delivery limit → dead
letter; else back, after a delay when asked), dead letters with ``x-death`` and their listing
and replay, and the tokens deliveries are settled with. An :class:`Engine` module holds only
the engine's own calls, through the verbs below; each names its engine's objects (JetStream
streams and pull consumers; Redis streams, groups and scripts).

The verbs, in the engine's words:

- declare: ``create_queue`` (with its :class:`QueueRules`, kept in the engine so every
  process applies the same), ``read_rules``, ``bind`` (route events to a queue);
- write: ``append`` (now, or at a due time), ``publish`` (an event to every bound queue);
- read: ``reader`` (a loop that pulls while the consumer has room), ``read_one`` (a get);
- settle: ``settle`` (gone for good), ``rewrite`` (settle and write again: back to its queue
  with a failure counted, to a later due time, or into another queue, as one step where the
  engine allows), ``renew`` (a lease);
- look: ``scan`` (waiting entries, oldest first), ``remove``, ``restore`` (move a scanned
  entry into a queue), ``purge``, ``statistics``;
- streams (an engine whose capabilities say ``streams``), its ``logs``: ``create``,
  ``exists``, ``append`` (each record takes the next dense offset), ``reader`` (records in
  offset order from a parsed start, each delivery carrying its ``x-stream-offset``; an ack
  only gives credit), ``end``, ``commit`` and ``committed`` (a named reader's place).

The engines: NATS JetStream (:mod:`tidings.client.nats`), Redis Streams
(:mod:`tidings.client.redis`) and Kafka (:mod:`tidings.client.kafka`: topics as queues, a
consumer group's fetch loop as the reader, committed offsets behind ``settle``, the rewrite
verbs as produce-then-settle).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from tidings.client.remote import Leases, QueueRules, dead_letter
from tidings.client.tokens import Stored, Token
from tidings.client.transport import (
    Capabilities,
    Delivery,
    QueueSpec,
    StreamSpec,
    WithoutMachines,
)
from tidings.dead_letters import dead_letter_queue, replay_into
from tidings.errors import InvalidArgumentError, NotFoundError, NotSupportedError
from tidings.message import Message
from tidings.statistics import BrokerStatistics, ReaderStatistics, StreamStatistics
from tidings.stream_starts import OFFSET, READER, START_FORMS, Start, parse_start

log = logging.getLogger("tidings.client")

#: The prefix of the queues a client makes for itself (deleted when it closes).
PRIVATE_PREFIX = "tidings.private."


class Reader(Protocol):
    """An engine's pull loop for one consumer: it asks for ``room()`` deliveries at a time
    and hands each to ``arrived``; ``wake`` says room was made."""

    def wake(self) -> None: ...

    async def stop(self) -> None: ...


class Engine(Protocol):
    """The calls an engine module makes on its engine, and nothing else."""

    capabilities: Capabilities

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create_queue(self, name: str, spec: QueueSpec, rules: QueueRules) -> None: ...

    async def read_rules(self, name: str) -> QueueRules:
        """The rules kept with the queue; NotFoundError when it does not exist."""
        ...

    async def bind(self, queue: str, pattern: str, rules: QueueRules) -> None: ...

    async def append(self, queue: str, messages: Sequence[Message],
                     due_ms: int | None) -> None:
        """Store ``messages`` in ``queue`` (at ``due_ms``, epoch ms, when given); returns once
        the engine has them."""
        ...

    async def publish(self, topic: str, messages: Sequence[Message]) -> None: ...

    async def reader(self, queue: str, room: Callable[[], int],
                     arrived: Callable[[Token], None]) -> Reader: ...

    async def read_one(self, queue: str) -> Token | None: ...

    async def settle(self, tokens: Sequence[Token]) -> None: ...

    async def rewrite(self, token: Token, queue: str, message: Message, failures: int,
                      due_ms: int | None) -> None:
        """Settle ``token``'s delivery and write ``message`` to ``queue`` (its own queue: back in
        line, with ``failures``; another: a move), at ``due_ms`` when given."""
        ...

    async def renew(self, tokens: Sequence[Token]) -> None: ...

    def scan(self, queue: str, delayed: bool = False) -> AsyncIterator[Stored]:
        """The waiting entries of ``queue``, oldest first (with ``delayed``, then those
        waiting for their due time), left in place."""
        ...

    async def remove(self, queue: str, stored: Stored) -> bool: ...

    async def restore(self, stored: Stored, queue: str, message: Message) -> None:
        """Write ``message`` to ``queue`` and remove the scanned entry (replay)."""
        ...

    async def purge(self, queue: str) -> int: ...

    async def statistics(self) -> BrokerStatistics: ...

    async def sync(self) -> None: ...

    @property
    def logs(self) -> StreamLogs:
        """Its streams (when ``capabilities.streams``)."""
        ...


class StreamLogs(Protocol):
    """The calls an engine makes for tidings streams."""

    async def create(self, name: str, spec: StreamSpec) -> None: ...

    async def exists(self, name: str) -> bool: ...

    async def append(self, stream: str, messages: Sequence[Message]) -> None:
        """Store records; each takes the next dense offset."""
        ...

    async def reader(self, stream: str, start: Start, room: Callable[[], int],
                     arrived: Callable[[Token], None]) -> Reader:
        """Records of ``stream`` from ``start`` (never an age: the core makes it a time), in
        offset order, waiting at the tail; each token's message carries its offset in the
        header ``x-stream-offset``."""
        ...

    async def end(self, stream: str) -> int:
        """The offset the next record appended will take."""
        ...

    async def commit(self, stream: str, reader: str, offset: int) -> None: ...

    async def committed(self, stream: str, reader: str) -> int | None: ...

    async def statistics(self) -> list[StreamStatistics]:
        """Every stream's numbers, with its named readers' places and lags."""
        ...


class Consumer:
    """``consume()``'s subscription: the engine's reader, with room for ``prefetch``
    unsettled deliveries; it asks for more only once half the prefetch is free (or all of a
    small one), so reads stay batches instead of one message per acknowledgement."""

    def __init__(self, core: EngineTransport, queue: str, rules: QueueRules | None,
                 prefetch: int, on_message: Callable[[Delivery], None]) -> None:
        """``rules`` None: a stream reader (no rules to apply; an ack only gives credit)."""
        self.core, self.queue, self.rules, self.prefetch = core, queue, rules, prefetch
        self.on_message = on_message
        self.unsettled = 0
        self.cancelled = False
        self.reader: Reader | None = None

    def room(self) -> int:
        room = 0 if self.cancelled else self.prefetch - self.unsettled
        return room if room >= max(1, self.prefetch // 2) else 0

    def arrived(self, token: Token) -> None:
        """A delivery from the reader: to the handler at once in the common case (the message
        alive); else in a task (a dead letter, or a delivery that came after the cancel,
        which goes back)."""
        self.unsettled += 1
        token.consumer = self
        if self.rules is None:  # a stream's record: nothing to judge
            if self.cancelled:
                self.settled()
            else:
                self.on_message(Delivery(token.message, self.queue, token, False, 0))
            return
        if not self.cancelled:
            verdict = self.core.judge(token, self.rules)
            if isinstance(verdict, Delivery):
                self.on_message(verdict)
                return
        self.core.spawn(self._admit(token))

    async def _admit(self, token: Token) -> None:
        if self.cancelled:  # straight back to the queue, not counted as a failure
            with contextlib.suppress(Exception):
                await self.core.engine.rewrite(token, self.queue, token.message,
                                               token.failures, None)
            self.settled()
            return
        try:
            incoming = await self.core.admit(token)
        except Exception as e:  # the engine failed us: it redelivers after the timeout
            log.warning("could not dead-letter a message of '%s': %r; it comes back after "
                        "the queue's consumer timeout", self.queue, e)
            incoming = None
        if incoming is None:
            self.settled()
        else:
            self.on_message(incoming)

    def settled(self) -> None:
        self.unsettled -= 1
        if self.reader is not None:
            self.reader.wake()

    async def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        if self.reader is not None:
            await self.reader.stop()
        self.core.consumers.discard(self)


class EngineTransport(WithoutMachines):
    """The client's :class:`~tidings.client.transport.Transport` over one :class:`Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.consumers: set[Consumer] = set()
        self._rules: dict[str, QueueRules] = {}
        self._streams: set[str] = set()
        self._leases = Leases(self._renew)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def capabilities(self) -> Capabilities:
        return self.engine.capabilities

    async def open(self) -> EngineTransport:
        await self.engine.open()
        return self

    def spawn(self, work: Any) -> None:
        """Run ``work`` (a coroutine) in a task of this transport's own."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- declarations ----------------------------------------------------------------------

    async def declare_queue(self, name: str, spec: QueueSpec) -> str:
        if spec.max_priority is not None and not self.capabilities.priorities:
            raise self.capabilities.unsupported("priorities", "declare a priority queue")
        name = name or f"{PRIVATE_PREFIX}{uuid.uuid4().hex}"
        rules = QueueRules.of(spec)
        await self.engine.create_queue(name, spec, rules)
        if rules.dead_letters:
            await self.engine.create_queue(
                dead_letter_queue(name),
                QueueSpec(durable=spec.durable, delivery_limit=None, dead_letters=False),
                QueueRules(None, False))
        self._rules[name] = rules
        return name

    async def rules(self, queue: str) -> QueueRules:
        """The queue's rules (read from the engine once per process)."""
        rules = self._rules.get(queue)
        if rules is None:
            rules = self._rules[queue] = await self.engine.read_rules(queue)
        return rules

    async def queue_exists(self, name: str) -> bool:
        try:
            await self._rules_of(name)
        except NotFoundError:
            return False
        return True

    async def _rules_of(self, name: str) -> QueueRules | None:
        """A queue's rules, or None for a stream (queues first: they are the common case);
        NotFoundError when it is neither."""
        if name in self._streams:
            return None
        try:
            return await self.rules(name)
        except NotFoundError:
            if not self.capabilities.streams or not await self.engine.logs.exists(name):
                raise
        self._streams.add(name)
        return None

    async def bind_events(self, queue: str, pattern: str) -> None:
        rules = await self._rules_of(queue)
        if rules is None:
            raise NotSupportedError(
                self.capabilities.broker, f"route events into the stream '{queue}' "
                f"(keep_events, subscribe(replay=...))", "the engine core keeps streams and "
                "queues apart: append the events to the stream yourself, or keep replayable "
                "events on the embedded broker, tidings serve or RabbitMQ")
        await self.engine.bind(queue, pattern, rules)

    async def declare_stream(self, name: str, spec: StreamSpec) -> None:
        if not self.capabilities.streams:
            raise self.capabilities.unsupported("streams", "declare a stream")
        await self.engine.logs.create(name, spec)
        self._streams.add(name)

    async def commit_offset(self, stream: str, reader: str, offset: int) -> None:
        if await self._rules_of(stream) is not None:
            raise InvalidArgumentError(f"'{stream}' is a queue, not a stream: it has no "
                                       f"reader offsets")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < -1:
            raise InvalidArgumentError(f"offset {offset!r} is not an offset")
        if not reader:
            raise InvalidArgumentError("a named reader needs a non-empty name")
        end = await self.engine.logs.end(stream)
        if offset >= end:  # it would skip records not yet written
            raise InvalidArgumentError(
                f"offset {offset} for reader '{reader}' is past the end of stream '{stream}' "
                f"(its last offset is {end - 1})")
        await self.engine.logs.commit(stream, reader, offset)

    # -- sending ---------------------------------------------------------------------------

    async def send(self, queue: str, messages: Sequence[Message],
                   delay_ms: int | None = None) -> None:
        for message in messages:
            message.routing_key = queue
        # (a missing queue is an error here, not a retry loop in the engine)
        if queue in self._rules or await self._rules_of(queue) is not None:
            await self.engine.append(queue, messages, _due(delay_ms))
            return
        if delay_ms:
            raise InvalidArgumentError(f"'{queue}' is a stream: it keeps records in the order "
                                       f"they are appended, without delays")
        await self.engine.logs.append(queue, messages)

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        for message in messages:
            message.routing_key = topic
        await self.engine.publish(topic, messages)

    # -- receiving -------------------------------------------------------------------------

    def judge(self, token: Token, rules: QueueRules) -> Delivery | str:
        """Without waiting: the Delivery to hand over, or why the delivery must be
        dead-lettered instead (its ``x-death`` reason)."""
        message, failures = token.message, token.failures
        if not message.routing_key:
            message.routing_key = token.queue
        reason = rules.death(message, failures, token.enqueued_ms, time.time() * 1000)
        if reason is not None:
            return reason
        self._leases.hold(token, rules.consumer_timeout_ms)
        return Delivery(message, token.queue, token, failures > 0, failures)

    async def admit(self, token: Token) -> Delivery | None:
        """A delivery for the handler, or None when it was dead-lettered (expired, or past
        the delivery limit)."""
        verdict = self.judge(token, await self.rules(token.queue))
        if isinstance(verdict, Delivery):
            return verdict
        await self._dead_letter(token, verdict)
        return None

    async def get(self, queue: str) -> Delivery | None:
        if await self._rules_of(queue) is None:
            raise InvalidArgumentError(f"'{queue}' is a stream: read it with client.read()")
        while (token := await self.engine.read_one(queue)) is not None:
            incoming = await self.admit(token)
            if incoming is not None:
                return incoming
        return None

    async def consume(self, queue: str, prefetch: int,
                      on_message: Callable[[Delivery], None],
                      arguments: dict[str, Any] | None = None) -> Consumer:
        rules = await self._rules_of(queue)
        consumer = Consumer(self, queue, rules, prefetch, on_message)
        if rules is None:  # a stream
            start = await self._stream_start(queue, arguments or {})
            consumer.reader = await self.engine.logs.reader(queue, start, consumer.room,
                                                            consumer.arrived)
        else:
            consumer.reader = await self.engine.reader(queue, consumer.room, consumer.arrived)
        self.consumers.add(consumer)
        return consumer

    async def _stream_start(self, stream: str, arguments: dict[str, Any]) -> Start:
        """Where a reader starts: after its name's committed offset, else at its
        ``x-stream-offset`` (``next`` by default, as RabbitMQ)."""
        reader = arguments.get(READER)
        if reader is not None:
            committed = await self.engine.logs.committed(stream, str(reader))
            if committed is not None:
                return "offset", committed + 1
        start = parse_start(arguments.get(OFFSET, "next"))
        if start is None:
            raise InvalidArgumentError(
                f"invalid '{OFFSET}' {str(arguments.get(OFFSET))[:40]!r}: not {START_FORMS}")
        if start[0] == "age":
            return "time", int(time.time() * 1000) - start[1]
        return start

    # -- settling --------------------------------------------------------------------------

    def _settled(self, tokens: Sequence[Token]) -> None:
        self._leases.release(tokens)
        for token in tokens:
            token.settled = True
            if token.consumer is not None:
                token.consumer.settled()

    async def ack(self, tokens: Sequence[Any]) -> None:
        streams = self._streams  # a stream's record is only credit: nothing to settle
        queued = [t for t in tokens if t.queue not in streams] if streams else tokens
        try:
            if queued:
                await self.engine.settle(queued)
        finally:
            self._settled(tokens)

    async def nack(self, token: Any, requeue: bool, delay_ms: int | None = None) -> None:
        """The ladder: rejected, or past the delivery limit, is a dead letter; anything else
        goes back to its queue (after ``delay_ms``), one failure more. A stream keeps
        its records: a nack there, as an ack, only gives credit."""
        if token.queue in self._streams:
            self._settled([token])
            return
        try:
            rules = await self.rules(token.queue)
            failures = token.failures + 1
            if not requeue:
                await self._dead_letter(token, "rejected")
            elif rules.delivery_limit is not None and failures > rules.delivery_limit:
                await self._dead_letter(token, "delivery_limit")
            else:
                await self.engine.rewrite(token, token.queue, token.message, failures,
                                          _due(delay_ms))
        finally:
            self._settled([token])

    async def _dead_letter(self, token: Token, reason: str) -> None:
        if not (await self.rules(token.queue)).dead_letters:
            await self.engine.settle([token])
            return
        dead = dead_letter(token.message, token.queue, reason)
        await self.engine.rewrite(token, dead_letter_queue(token.queue), dead, 0, None)

    async def extend(self, token: Any) -> None:
        if token.queue not in self._streams:
            await self.engine.renew([token])

    async def _renew(self, tokens: list[Any]) -> None:
        live = [t for t in tokens if not t.settled]
        if live:
            await self.engine.renew(live)

    # -- looking at and editing queues -----------------------------------------------------

    async def browse(self, queue: str, limit: int) -> list[Message]:
        await self.rules(queue)
        found: list[Message] = []
        if limit <= 0:
            return found
        async for stored in self.engine.scan(queue):
            found.append(stored.message)
            if len(found) >= limit:
                break
        return found

    async def delete(self, queue: str, message_id: str) -> bool:
        await self.rules(queue)
        async for stored in self.engine.scan(queue, delayed=True):
            if stored.message.message_id == message_id:
                return await self.engine.remove(queue, stored)
        return False

    async def purge(self, queue: str) -> int:
        await self.rules(queue)
        return await self.engine.purge(queue)

    async def dead_letters(self, queue: str, limit: int) -> list[Message]:
        if not await self.queue_exists(dead_letter_queue(queue)):
            return []
        return await self.browse(dead_letter_queue(queue), limit)

    async def replay_dead_letters(self, queue: str, ids: set[str] | None) -> int:
        dead = dead_letter_queue(queue)
        if not await self.queue_exists(dead):
            return 0
        return await replay_into(
            queue, ids, ((s.message, s) async for s in self.engine.scan(dead)),
            self.engine.restore)

    # -- the rest --------------------------------------------------------------------------

    async def sync(self) -> None:
        await self.engine.sync()

    async def statistics(self) -> BrokerStatistics:
        found = await self.engine.statistics()
        if not self.capabilities.streams:
            return found
        return dataclasses.replace(found, streams=tuple(await self.engine.logs.statistics()))

    async def close(self) -> None:
        for consumer in list(self.consumers):
            await consumer.cancel()
        await self._leases.close()
        for task in list(self._tasks):
            task.cancel()
        await self.engine.close()


def _due(delay_ms: int | None) -> int | None:
    return int(time.time() * 1000) + int(delay_ms) if delay_ms is not None and delay_ms > 0 \
        else None


def stream_statistics(name: str, *, records: int, size: int, first: int, end: int,
                      first_ms: float | None, last_ms: float | None, max_bytes: int | None,
                      max_age_s: float | None,
                      readers: list[tuple[str, int, float | None]]) -> StreamStatistics:
    """A stream's record from what an engine counts: it keeps ``records`` from offset
    ``first`` to ``end`` (the next offset); ``readers`` are (name, committed offset, append
    time in ms of the next record it has not read, or None)."""
    now_ms = time.time() * 1000
    return StreamStatistics(
        vhost="/", name=name, records=records, bytes=size, segments=0,
        first_offset=first if records else None, last_offset=end - 1 if records else None,
        first_timestamp=None if first_ms is None else first_ms / 1000,
        last_timestamp=None if last_ms is None else last_ms / 1000, max_bytes=max_bytes,
        max_age_s=max_age_s, segment_bytes=0, readers=tuple(
            ReaderStatistics(reader, committed + 1, False, max(0, end - committed - 1),
                             0.0 if next_ms is None else max(0.0, (now_ms - next_ms) / 1000))
            for reader, committed, next_ms in sorted(readers)))
