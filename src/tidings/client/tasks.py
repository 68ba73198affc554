"""Tasks: functions called through a queue, the idiom of Celery, Dramatiq and Huey.

``@client.task(queue="default")`` registers a function; ``await add.send(2, 3)`` enqueues a
call durably (arguments as JSON) and returns a :class:`TaskHandle`; a worker (``tidings worker``
or ``client.run()``) runs it and acknowledges the message only once the function has returned.
A call that raises is retried with exponential backoff up to ``retries`` times, then the message
is dead-lettered (``<queue>.dead``) and the caller's ``result()`` raises :class:`TaskError`
with the remote exception's type, message and traceback.

Results travel by request/reply, not a result store: each client that sends calls keeps one
reply queue and the worker sends the outcome there, matched by the message id
(``correlation_id``). On a connection that can be lost and come back (``amqp://``, a shared data
directory) the reply queue has a name of the client's own and outlives the connection (a
durable queue that expires after :data:`REPLY_QUEUE_EXPIRES_MS` unused), so a result sent
while the caller reconnects waits for it; elsewhere it is a private (exclusive) queue. A result
whose caller has gone for good expires with its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tidings.client.received import ReceivedMessage
from tidings.client.task_threads import TaskThreads
from tidings.client.transport import Delivery, QueueSpec, Transport
from tidings.errors import InvalidArgumentError, NotFoundError, TidingsError
from tidings.message import Message

log = logging.getLogger("tidings.tasks")


class TaskError(TidingsError):
    """A task raised in its worker; ``remote_type`` and ``remote_traceback`` say what and where."""

    code = "task_failed"

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_type, self.remote_traceback = remote_type, remote_traceback


class WorkerLostError(TidingsError):
    """A call's attempts were used up by worker processes that died while running it (killed,
    out of memory, ``os._exit``): it is dead-lettered and its caller's ``result()`` raises
    :class:`TaskError` with this type (Celery's name for the same event)."""

    code = "worker_lost"


class TaskTimeoutError(TidingsError, TimeoutError):
    """No result within the time asked for (the call may still run later)."""

    code = "timeout"


@dataclass(frozen=True)
class TaskHandle:
    """A sent call: its message id, and the way to its result."""

    id: str
    task: str
    _results: Results

    async def result(self, timeout_s: float | None = 60.0) -> Any:
        """The task's return value; raises :class:`TaskError` if it failed for good."""
        return await self._results.wait(self.id, timeout_s)


#: A reply queue with no consumer for this long is deleted (RabbitMQ's ``x-expires``).
REPLY_QUEUE_EXPIRES_MS = 3_600_000


class Results:
    """The client's reply queue and the calls waiting on it. ``transport`` gives the open
    client's transport; ``id_prefix`` names the client's reconnect-proof reply queue."""

    def __init__(self, transport: Callable[[], Transport], id_prefix: str) -> None:
        self._transport, self._id_prefix = transport, id_prefix
        self._acks: set[asyncio.Task[None]] = set()
        self.queue: str | None = None
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._lock = asyncio.Lock()
        self._consumer: Any = None

    async def reply_queue(self) -> str:
        async with self._lock:
            if self.queue is None:
                transport = self._transport()
                if getattr(transport, "name", None) is not None:  # it reconnects
                    name, spec = f"tidings.reply.{self._id_prefix}", QueueSpec(
                        durable=True, delivery_limit=None, dead_letters=False, arguments=(
                            ("x-expires", REPLY_QUEUE_EXPIRES_MS), ("x-queue-type", "classic")))
                else:
                    name, spec = "", QueueSpec(durable=False, delivery_limit=None,
                                               dead_letters=False, exclusive=True)
                self.queue = await transport.declare_queue(name, spec)
                self._consumer = await transport.consume(self.queue, 1000, self._arrived)
        # after a reconnect a private queue has a new name on the broker
        rename = getattr(self._transport(), "name", None)
        return rename(self.queue) if rename is not None else self.queue

    def expect(self, call_id: str) -> None:
        self._waiting[call_id] = asyncio.get_running_loop().create_future()

    def _arrived(self, incoming: Delivery) -> None:
        message = incoming.message
        future = self._waiting.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(message)
        task = asyncio.get_running_loop().create_task(
            self._transport().ack([incoming.delivery_tag]))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def reply(self, call_id: str, timeout_s: float | None) -> Message:
        """The reply to ``call_id`` (a message), once it arrives."""
        future = self._waiting.get(call_id)
        if future is None:
            raise InvalidArgumentError(f"no call '{call_id}' is waiting for a result here")
        try:
            message = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise TaskTimeoutError(f"no reply to call '{call_id}' within {timeout_s} s") \
                from None
        self._waiting.pop(call_id, None)
        return message

    async def wait(self, call_id: str, timeout_s: float | None) -> Any:
        outcome = json.loads((await self.reply(call_id, timeout_s)).body)
        if "error" in outcome:
            raise_failure(outcome["error"])
        return outcome.get("value")

    async def close(self) -> None:
        for task in self._acks:
            task.cancel()
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.cancel()
        for future in self._waiting.values():
            future.cancel()


class TaskClient(Protocol):
    """What tasks use of the client they are registered with (``Client`` is one)."""

    @property
    def transport(self) -> Transport: ...

    @property
    def results(self) -> Results: ...

    def new_id(self) -> str: ...

    async def send(self, queue: str, body: Any, *, headers: dict[str, Any] | None = None,
                   priority: int | None = None, delay_ms: int | None = None,
                   message_id: str | None = None, correlation_id: str | None = None,
                   reply_to: str | None = None) -> str: ...


class Task:
    """A function registered with ``@client.task``; call it directly, or ``await send(...)``."""

    def __init__(self, client: TaskClient, function: Callable[..., Any], *, name: str, queue: str,
                 retries: int, timeout_s: float | None, threads: TaskThreads,
                 delivery_limit: int | None = None) -> None:
        self.client, self.function, self.threads = client, function, threads
        self.name, self.queue, self.retries, self.timeout_s = name, queue, retries, timeout_s
        self.delivery_limit = delivery_limit
        functools.update_wrapper(self, function)  # type: ignore[arg-type]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    async def send(self, *args: Any, delay_ms: int | None = None, priority: int | None = None,
                   id: str | None = None, **kwargs: Any) -> TaskHandle:
        """Enqueue a call durably; returns its handle once the message is confirmed."""
        results = self.client.results
        reply_to = await results.reply_queue()
        body = {"task": self.name, "args": list(args), "kwargs": kwargs}
        call_id = id or self.client.new_id()
        results.expect(call_id)
        await self.client.send(self.queue, body, message_id=call_id, correlation_id=call_id,
                               reply_to=reply_to, delay_ms=delay_ms, priority=priority,
                               headers={"task": self.name})
        return TaskHandle(call_id, self.name, results)

    async def run(self, message: ReceivedMessage) -> Any:
        """Run the call a message carries, within ``timeout_s``."""
        call = message.json()
        args, kwargs = call.get("args", []), call.get("kwargs", {})
        try:
            if not inspect.iscoroutinefunction(self.function):
                return await self.threads.call(self.function, args, kwargs, self.timeout_s)
            if self.timeout_s is None:
                return await self.function(*args, **kwargs)
            return await asyncio.wait_for(self.function(*args, **kwargs), self.timeout_s)
        except TimeoutError:
            log.error("task '%s' ran past its time limit of %s s%s", self.name, self.timeout_s,
                      "" if inspect.iscoroutinefunction(self.function) else
                      f" (its thread was interrupted; {self.threads.stuck} stuck)")
            raise TimeoutError(f"task '{self.name}' ran longer than its limit of "
                               f"{self.timeout_s} s") from None


