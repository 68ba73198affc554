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
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidings.client.received import Inbox, ReceivedMessage, Receiver
from tidings.client.replay import EVENTS_LOG, append_marker, check_events_log, replay
from tidings.client.streams import Start, StreamReader, start_argument
from tidings.client.task_threads import TaskThreads
from tidings.client.tasks import (
    ERROR_CONTENT_TYPE,
    Results,
    Task,
    TaskQueue,
    WorkerLostError,
    raise_failure,
    reply,
    report_failure,
)
from tidings.client.transport import (
    QueueSpec,
    StreamSpec,
    Subscription,
    Transport,
)
from tidings.dead_letters import dead_letter_queue
from tidings.errors import ClosedResourceError, InvalidArgumentError
from tidings.message import Message
from tidings.patterns import validate_pattern
from tidings.values import header_problem

log = logging.getLogger("tidings.client")

Handler = Callable[["ReceivedMessage"], Awaitable[Any]]
CallNext = Callable[["ReceivedMessage"], Awaitable[Any]]
Middleware = Callable[["ReceivedMessage", CallNext], Awaitable[Any]]

#: Default retry policy of event handlers (Dramatiq-like, bounded: complaint #4).
DEFAULT_RETRIES = 5
DEFAULT_MIN_BACKOFF_MS = 1_000
DEFAULT_MAX_BACKOFF_MS = 5 * 60 * 1_000
DEFAULT_PREFETCH = 100
#: Event handler calls in flight per subscription.
DEFAULT_CONCURRENCY = 8
#: Handled events a worker acknowledges in one batch while more are waiting.
ACK_BATCH = 32


_BINARY = (bytes, bytearray, memoryview)


def encode_body(body: Any, content_type: str | None) -> tuple[bytes, str | None]:
    """bytes pass through; str is UTF-8 text; anything else is JSON."""
    if isinstance(body, _BINARY):
        return bytes(body), content_type
    if isinstance(body, str):
        return body.encode(), content_type or "text/plain; charset=utf-8"
    try:
        return json.dumps(body, separators=(",", ":")).encode(), content_type or "application/json"
    except TypeError as e:
        raise InvalidArgumentError(
            f"message body of type {type(body).__name__} is not bytes, str or JSON-able"
        ) from e


def backoff_ms(attempt: int, min_ms: int, max_ms: int) -> int:
    """Exponential backoff for the ``attempt``-th failure (1-based), capped."""
    return int(min(max_ms, min_ms * 2 ** max(0, attempt - 1)))


@dataclass
class _Subscriber:
    pattern: str
    group: str | None
    handler: Handler
    retries: int
    min_backoff_ms: int
    max_backoff_ms: int
    prefetch: int
    concurrency: int
    queue: str = ""
    stats: dict[str, int] = field(default_factory=lambda: {"handled": 0, "failed": 0})
    #: Set for a queue handler (and tasks): consume this queue instead of a subscription's.
    queue_name: str | None = None
    #: Called once a message has failed for the last time, before it is dead-lettered.
    on_failure: Callable[[ReceivedMessage, BaseException], Awaitable[None]] | None = None
    #: Retries allowed for one message, when they differ per message (tasks).
    retries_for: Callable[[ReceivedMessage], int] | None = None
    #: A queue handler's delivery limit as asked (None: the default, see ``_queue_spec``).
    delivery_limit: int | None = None
    #: Deliveries after which a message is given up as lost (set when it starts).
    max_deliveries: int = 0
    #: Where a new subscription's replay of retained events starts (None: no replay).
    replay: Start | None = None
    #: Ids of replayed events whose live copies are to be skipped (see client/replay.py).
    seam: set[str] = field(default_factory=set)


