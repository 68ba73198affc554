"""Client: queues and events in the product's own words, over any :class:`Transport`.

Queues: ``send`` / ``get`` / ``receive`` and ``message.ack()``; a queue is declared on first use
(durable, with a delivery limit and a ``<name>.dead`` queue). Events: ``publish`` to a topic,
``@client.subscribe(pattern, group=...)`` handlers, ``await client.run()``; a handler that raises
is retried with exponential backoff until the delivery limit, then dead-lettered.

``tidings.connect(url)`` picks the transport from the URL. It is used as
``async with tidings.connect(url) as client:`` (or ``client = await tidings.connect(url)`` and
``await client.close()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from typing import Any

from tidings.client.bodies import check_headers, encode_body
from tidings.client.machine import Machine
from tidings.client.machine_runner import MachineRunner
from tidings.client.received import ReceivedMessage, Receiver
from tidings.client.replay import EVENTS_LOG
from tidings.client.runner import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_BACKOFF_MS,
    DEFAULT_MIN_BACKOFF_MS,
    DEFAULT_PREFETCH,
    DEFAULT_RETRIES,
    Handler,
    HandlerRunner,
    Middleware,
)
from tidings.client.streams import Start, StreamReader
from tidings.client.task_threads import TaskThreads
from tidings.client.tasks import ERROR_CONTENT_TYPE, Results, Task, raise_failure
from tidings.client.transport import QueueSpec, StreamSpec, Transport
from tidings.dead_letters import dead_letter_queue
from tidings.errors import ClosedResourceError, ConfigError, InvalidArgumentError
from tidings.message import Message


class Client:
    """A connection to a tidings broker (embedded or remote) through one :class:`Transport`."""

    def __init__(self, url: str | None = None, *,
                 transport_factory: Callable[[], Awaitable[Transport]] | None = None) -> None:
        """``tidings.connect(url)`` makes one; ``transport_factory`` opens its transport."""
        self.url = url
        self._factory = transport_factory
        self._transport: Transport | None = None
        self._declared: set[str] = set()
        self._receivers: set[Receiver] = set()
        self._readers: set[StreamReader] = set()
        self._streams: set[str] = set()
        #: Message ids: a random per-client prefix and a counter (unique, and cheap to make).
        self.id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)
        self._closed = False
        self._results = Results(lambda: self.transport, self.id_prefix)
        #: The subscriptions, handlers and tasks registered here, and the workers running them.
        self.handlers = HandlerRunner(self)
        #: State machines run on this client (``machine``); ``start`` starts them.
        self.machines: list[MachineRunner[Any]] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> Client:
        if self._transport is None:
            if self._factory is None:
                raise ConfigError("this Client has no transport: make it with "
                                  "tidings.connect(url)")
            self._transport = await self._factory()
        return self

    def __await__(self) -> Generator[Any, None, Client]:
        return self.open().__await__()

    async def __aenter__(self) -> Client:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        for receiver in list(self._receivers):
            await receiver.aclose()
        for reader in list(self._readers):
            with contextlib.suppress(Exception):
                await reader.close()
        if self._transport is not None:
            await self.handlers.close()
        self._closed = True
        await self._results.close()
        if self._transport is not None:
            await self._transport.close()

    @property
    def transport(self) -> Transport:
        if self._closed:
            raise ClosedResourceError("the client is closed")
        if self._transport is None:
            raise ClosedResourceError(
                "the client is not open: use 'async with tidings.connect(...)'"
            )
        return self._transport

    # -- queues ----------------------------------------------------------------------------

    async def declare_queue(self, name: str, *, durable: bool = True,
                            delivery_limit: int | None = 10, dead_letters: bool = True,
                            max_length: int | None = None, max_priority: int | None = None,
                            message_ttl_ms: int | None = None,
                            consumer_timeout_ms: int | None = None,
                            arguments: dict[str, Any] | None = None) -> str:
        """Declare a queue with options (idempotent; a different redeclare raises)."""
        spec = QueueSpec(durable, delivery_limit, dead_letters, max_length, max_priority,
                         message_ttl_ms, consumer_timeout_ms, False,
                         tuple(sorted((arguments or {}).items())))
        name = await self.transport.declare_queue(name, spec)
        self._declared.add(name)
        return name

    async def ensure_queue(self, name: str) -> None:
        """Declare ``name`` as the client's senders and handlers would, unless it exists."""
        if name in self._declared:
            return
        if not await self.transport.queue_exists(name):
            await self.transport.declare_queue(name, self.handlers.queue_spec(name))
        self._declared.add(name)

    @property
    def results(self) -> Results:
        """The reply queue of this client's task calls and requests."""
        return self._results

    @property
    def task_threads(self) -> TaskThreads:
        """Where plain (non-async) tasks run; counts threads stuck past their time limit."""
        return self.handlers.task_threads

    def _message(self, body: Any, *, headers: dict[str, Any] | None, priority: int | None,
                 ttl_ms: int | None, message_id: str | None, content_type: str | None,
                 persistent: bool, correlation_id: str | None = None,
                 reply_to: str | None = None) -> Message:
        data, ctype = encode_body(body, content_type)
        if headers:
            check_headers(headers)
        return Message(
            data, headers=dict(headers) if headers else None, persistent=persistent,
            content_type=ctype, priority=priority,
            expiration=None if ttl_ms is None else str(int(ttl_ms)),
            message_id=message_id or self.new_id(),
            timestamp=int(time.time()),
            correlation_id=correlation_id, reply_to=reply_to,
        )

    def _messages(self, bodies: Iterable[Any], headers: dict[str, Any] | None,
                  persistent: bool) -> list[Message]:
        """:meth:`_message` for a batch: the clock read and the id prefix looked up once."""
        now, prefix, ids = int(time.time()), self.id_prefix, self._ids
        if headers:
            check_headers(headers)
        return [Message(data, headers=dict(headers) if headers else None,
                        persistent=persistent, content_type=ctype,
                        message_id=f"{prefix}-{next(ids):x}", timestamp=now)
                for data, ctype in (encode_body(b, None) for b in bodies)]

    async def send(self, queue: str, body: Any, *, headers: dict[str, Any] | None = None,
                   priority: int | None = None, delay_ms: int | None = None,
                   ttl_ms: int | None = None, message_id: str | None = None,
                   content_type: str | None = None, persistent: bool = True,
                   correlation_id: str | None = None, reply_to: str | None = None) -> str:
        """Put a message in ``queue``; returns its id once it is durable."""
        if queue not in self._declared:
            await self.ensure_queue(queue)
        message = self._message(body, headers=headers, priority=priority, ttl_ms=ttl_ms,
                                message_id=message_id, content_type=content_type,
                                persistent=persistent, correlation_id=correlation_id,
                                reply_to=reply_to)
        await self.transport.send(queue, [message], delay_ms)
        return message.message_id or ""

    async def send_many(self, queue: str, bodies: Iterable[Any], *,
                        delay_ms: int | None = None, persistent: bool = True,
                        headers: dict[str, Any] | None = None) -> list[str]:
        """Batch form of :meth:`send`: one durable commit for all; returns the ids."""
        await self.ensure_queue(queue)
        messages = self._messages(bodies, headers, persistent)
        await self.transport.send(queue, messages, delay_ms)
        return [m.message_id or "" for m in messages]

    async def get(self, queue: str) -> ReceivedMessage | None:
        """The next message of ``queue``, or None when it is empty. Settle it."""
        await self.ensure_queue(queue)
        incoming = await self.transport.get(queue)
        return None if incoming is None else ReceivedMessage(self.transport, incoming)

    def receive(self, queue: str, *, prefetch: int = DEFAULT_PREFETCH) -> Receiver:
        """Messages of ``queue`` as they come; at most ``prefetch`` unsettled at once.

        Use ``async with client.receive(q) as messages: async for m in messages: ...`` so that
        leaving the block stops the consumer at once; messages received but not yet handed to
        you go back to the queue. (A bare ``async for`` works too; the consumer then stops when
        the client closes.)
        """
        if prefetch < 1:
            raise InvalidArgumentError(f"prefetch must be >= 1, got {prefetch}")
        receiver = Receiver(self.transport, queue, prefetch, declare=self.ensure_queue,
                            closed=self._receivers.discard)
        self._receivers.add(receiver)
        return receiver

    async def ack(self, messages: Sequence[ReceivedMessage]) -> None:
        """Batch form of ``message.ack()``."""
        await self.transport.ack([m.take_token() for m in messages])

    async def delete(self, queue: str, message_id: str) -> bool:
        """Cancel a waiting (ready or delayed) message; False when it is not waiting."""
        return await self.transport.delete(queue, message_id)

    async def purge(self, queue: str) -> int:
        return await self.transport.purge(queue)

    async def sync(self) -> None:
        """Wait until everything done so far is durable, acks included (sends already are)."""
        await self.transport.sync()

    async def statistics(self) -> Any:
        """Broker statistics (a frozen record; see :mod:`tidings.statistics`)."""
        return await self.transport.statistics()

    # -- dead letters ----------------------------------------------------------------------

    async def dead_letters(self, queue: str, limit: int = 100) -> list[Message]:
        """Dead letters of ``queue`` (oldest first), with their ``x-death`` history."""
        await self.ensure_queue(queue)
        return await self.transport.dead_letters(queue, limit)

    async def replay_dead_letters(self, queue: str, ids: Iterable[str] | None = None) -> int:
        """Move dead letters (all, or those with ``ids``) back into ``queue``; returns how many."""
        await self.ensure_queue(queue)
        return await self.transport.replay_dead_letters(
            queue, set(ids) if ids is not None else None)

    async def purge_dead_letters(self, queue: str) -> int:
        await self.ensure_queue(queue)
        return await self.transport.purge(dead_letter_queue(queue))

    # -- streams ---------------------------------------------------------------------------

    def _check_streams(self, operation: str) -> None:
        capabilities = self.transport.capabilities
        if not capabilities.streams:
            raise capabilities.unsupported("streams", operation)

    async def stream(self, name: str, *, max_bytes: int | None = None,
                     max_age: str | datetime.timedelta | None = None,
                     segment_bytes: int | None = None) -> str:
        """Declare the stream ``name``: a log that keeps what is appended to it, for every
        reader, until the retention drops it (the oldest whole segments once it is larger
        than ``max_bytes``, or older than ``max_age``: ``"7D"``, ``"12h"`` or a timedelta).
        Idempotent; a redeclare with other retention raises."""
        self._check_streams("declare a stream")
        if isinstance(max_age, datetime.timedelta):
            max_age = f"{int(max_age.total_seconds())}s"
        await self.transport.declare_stream(name, StreamSpec(max_bytes, max_age, segment_bytes))
        self._streams.add(name)
        return name

    async def _ensure_stream(self, name: str) -> None:
        if name not in self._streams:
            self._check_streams("append to a stream")
            if not await self.transport.queue_exists(name):
                await self.transport.declare_stream(name, StreamSpec())
            self._streams.add(name)

    async def append(self, stream: str, record: Any, *, headers: dict[str, Any] | None = None,
                     message_id: str | None = None, content_type: str | None = None) -> str:
        """Append ``record`` (bytes, text or JSON-able) to ``stream`` (declared with the
        defaults if missing); returns its id once it is durable."""
        await self._ensure_stream(stream)
        message = self._message(record, headers=headers, priority=None, ttl_ms=None,
                                message_id=message_id, content_type=content_type,
                                persistent=True)
        await self.transport.send(stream, [message])
        return message.message_id or ""

    async def append_many(self, stream: str, records: Iterable[Any], *,
                          headers: dict[str, Any] | None = None) -> list[str]:
        """Batch form of :meth:`append`: one durable commit for all; returns the ids."""
        await self._ensure_stream(stream)
        messages = self._messages(records, headers, True)
        await self.transport.send(stream, messages)
        return [m.message_id or "" for m in messages]

    def read(self, stream: str, *, start: Start = "first", reader: str | None = None,
             prefetch: int = DEFAULT_PREFETCH) -> StreamReader:
        """Records of ``stream`` in offset order, from ``start``: ``"first"``, ``"last"``,
        ``"next"`` (only new ones), an offset, a datetime, or an age (``"1h"``, a timedelta).
        It waits at the tail for new records. With ``reader="name"`` it resumes after the
        offset that name last committed (``await reader.commit()``), and starts at ``start``
        only the first time.

        ``async with client.read("orders", reader="billing") as records:
        async for record in records: ...``
        """
        self._check_streams("read a stream")
        found = StreamReader(self.transport, stream, start, reader, prefetch,
                             closed=self._readers.discard)
        self._readers.add(found)
        return found

    # -- events ----------------------------------------------------------------------------

    async def publish(self, topic: str, event: Any, *, headers: dict[str, Any] | None = None,
                      message_id: str | None = None, content_type: str | None = None) -> str:
        """Publish an event to ``topic``; returns its id once it is durable."""
        message = self._message(event, headers=headers, priority=None, ttl_ms=None,
                                message_id=message_id, content_type=content_type,
                                persistent=True)
        await self.transport.publish(topic, [message])
        return message.message_id or ""

    def machine(self, machine: Machine[Any], *, prefetch: int = 100,
                partitions: int = 1) -> MachineRunner[Any]:
        """Run ``machine`` on this client: ``await runner.start()`` (or ``client.start()``,
        which ``tidings worker`` calls) applies the events of its topics, one committed
        transition per event; ``get`` and ``list`` read its instances
        (``client/machine_runner.py``). With ``partitions`` > 1 its instances are spread over
        that many queues, whose consumers spread over the processes running it. On the
        embedded broker, a shared data directory and tidings serve
        (``capabilities.machines``). Asking again for a version this client already runs
        gives the same runner; another version gets its own (to ``replay`` through it, say);
        other partitions or prefetch for the same machine are refused."""
        for runner in self.machines:
            if runner.machine.name != machine.name:
                continue
            if (runner.prefetch, runner.partitions) != (prefetch, partitions):
                raise InvalidArgumentError(
                    f"this client already runs machine '{machine.name}' with prefetch "
                    f"{runner.prefetch} and {runner.partitions} partition(s): every runner "
                    f"of a machine takes the same")
            if runner.machine.version == machine.version:
                return runner
        runner = MachineRunner(machine, lambda: self.transport, prefetch=prefetch,
                               partitions=partitions, new_id=self.new_id,
                               ensure_queue=self.ensure_queue)
        self.machines.append(runner)
        return runner

    async def publish_many(self, topic: str, events: Iterable[Any]) -> list[str]:
        messages = self._messages(events, None, True)
        await self.transport.publish(topic, messages)
        return [m.message_id or "" for m in messages]

    def subscribe(self, pattern: str, *, group: str | None = None,
                  retries: int = DEFAULT_RETRIES, min_backoff_ms: int = DEFAULT_MIN_BACKOFF_MS,
                  max_backoff_ms: int = DEFAULT_MAX_BACKOFF_MS,
                  prefetch: int = DEFAULT_PREFETCH,
                  concurrency: int = DEFAULT_CONCURRENCY,
                  replay: Start | None = None) -> Callable[[Handler], Handler]:
        """Decorator: call the handler for every event whose topic matches ``pattern``.

        Each ``group`` gets each event once, shared among its handlers (in this and other
        processes) and kept while nobody runs (a durable subscription). Without a group the
        subscription is private and lives as long as this client. Up to ``concurrency``
        events are handled at once; ``prefetch`` bounds how many wait in this process.

        With ``replay`` (``"first"``, an offset, a datetime or an age such as ``"1h"``), a
        subscription that is new (a group seen for the first time, or a private one) first
        catches up on the events retained since then (see :meth:`keep_events`), in order,
        and then goes live.
        """
        return self.handlers.subscribe(
            pattern, group=group, retries=retries, min_backoff_ms=min_backoff_ms,
            max_backoff_ms=max_backoff_ms, prefetch=prefetch, concurrency=concurrency,
            replay=replay)

    def handler(self, queue: str, *, retries: int = DEFAULT_RETRIES,
                min_backoff_ms: int = DEFAULT_MIN_BACKOFF_MS,
                max_backoff_ms: int = DEFAULT_MAX_BACKOFF_MS, prefetch: int = DEFAULT_PREFETCH,
                concurrency: int = DEFAULT_CONCURRENCY,
                delivery_limit: int | None = None) -> Callable[[Handler], Handler]:
        """Decorator: call the handler for every message of ``queue`` (competing with every
        other handler of that queue, in this and other processes). It is acknowledged once the
        handler returns; a handler that raises is retried with backoff, then dead-lettered.
        What it returns is the reply to :meth:`request`. ``delivery_limit`` bounds the
        deliveries of one message however they end (see :meth:`task`)."""
        return self.handlers.handler(
            queue, retries=retries, min_backoff_ms=min_backoff_ms, max_backoff_ms=max_backoff_ms,
            prefetch=prefetch, concurrency=concurrency, delivery_limit=delivery_limit)

    def task(self, function: Callable[..., Any] | None = None, *, queue: str = "default",
             name: str | None = None, retries: int = DEFAULT_RETRIES,
             timeout_s: float | None = None, min_backoff_ms: int = DEFAULT_MIN_BACKOFF_MS,
             max_backoff_ms: int = DEFAULT_MAX_BACKOFF_MS,
             concurrency: int = DEFAULT_CONCURRENCY, delivery_limit: int | None = None) -> Any:
        """Decorator: make a function (async or plain) a task. ``await f.send(*args)`` enqueues
        a call; a worker runs it; ``await (await f.send(...)).result()`` is its return value.

        ``retries`` counts the calls that raised; ``delivery_limit`` (default 10, and always
        above ``retries``) counts every delivery of a call however it ended, the ones whose
        worker process died or was stopped included: past it the call is dead-lettered and its
        ``result()`` raises :class:`TaskError` of type ``WorkerLostError``."""

        def register(fn: Callable[..., Any]) -> Task:
            return self.handlers.task(
                fn, queue=queue, name=name, retries=retries, timeout_s=timeout_s,
                min_backoff_ms=min_backoff_ms, max_backoff_ms=max_backoff_ms,
                concurrency=concurrency, delivery_limit=delivery_limit)

        return register(function) if function is not None else register

    @property
    def tasks(self) -> dict[str, Task]:
        """Every registered task by name."""
        return self.handlers.tasks

    async def request(self, queue: str, body: Any, *, timeout_s: float | None = 30.0,
                      headers: dict[str, Any] | None = None) -> Any:
        """Send ``body`` to ``queue`` and wait for the reply of its handler (plain RPC): JSON
        replies come back decoded, text as ``str``, anything else as ``bytes``; a handler that
        failed for good (after its retries) raises :class:`TaskError` here."""
        reply_to = await self._results.reply_queue()
        call_id = self.new_id()
        self._results.expect(call_id)
        await self.send(queue, body, message_id=call_id, correlation_id=call_id,
                        reply_to=reply_to, headers=headers)
        reply = await self._results.reply(call_id, timeout_s)
        if reply.content_type == ERROR_CONTENT_TYPE:
            raise_failure(json.loads(reply.body))
        if reply.content_type == "application/json":
            return json.loads(reply.body)
        if (reply.content_type or "").startswith("text/"):
            return reply.body.decode()
        return reply.body

    def new_id(self) -> str:
        """A message id unique to this client (its prefix and a counter)."""
        return f"{self.id_prefix}-{next(self._ids):x}"

    def use(self, middleware: Middleware) -> Middleware:
        """Add middleware around every handler call: ``async def mw(message, call_next)``."""
        return self.handlers.use(middleware)

    async def keep_events(self, *, max_age: str | datetime.timedelta | None = "7D",
                          max_bytes: int | None = 2 * 2**30) -> None:
        """Keep every event published from now on in the stream :data:`EVENTS_LOG`, for
        ``max_age`` and at most ``max_bytes``, so that new subscriptions can replay them
        (``subscribe(..., replay="first")``) and readers can read them
        (``client.read("tidings.events.log")``). The retention is the one the log was first
        declared with: a log that exists already (made by another client, or by the HTTP
        gateway of ``tidings serve``, with these same defaults) is kept as it is."""
        self._check_streams("keep events")
        if not await self.transport.queue_exists(EVENTS_LOG):
            await self.stream(EVENTS_LOG, max_age=max_age, max_bytes=max_bytes,
                              segment_bytes=16 * 2**20)
        await self.transport.bind_events(EVENTS_LOG, "#")

    async def start(self) -> None:
        """Declare and start every subscription and state machine (``run`` calls this, then
        waits)."""
        await self.handlers.start()
        for runner in self.machines:
            await runner.start()

    async def stop(self, grace_s: float = 30.0) -> bool:
        """Stop taking new work, let handlers in flight finish within ``grace_s``, acknowledge
        what they finished and return the rest to the queue (then close). True when every
        handler finished in time."""
        for runner in self.machines:
            await runner.stop()
        return await self.handlers.stop(grace_s)

    def handler_stats(self) -> dict[str, int]:
        """Handled, failed and retried messages over every handler, task and subscription."""
        return self.handlers.stats()

    async def run(self) -> None:
        """Start the subscriptions and handle events until cancelled."""
        await self.start()
        await asyncio.Event().wait()