async def reply(transport: Transport, message: ReceivedMessage, data: bytes,
                content_type: str | None) -> None:
    """Send the answer to ``message`` to its caller's reply queue (dropped if the caller is
    gone, or never asked: no ``reply_to``)."""
    reply_to = message.message.reply_to
    if not reply_to:
        return
    answer = Message(data, content_type=content_type, persistent=False,
                     correlation_id=message.message.correlation_id or message.id)
    with contextlib.suppress(NotFoundError):
        await transport.send(reply_to, [answer])


async def report(transport: Transport, message: ReceivedMessage, outcome: dict[str, Any]) -> None:
    """Send a call's outcome (``{"value": ...}`` or ``{"error": ...}``) as JSON. A value JSON
    cannot carry is reported as a failure naming its type, never sent as its ``repr``."""
    try:
        data = json.dumps(outcome, separators=(",", ":")).encode()
    except (TypeError, ValueError) as e:
        what = f"a {type(outcome['value']).__name__}" if "value" in outcome else "an error"
        data = json.dumps({"error": {
            "type": "ResultNotJSONError",
            "message": f"task '{message.headers.get('task', '?')}' returned {what}, which "
                       f"is not JSON: {e}"}}).encode()
    await reply(transport, message, data, "application/json")


#: The content type of a reply that says the handler failed for good (its body: ``failure()``).
ERROR_CONTENT_TYPE = "application/vnd.tidings.error+json"


async def report_failure(transport: Transport, message: ReceivedMessage,
                         error: BaseException) -> None:
    """Tell the caller of ``client.request`` that its handler failed for good."""
    data = json.dumps(failure(error)["error"], separators=(",", ":"), default=repr).encode()
    await reply(transport, message, data, ERROR_CONTENT_TYPE)


def raise_failure(error: dict[str, Any]) -> None:
    """Raise the :class:`TaskError` a ``failure()`` describes."""
    raise TaskError(f"{error['type']}: {error['message']}", error["type"],
                    error.get("traceback", ""))


def failure(error: BaseException) -> dict[str, Any]:
    return {"error": {"type": type(error).__name__, "message": str(error),
                      "traceback": "".join(traceback.format_exception(error))}}


class TaskQueue:
    """The handler of one queue's tasks: finds the task a message names and runs it."""

    def __init__(self, client: TaskClient, queue: str) -> None:
        self.client, self.queue = client, queue
        self.tasks: dict[str, Task] = {}

    async def __call__(self, message: ReceivedMessage) -> None:
        name = message.headers.get("task") or message.json().get("task")
        task = self.tasks.get(name)
        if task is None:
            raise NotFoundError(f"no task '{name}' is registered for queue '{self.queue}'")
        await report(self.client.transport, message, {"value": await task.run(message)})

    async def failed_for_good(self, message: ReceivedMessage, error: BaseException) -> None:
        await report(self.client.transport, message, failure(error))