class Client:
    """A connection to a tidings broker (embedded or remote) through one :class:`Transport`."""

    def __init__(self, url: str | None = None, *,
                 transport_factory: Callable[[], Awaitable[Transport]] | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 management_url: str | None = None) -> None:
        self.url = url
        self._ssl = ssl_context
        self._management = management_url
        self._factory = transport_factory
        self._transport: Transport | None = None
        self._declared: set[str] = set()
        self._subscribers: list[_Subscriber] = []
        self._middleware: list[Middleware] = []
        self._subscriptions: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._receivers: set[Receiver] = set()
        self._readers: set[StreamReader] = set()
        self._streams: set[str] = set()
        self._unacked_batches: list[list[ReceivedMessage]] = []
        #: Message ids: a random per-client prefix and a counter (unique, and cheap to make).
        self.id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)
        self._closed = False
        self._task_queues: dict[str, TaskQueue] = {}
        #: Where plain (non-async) tasks run; counts threads stuck past their time limit.
        self.task_threads = TaskThreads()
        #: Handler calls running now; :meth:`stop` waits for them.
        self._in_flight = 0
        self._stopping = False
        self._results = Results(self)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> Client:
        if self._transport is None:
            if self._factory is None:
                from tidings.client.urls import open_transport  # imports backends lazily

                self._transport = await open_transport(self.url or "", ssl_context=self._ssl,
                                                      management_url=self._management)
            else:
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
        for task in self._tasks:
            task.cancel()
        for done in self._unacked_batches:  # handled events whose batched ack is pending
            if done and self._transport is not None:
                await self._transport.ack([m._settle() for m in done])
            done.clear()
        self._closed = True
        await self._results.close()
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.cancel()
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

    async def _ensure_queue(self, name: str) -> None:
        if name in self._declared:
            return
        if not await self.transport.queue_exists(name):
            await self.transport.declare_queue(name, self._queue_spec(name))
        self._declared.add(name)

    def _queue_spec(self, name: str) -> QueueSpec:
        """How a queue this client sends to is declared: a task or handler queue gets a
        delivery limit above every retry its handlers make (at least the default of
        :class:`QueueSpec`), computed from the registrations, so the producer and the worker
        (which share the code that registers them) declare it alike whoever comes first. The
        limit ends a message that kills its consumer's process, which retries never see."""
        asked = [(s.delivery_limit, s.retries) for s in self._subscribers
                 if s.queue_name == name and s.retries_for is None]
        if name in self._task_queues:
            asked += [(t.delivery_limit, t.retries) for t in self._task_queues[name].tasks.values()]
        default = QueueSpec()
        if not asked:
            return default
        fallback = default.delivery_limit or 0
        return QueueSpec(delivery_limit=max(
            max(fallback if limit is None else limit, retries + 1) for limit, retries in asked))

    def _message(self, body: Any, *, headers: dict[str, Any] | None, priority: int | None,
                 ttl_ms: int | None, message_id: str | None, content_type: str | None,
                 persistent: bool, correlation_id: str | None = None,
                 reply_to: str | None = None) -> Message:
        data, ctype = encode_body(body, content_type)
        if headers:
            _check_headers(headers)
        return Message(
            data, headers=dict(headers) if headers else None, persistent=persistent,
            content_type=ctype, priority=priority,
            expiration=None if ttl_ms is None else str(int(ttl_ms)),
            message_id=message_id or self._new_id(),
            timestamp=int(time.time()),
            correlation_id=correlation_id, reply_to=reply_to,
        )

    def _messages(self, bodies: Iterable[Any], headers: dict[str, Any] | None,
                  persistent: bool) -> list[Message]:
        """:meth:`_message` for a batch: the clock read and the id prefix looked up once."""
        now, prefix, ids = int(time.time()), self.id_prefix, self._ids
        if headers:
            _check_headers(headers)
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
            await self._ensure_queue(queue)
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
        await self._ensure_queue(queue)
        messages = self._messages(bodies, headers, persistent)
        await self.transport.send(queue, messages, delay_ms)
        return [m.message_id or "" for m in messages]

    async def get(self, queue: str) -> ReceivedMessage | None:
        """The next message of ``queue``, or None when it is empty. Settle it."""
        await self._ensure_queue(queue)
        incoming = await self.transport.get(queue)
        return None if incoming is None else ReceivedMessage(self, incoming)

    def receive(self, queue: str, *, prefetch: int = DEFAULT_PREFETCH) -> Receiver:
        """Messages of ``queue`` as they come; at most ``prefetch`` unsettled at once.

        Use ``async with client.receive(q) as messages: async for m in messages: ...`` so that
        leaving the block stops the consumer at once; messages received but not yet handed to
        you go back to the queue. (A bare ``async for`` works too; the consumer then stops when
        the client closes.)
        """
        if prefetch < 1:
            raise InvalidArgumentError(f"prefetch must be >= 1, got {prefetch}")
        receiver = Receiver(self, queue, prefetch)
        self._receivers.add(receiver)
        return receiver

    async def ack(self, messages: Sequence[ReceivedMessage]) -> None:
        """Batch form of ``message.ack()``."""
        await self.transport.ack([m._settle() for m in messages])

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
        await self._ensure_queue(queue)
        return await self.transport.dead_letters(queue, limit)

    async def replay_dead_letters(self, queue: str, ids: Iterable[str] | None = None) -> int:
        """Move dead letters (all, or those with ``ids``) back into ``queue``; returns how many."""
        await self._ensure_queue(queue)
        return await self.transport.replay_dead_letters(
            queue, set(ids) if ids is not None else None)

    async def purge_dead_letters(self, queue: str) -> int:
        await self._ensure_queue(queue)
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
        found = StreamReader(self, stream, start, reader, prefetch)
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
        if concurrency < 1:
            raise InvalidArgumentError(f"concurrency must be >= 1, got {concurrency}")
        validate_pattern(pattern)
        if replay is not None:
            start_argument(replay)  # refuse a bad start now, not at start()

        def register(handler: Handler) -> Handler:
            self._subscribers.append(_Subscriber(pattern, group, handler, retries,
                                                 min_backoff_ms, max_backoff_ms, prefetch,
                                                 concurrency, replay=replay))
            return handler

        return register

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
        if concurrency < 1:
            raise InvalidArgumentError(f"concurrency must be >= 1, got {concurrency}")

        def register(handler: Handler) -> Handler:
            self._subscribers.append(_Subscriber(
                "", None, handler, retries, min_backoff_ms, max_backoff_ms, prefetch,
                concurrency, queue_name=queue,
                on_failure=lambda message, error: report_failure(self, message, error),
                delivery_limit=delivery_limit))
            return handler

        return register

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
            task = Task(self, fn, name=name or f"{fn.__module__}.{fn.__qualname__}",
                        queue=queue, retries=retries, timeout_s=timeout_s,
                        threads=self.task_threads, delivery_limit=delivery_limit)
            runner = self._task_queues.get(queue)
            if runner is None:
                runner = self._task_queues[queue] = TaskQueue(self, queue)
                tasks = runner.tasks

                def retries_of(message: ReceivedMessage) -> int:
                    found = tasks.get(message.headers.get("task", ""))
                    return found.retries if found is not None else 0

                self._subscribers.append(_Subscriber(
                    "", None, runner, retries, min_backoff_ms, max_backoff_ms,
                    DEFAULT_PREFETCH, concurrency, queue_name=queue,
                    on_failure=runner.failed_for_good, retries_for=retries_of))
            runner.tasks[task.name] = task
            return task

        return register(function) if function is not None else register

    @property
    def tasks(self) -> dict[str, Task]:
        """Every registered task by name."""
        return {n: t for q in self._task_queues.values() for n, t in q.tasks.items()}

    async def request(self, queue: str, body: Any, *, timeout_s: float | None = 30.0,
                      headers: dict[str, Any] | None = None) -> Any:
        """Send ``body`` to ``queue`` and wait for the reply of its handler (plain RPC): JSON
        replies come back decoded, text as ``str``, anything else as ``bytes``; a handler that
        failed for good (after its retries) raises :class:`TaskError` here."""
        reply_to = await self._results.reply_queue()
        call_id = self._new_id()
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

    def _new_id(self) -> str:
        return f"{self.id_prefix}-{next(self._ids):x}"

    def use(self, middleware: Middleware) -> Middleware:
        """Add middleware around every handler call: ``async def mw(message, call_next)``."""
        self._middleware.append(middleware)
        return middleware

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
        """Declare and start every subscription (``run`` calls this, then waits)."""
        for sub in self._subscribers:
            if sub.queue:
                continue
            sub.max_deliveries = sub.retries + 1  # (a task or handler queue: its limit)
            call: CallNext = sub.handler
            for mw in reversed(self._middleware):
                call = _wrap(mw, call)
            catch_up: str | None = None  # the marker before the subscription's queue
            if sub.replay is not None and sub.queue_name is None:
                self._check_streams("replay events")
                await check_events_log(self)
                if sub.group is None or not await self.transport.queue_exists(
                        subscription_queue(sub.group, sub.pattern)):
                    catch_up = await append_marker(self)
            if sub.queue_name is not None:
                await self._ensure_queue(sub.queue_name)
                sub.queue = sub.queue_name
                sub.max_deliveries = self._queue_spec(sub.queue_name).delivery_limit or \
                    sub.max_deliveries
            elif sub.group is None:
                spec = QueueSpec(durable=False, delivery_limit=sub.retries, dead_letters=False,
                                 exclusive=True)
                sub.queue = await self.transport.declare_queue("", spec)
            else:
                name = subscription_queue(sub.group, sub.pattern)
                spec = QueueSpec(durable=True, delivery_limit=sub.retries)
                sub.queue = await self.transport.declare_queue(name, spec)
            if sub.queue_name is None:
                await self.transport.bind_events(sub.queue, sub.pattern)
            if catch_up is not None:
                until = await append_marker(self)
                sub.seam = await replay(
                    self, sub.pattern, sub.replay or "first", until, catch_up, call,
                    sub.retries,
                    lambda n, s=sub: backoff_ms(n, s.min_backoff_ms, s.max_backoff_ms),
                    dead_letter_queue(sub.queue) if sub.group is not None else None)
            inbox = Inbox()
            loop = asyncio.get_running_loop()
            for _ in range(sub.concurrency):
                self._tasks.add(loop.create_task(self._work(sub, call, inbox)))
            self._subscriptions.append(await self.transport.consume(
                sub.queue, max(sub.prefetch, sub.concurrency), inbox.put))

    async def _work(self, sub: _Subscriber, call: CallNext, inbox: Inbox) -> None:
        """One of a subscription's ``concurrency`` workers: handle events one at a time.

        Acks of handled events are sent in batches: at once when no event is waiting, else
        every :data:`ACK_BATCH` events (one broker round instead of one per event).
        """
        done: list[ReceivedMessage] = []
        self._unacked_batches.append(done)  # close() acks what is left in it
        waiting = inbox.items
        # A task or handler queue of a broker in this very process: a handler that kills the
        # process kills the broker too, so the deliveries it got are committed (counted)
        # before it runs, once per batch: else a call that dies at once would loop for ever.
        commit_first = sub.queue_name is not None and \
            getattr(self.transport, "broker_in_process", False)
        while True:
            if waiting:
                delivery = waiting.popleft()
            else:
                delivery = await inbox.get()
                if commit_first:
                    await self.transport.sync()
            message = ReceivedMessage(self, delivery)
            if self._stopping:  # stop() was called: back to the queue, unhandled
                await message.nack(requeue=True)
                continue
            if sub.seam and message.id in sub.seam:  # handled already, during the replay
                sub.seam.discard(message.id)
                handled = True
            else:
                self._in_flight += 1
                try:
                    handled = await self._handle(sub, call, message)
                finally:
                    self._in_flight -= 1
            if handled and not message.settled:
                done.append(message)
            if done and (not waiting or len(done) >= ACK_BATCH):
                batch = list(done)
                done.clear()
                await self.ack(batch)

    async def _handle(self, sub: _Subscriber, call: CallNext, message: ReceivedMessage) -> bool:
        """Run the handler; True when it succeeded and the message still needs its ack."""
        if message.redelivered and (attempt := message.delivery_count) > sub.max_deliveries:
            return await self._give_up(sub, message, WorkerLostError(
                f"{_handler_name(sub, message)} was delivered {attempt} times, past its "
                f"queue's delivery limit of {sub.max_deliveries}: the processes handling it "
                f"died or were stopped (killed, out of memory, os._exit)"), attempt)
        try:
            value = await call(message)
        except (Exception, asyncio.CancelledError) as error:
            task = asyncio.current_task()
            if isinstance(error, asyncio.CancelledError) and task is not None and \
                    task.cancelling():
                raise  # this worker is being stopped: not the handler's failure
            sub.stats["failed"] += 1
            attempt = message.delivery_count
            retries = sub.retries if sub.retries_for is None else sub.retries_for(message)
            if attempt > retries:
                return await self._give_up(sub, message, error, attempt)
            sub.stats["retried"] = sub.stats.get("retried", 0) + 1
            delay = backoff_ms(attempt, sub.min_backoff_ms, sub.max_backoff_ms)
            log.warning("%s failed (attempt %d of %d): %s: %s; retry in %d ms",
                        _handler_name(sub, message), attempt, retries + 1,
                        type(error).__name__, error, delay)
            if not message.settled:
                await message.nack(requeue=True, delay_ms=delay)
            return False
        sub.stats["handled"] += 1
        if value is not None and sub.queue_name is not None:  # the answer to request()
            await reply(self, message, *encode_body(value, None))
        return True

    async def _give_up(self, sub: _Subscriber, message: ReceivedMessage, error: BaseException,
                       attempt: int) -> bool:
        """The last attempt failed: log it once with its traceback, tell the caller, and
        dead-letter the message."""
        log.error("%s failed for good on %r (attempt %d); dead-lettered",
                  _handler_name(sub, message), message, attempt,
                  exc_info=None if isinstance(error, WorkerLostError) else error)
        if sub.on_failure is not None:
            await sub.on_failure(message, error)
        if not message.settled:
            await message.reject()
        return False

    async def stop(self, grace_s: float = 30.0) -> bool:
        """Stop taking new work, let handlers in flight finish within ``grace_s``, acknowledge
        what they finished and return the rest to the queue (then close). True when every
        handler finished in time."""
        self._stopping = True
        if hasattr(self.transport, "stopping"):  # (a transport that reconnects)
            self.transport.stopping = True
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self._in_flight and loop.time() < deadline:
            await asyncio.sleep(0.02)
        finished = not self._in_flight
        await self.close()
        return finished

    def handler_stats(self) -> dict[str, int]:
        """Handled, failed and retried messages over every handler, task and subscription."""
        total = {"handled": 0, "failed": 0, "retried": 0}
        for sub in self._subscribers:
            for key, value in sub.stats.items():
                total[key] = total.get(key, 0) + value
        return total

    async def run(self) -> None:
        """Start the subscriptions and handle events until cancelled."""
        await self.start()
        await asyncio.Event().wait()


