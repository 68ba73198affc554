"""The handler runner: the subscriptions, queue handlers and tasks registered on a client, and
the worker loop that runs them (Dramatiq's Worker over its Broker).

``@client.subscribe`` / ``@client.handler`` / ``@client.task`` / ``client.use`` register here;
``start`` declares each subscription's queue and starts ``concurrency`` workers per
subscription; a worker hands each delivery to the middleware chain and the handler, acks what
succeeded in batches, retries what raised with exponential backoff (a nack with a delay), and
past the retries (or past the queue's delivery limit, when processes die mid-call) tells the
caller and dead-letters the message. ``stop`` lets handlers in flight finish, then closes.

The runner knows its client only as :class:`RunnerClient`, the few calls it makes; the client
builds the runner and nothing here imports the client back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from tidings.client.bodies import encode_body
from tidings.client.received import CallNext, Inbox, ReceivedMessage
from tidings.client.replay import append_marker, check_events_log, replay
from tidings.client.streams import Start, start_argument
from tidings.client.task_threads import TaskThreads
from tidings.client.tasks import Task, TaskClient, TaskQueue, WorkerLostError, reply, report_failure
from tidings.client.transport import QueueSpec, Subscription
from tidings.dead_letters import dead_letter_queue
from tidings.errors import InvalidArgumentError
from tidings.patterns import validate_pattern

log = logging.getLogger("tidings.client")

Handler = Callable[[ReceivedMessage], Awaitable[Any]]
Middleware = Callable[[ReceivedMessage, CallNext], Awaitable[Any]]

#: Default retry policy of event handlers (Dramatiq-like, bounded: complaint #4).
DEFAULT_RETRIES = 5
DEFAULT_MIN_BACKOFF_MS = 1_000
DEFAULT_MAX_BACKOFF_MS = 5 * 60 * 1_000
DEFAULT_PREFETCH = 100
#: Event handler calls in flight per subscription.
DEFAULT_CONCURRENCY = 8
#: Handled events a worker acknowledges in one batch while more are waiting.
ACK_BATCH = 32


class RunnerClient(TaskClient, Protocol):
    """What the runner uses of its client (``Client`` is one)."""

    async def ensure_queue(self, name: str) -> None: ...

    async def ack(self, messages: list[ReceivedMessage]) -> None: ...

    async def close(self) -> None: ...


def backoff_ms(attempt: int, min_ms: int, max_ms: int) -> int:
    """Exponential backoff for the ``attempt``-th failure (1-based), capped."""
    return int(min(max_ms, min_ms * 2 ** max(0, attempt - 1)))


def subscription_queue(group: str, pattern: str) -> str:
    """The durable queue of a subscriber group: ``billing:orders.-star-`` for ``orders.*``.
    Wildcards are spelled out: AMQP client libraries (pamqp) refuse queue names with them."""
    return f"{group}:{pattern}".replace("*", "-star-").replace("#", "-hash-")


@dataclass
class Subscriber:
    """One registration: an event subscription (``pattern``, ``group``) or, with
    ``queue_name``, a queue handler or a queue of tasks."""

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
    #: A queue handler's delivery limit as asked (None: the default, see ``queue_spec``).
    delivery_limit: int | None = None
    #: Deliveries after which a message is given up as lost (set when it starts).
    max_deliveries: int = 0
    #: Where a new subscription's replay of retained events starts (None: no replay).
    replay: Start | None = None
    #: Ids of replayed events whose live copies are to be skipped (see client/replay.py).
    seam: set[str] = field(default_factory=set)

    @property
    def queue_names(self) -> set[str]:
        """The names ``tidings worker --queues`` may select it by."""
        return {self.queue_name} if self.queue_name is not None else \
            {subscription_queue(self.group or "", self.pattern)}


class HandlerRunner:
    """The registrations of one client and the workers that run them."""

    def __init__(self, client: RunnerClient) -> None:
        self.client = client
        self._subscribers: list[Subscriber] = []
        self._middleware: list[Middleware] = []
        self._subscriptions: list[Subscription] = []
        self._workers: set[asyncio.Task[None]] = set()
        self._unacked_batches: list[list[ReceivedMessage]] = []
        self._task_queues: dict[str, TaskQueue] = {}
        #: Where plain (non-async) tasks run; counts threads stuck past their time limit.
        self.task_threads = TaskThreads()
        #: Handler calls running now; :meth:`stop` waits for them.
        self._in_flight = 0
        self._stopping = False

    # -- registering ------------------------------------------------------------------------

    @property
    def subscribers(self) -> tuple[Subscriber, ...]:
        return tuple(self._subscribers)

    def keep_only(self, queues: Collection[str]) -> list[Subscriber]:
        """Drop every registration but those of ``queues`` (``tidings worker --queues``);
        returns those kept."""
        self._subscribers[:] = [s for s in self._subscribers if s.queue_names & set(queues)]
        return list(self._subscribers)

    def subscribe(self, pattern: str, *, group: str | None, retries: int,
                  min_backoff_ms: int, max_backoff_ms: int, prefetch: int, concurrency: int,
                  replay: Start | None) -> Callable[[Handler], Handler]:
        """See ``Client.subscribe``."""
        if concurrency < 1:
            raise InvalidArgumentError(f"concurrency must be >= 1, got {concurrency}")
        validate_pattern(pattern)
        if replay is not None:
            start_argument(replay)  # refuse a bad start now, not at start()

        def register(handler: Handler) -> Handler:
            self._subscribers.append(Subscriber(pattern, group, handler, retries,
                                                min_backoff_ms, max_backoff_ms, prefetch,
                                                concurrency, replay=replay))
            return handler

        return register

    def handler(self, queue: str, *, retries: int, min_backoff_ms: int, max_backoff_ms: int,
                prefetch: int, concurrency: int,
                delivery_limit: int | None) -> Callable[[Handler], Handler]:
        """See ``Client.handler``."""
        if concurrency < 1:
            raise InvalidArgumentError(f"concurrency must be >= 1, got {concurrency}")

        def register(handler: Handler) -> Handler:
            self._subscribers.append(Subscriber(
                "", None, handler, retries, min_backoff_ms, max_backoff_ms, prefetch,
                concurrency, queue_name=queue,
                on_failure=lambda message, error: report_failure(
                    self.client.transport, message, error),
                delivery_limit=delivery_limit))
            return handler

        return register

    def task(self, function: Callable[..., Any], *, queue: str, name: str | None,
             retries: int, timeout_s: float | None, min_backoff_ms: int, max_backoff_ms: int,
             concurrency: int, delivery_limit: int | None) -> Task:
        """See ``Client.task``."""
        task = Task(self.client, function,
                    name=name or f"{function.__module__}.{function.__qualname__}",
                    queue=queue, retries=retries, timeout_s=timeout_s,
                    threads=self.task_threads, delivery_limit=delivery_limit)
        runner = self._task_queues.get(queue)
        if runner is None:
            runner = self._task_queues[queue] = TaskQueue(self.client, queue)
            tasks = runner.tasks

            def retries_of(message: ReceivedMessage) -> int:
                found = tasks.get(message.headers.get("task", ""))
                return found.retries if found is not None else 0

            self._subscribers.append(Subscriber(
                "", None, runner, retries, min_backoff_ms, max_backoff_ms,
                DEFAULT_PREFETCH, concurrency, queue_name=queue,
                on_failure=runner.failed_for_good, retries_for=retries_of))
        runner.tasks[task.name] = task
        return task

    @property
    def tasks(self) -> dict[str, Task]:
        """Every registered task by name."""
        return {n: t for q in self._task_queues.values() for n, t in q.tasks.items()}

    def use(self, middleware: Middleware) -> Middleware:
        self._middleware.append(middleware)
        return middleware

    def queue_spec(self, name: str) -> QueueSpec:
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

    # -- running ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Declare and start every subscription."""
        for sub in self._subscribers:
            if not sub.queue:
                await self._start(sub)

    async def _start(self, sub: Subscriber) -> None:
        transport = self.client.transport
        sub.max_deliveries = sub.retries + 1  # (a task or handler queue: its limit)
        call: CallNext = sub.handler
        for mw in reversed(self._middleware):
            call = _wrap(mw, call)
        catch_up: str | None = None  # the marker before the subscription's queue
        if sub.replay is not None and sub.queue_name is None:
            if not transport.capabilities.streams:
                raise transport.capabilities.unsupported("streams", "replay events")
            await check_events_log(transport)
            if sub.group is None or not await transport.queue_exists(
                    subscription_queue(sub.group, sub.pattern)):
                catch_up = await append_marker(transport)
        if sub.queue_name is not None:
            await self.client.ensure_queue(sub.queue_name)
            sub.queue = sub.queue_name
            sub.max_deliveries = self.queue_spec(sub.queue_name).delivery_limit or \
                sub.max_deliveries
        elif sub.group is None:
            spec = QueueSpec(durable=False, delivery_limit=sub.retries, dead_letters=False,
                             exclusive=True)
            sub.queue = await transport.declare_queue("", spec)
        else:
            name = subscription_queue(sub.group, sub.pattern)
            spec = QueueSpec(durable=True, delivery_limit=sub.retries)
            sub.queue = await transport.declare_queue(name, spec)
        if sub.queue_name is None:
            await transport.bind_events(sub.queue, sub.pattern)
        if catch_up is not None:
            until = await append_marker(transport)
            sub.seam = await replay(
                transport, sub.pattern, sub.replay or "first", until, catch_up, call,
                sub.retries, lambda n: backoff_ms(n, sub.min_backoff_ms, sub.max_backoff_ms),
                dead_letter_queue(sub.queue) if sub.group is not None else None)
        inbox = Inbox()
        loop = asyncio.get_running_loop()
        for _ in range(sub.concurrency):
            self._workers.add(loop.create_task(self._work(sub, call, inbox)))
        self._subscriptions.append(await transport.consume(
            sub.queue, max(sub.prefetch, sub.concurrency), inbox.put))

    async def _work(self, sub: Subscriber, call: CallNext, inbox: Inbox) -> None:
        """One of a subscription's ``concurrency`` workers: handle events one at a time.

        Acks of handled events are sent in batches: at once when no event is waiting, else
        every :data:`ACK_BATCH` events (one broker round instead of one per event).
        """
        done: list[ReceivedMessage] = []
        self._unacked_batches.append(done)  # close() acks what is left in it
        waiting = inbox.items
        transport = self.client.transport
        # A task or handler queue of a broker in this very process: a handler that kills the
        # process kills the broker too, so the deliveries it got are committed (counted)
        # before it runs, once per batch: else a call that dies at once would loop for ever.
        commit_first = sub.queue_name is not None and \
            getattr(transport, "broker_in_process", False)
        while True:
            if waiting:
                delivery = waiting.popleft()
            else:
                delivery = await inbox.get()
                if commit_first:
                    await transport.sync()
            message = ReceivedMessage(transport, delivery)
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
                await self.client.ack(batch)

    async def _handle(self, sub: Subscriber, call: CallNext, message: ReceivedMessage) -> bool:
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
            return await self._failed(sub, message, error)
        sub.stats["handled"] += 1
        if value is not None and sub.queue_name is not None:  # the answer to request()
            await reply(self.client.transport, message, *encode_body(value, None))
        return True

    async def _failed(self, sub: Subscriber, message: ReceivedMessage,
                      error: BaseException) -> bool:
        """The handler raised: retry after a backoff, or give up past the retries."""
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

    async def _give_up(self, sub: Subscriber, message: ReceivedMessage, error: BaseException,
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

    async def stop(self, grace_s: float) -> bool:
        """Stop taking new work, let handlers in flight finish within ``grace_s``, then close
        the client (which acks what they finished). True when every handler finished."""
        self._stopping = True
        transport = self.client.transport
        if hasattr(transport, "stopping"):  # (a transport that reconnects)
            transport.stopping = True
        await self._cancel_subscriptions()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self._in_flight and loop.time() < deadline:
            await asyncio.sleep(0.02)
        finished = not self._in_flight
        await self.client.close()
        return finished

    async def close(self) -> None:
        """Stop the workers; ack the handled events whose batched ack is pending."""
        for task in self._workers:
            task.cancel()
        for done in self._unacked_batches:
            if done:
                await self.client.ack(list(done))
            done.clear()
        await self._cancel_subscriptions()

    async def _cancel_subscriptions(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.cancel()

    def stats(self) -> dict[str, int]:
        """Handled, failed and retried messages over every handler, task and subscription."""
        total = {"handled": 0, "failed": 0, "retried": 0}
        for sub in self._subscribers:
            for key, value in sub.stats.items():
                total[key] = total.get(key, 0) + value
        return total


def _wrap(mw: Middleware, call_next: CallNext) -> CallNext:
    async def call(message: ReceivedMessage) -> Any:
        return await mw(message, call_next)

    return call


def _handler_name(sub: Subscriber, message: ReceivedMessage) -> str:
    """How logs name what ran: ``task 'app.add'`` or ``handler bill``."""
    if sub.retries_for is not None:  # a queue of tasks
        return f"task '{message.headers.get('task', '?')}'"
    return f"handler {getattr(sub.handler, '__name__', sub.handler)}"