def subscription_queue(group: str, pattern: str) -> str:
    """The durable queue of a subscriber group: ``billing:orders.-star-`` for ``orders.*``.
    Wildcards are spelled out: AMQP client libraries (pamqp) refuse queue names with them."""
    return f"{group}:{pattern}".replace("*", "-star-").replace("#", "-hash-")


def _wrap(mw: Middleware, call_next: CallNext) -> CallNext:
    async def call(message: ReceivedMessage) -> Any:
        return await mw(message, call_next)

    return call


def connect(url: str, *, ssl_context: ssl.SSLContext | None = None,
            management_url: str | None = None) -> Client:
    """A client for ``url``: a path or ``file:`` URL (embedded, durable; shared with other
    processes through its owner), ``memory://`` (embedded, in memory), or
    ``amqp://user:password@host:port/vhost`` / ``amqps://...`` (tidings serve or RabbitMQ;
    ``ssl_context`` for TLS, or aiormq's ``?cafile=...&certfile=...&keyfile=...``;
    ``management_url`` such as ``http://guest:guest@host:15672`` for full statistics)."""
    return Client(url, ssl_context=ssl_context, management_url=management_url)


def _check_headers(headers: dict[str, Any]) -> None:
    """Headers every transport and every face can deliver (see :mod:`tidings.values`)."""
    if problem := header_problem(headers):
        raise InvalidArgumentError(problem)


def _handler_name(sub: _Subscriber, message: ReceivedMessage) -> str:
    """How logs name what ran: ``task 'app.add'`` or ``handler bill``."""
    if sub.retries_for is not None:  # a queue of tasks
        return f"task '{message.headers.get('task', '?')}'"
    return f"handler {getattr(sub.handler, '__name__', sub.handler)}"
