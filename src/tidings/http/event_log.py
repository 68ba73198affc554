"""Events over HTTP: ``POST /events/{topic}`` and ``POST /event`` in, ``GET /events/stream``
out as server-sent events.

:class:`EventLog` keeps the most recent events (all topics) in order, each with an id
``<epoch>-<seq>``; a stream that reconnects with ``Last-Event-ID`` gets what it missed while
those events are still retained. It is fed by an exclusive queue bound to the events exchange
with ``#``, so events published over AMQP or the Python API show up too. Each stream has a
bounded buffer (in events and in bytes): a reader that falls that far behind is cut off with an
``event: error`` naming the limit, never allowed to grow the server's memory. The history is
bounded in bytes as well as in events, so large events cannot make it grow past its budget.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tidings.http.schemas import message_to_json
from tidings.message import Message
from tidings.patterns import EVENTS_EXCHANGE, topic_matches
from tidings.routing.front_door import DEFAULT_VHOST, Delivery, FrontDoor

#: Events kept for resuming streams ...
DEFAULT_RETAIN = 10_000
#: ... and at most this many bytes of their bodies (large events are forgotten sooner).
DEFAULT_RETAIN_BYTES = 32 * 2**20
#: Events a stream may fall behind before it is cut off ...
STREAM_BUFFER = 1_000
#: ... or bytes of their bodies.
STREAM_BUFFER_BYTES = 16 * 2**20
#: The gateway's own queue feeding the event log (hidden on the dashboard).
EVENT_LOG_QUEUE = "tidings.http.event-log"


def is_internal_queue(name: str) -> bool:
    """The gateway's own queues: not shown in listings, counts or metrics."""
    return name == EVENT_LOG_QUEUE


#: Seconds between keep-alive comments on an idle stream.
KEEPALIVE_S = 15.0
KEEPALIVE, TOO_SLOW = "keepalive", "too_slow"


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    seq: int
    topic: str
    message: Message


class Stream:
    def __init__(self, pattern: str, limit: int, limit_bytes: int = STREAM_BUFFER_BYTES) -> None:
        self.pattern = pattern
        #: None ends the stream (the server is shutting down).
        self.queue: asyncio.Queue[LoggedEvent | None] = asyncio.Queue(maxsize=limit)
        self.limit_bytes = limit_bytes
        #: Body bytes waiting in ``queue`` (an upper bound: taken events are not subtracted
        #: until the reader catches up, see :meth:`taken`).
        self.queued_bytes = 0
        self.overflowed = False

    def push(self, event: LoggedEvent) -> None:
        if self.overflowed:
            return
        size = len(event.message.body)
        if self.queued_bytes + size > self.limit_bytes and not self.queue.empty():
            self.overflowed = True
            return
        try:
            self.queue.put_nowait(event)
            self.queued_bytes += size
        except asyncio.QueueFull:
            self.overflowed = True

    def end(self) -> None:
        """Make the reader's next read return: the stream ends after what it already has."""
        self.overflowed = True  # nothing more is pushed
        while True:
            try:
                self.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()  # the reader is cut off anyway: drop one to make room

    def taken(self, event: LoggedEvent) -> None:
        self.queued_bytes -= len(event.message.body)


class EventLog:
    def __init__(self, broker: FrontDoor, retain: int = DEFAULT_RETAIN,
                 stream_buffer: int = STREAM_BUFFER,
                 retain_bytes: int = DEFAULT_RETAIN_BYTES) -> None:
        self.broker = broker
        self.epoch = str(int(time.time() * 1000))
        self.events: deque[LoggedEvent] = deque()
        self.retain, self.retain_bytes = retain, retain_bytes
        #: Body bytes of the retained events.
        self.retained_bytes = 0
        self.streams: set[Stream] = set()
        self.stream_buffer = stream_buffer
        self._seq = 0
        self._session = broker.open_session(DEFAULT_VHOST, "http-event-log")

    def start(self) -> None:
        self.broker.declare_exchange(DEFAULT_VHOST, EVENTS_EXCHANGE, "topic")
        queue = self.broker.declare_queue(DEFAULT_VHOST, EVENT_LOG_QUEUE, durable=False,
                                          exclusive=True, auto_delete=True,
                                          connection_id="http-event-log")
        self.broker.bind(DEFAULT_VHOST, EVENTS_EXCHANGE, queue.name, "#")
        self.broker.consume(self._session, queue.name, self._on_delivery, no_ack=True)

    def _on_delivery(self, delivery: Delivery) -> None:
        self._seq += 1
        event = LoggedEvent(self._seq, delivery.message.routing_key, delivery.message)
        self.events.append(event)
        self.retained_bytes += len(event.message.body)
        while len(self.events) > self.retain or (self.retained_bytes > self.retain_bytes and
                                                 len(self.events) > 1):
            self.retained_bytes -= len(self.events.popleft().message.body)
        for stream in self.streams:
            if topic_matches(stream.pattern, event.topic):
                stream.push(event)

    def close(self) -> None:
        """End every live stream (shutdown): SSE responses finish, WebSockets close."""
        for stream in list(self.streams):
            stream.end()

    def event_id(self, event: LoggedEvent) -> str:
        return f"{self.epoch}-{event.seq}"

    def missed(self, last_event_id: str, pattern: str) -> list[LoggedEvent]:
        """Retained events after ``last_event_id`` (all retained ones if it is unknown)."""
        epoch, _, seq_text = last_event_id.partition("-")
        after = int(seq_text) if epoch == self.epoch and seq_text.isdigit() else 0
        return [e for e in self.events if e.seq > after and topic_matches(pattern, e.topic)]

    async def follow(self, pattern: str, last_event_id: str | None
                     ) -> AsyncIterator[LoggedEvent | str]:
        """Missed events, then live ones; ``KEEPALIVE`` when idle, ``TOO_SLOW`` at the end
        of a stream that fell too far behind. Shared by the SSE and WebSocket endpoints."""
        stream = Stream(pattern, self.stream_buffer)
        backlog = self.missed(last_event_id, pattern) if last_event_id else []
        self.streams.add(stream)
        try:
            for event in backlog:
                yield event
            while True:
                try:
                    event = await asyncio.wait_for(stream.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield KEEPALIVE
                    continue
                if event is None:
                    return
                stream.taken(event)
                yield event
                if stream.overflowed and stream.queue.empty():
                    yield TOO_SLOW
                    return
        finally:
            self.streams.discard(stream)

    def too_slow(self) -> dict[str, str]:
        return {"error": "too_slow", "message": f"this stream fell more than "
                f"{self.stream_buffer} events or {STREAM_BUFFER_BYTES // 2**20} MiB behind "
                f"and was closed; reconnect with the last event id to resume"}

    def as_json(self, event: LoggedEvent) -> dict[str, object]:
        return {"event_id": self.event_id(event),
                **message_to_json(event.message, topic=event.topic)}

    async def stream(self, pattern: str, last_event_id: str | None) -> AsyncIterator[str]:
        """The SSE text of :meth:`follow`."""
        yield "retry: 2000\n\n"
        async for item in self.follow(pattern, last_event_id):
            if item == KEEPALIVE:
                yield ": keep-alive\n\n"
            elif item == TOO_SLOW:
                yield f"event: error\ndata: {json.dumps(self.too_slow())}\n\n"
            elif isinstance(item, LoggedEvent):
                yield self.format(item)

    def format(self, event: LoggedEvent) -> str:
        data = message_to_json(event.message, topic=event.topic)
        return f"id: {self.event_id(event)}\nevent: message\ndata: {json.dumps(data)}\n\n"


class IdempotencyKeys:
    """Keys seen within ``window_s``: the same key is accepted once (bounded memory)."""

    def __init__(self, window_s: float = 24 * 3600, capacity: int = 100_000) -> None:
        self.window_s, self.capacity = window_s, capacity
        self._seen: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def find(self, key: str) -> str | None:
        now = time.monotonic()
        while self._seen:
            oldest_key, (at, _) = next(iter(self._seen.items()))
            if now - at <= self.window_s and len(self._seen) <= self.capacity:
                break
            del self._seen[oldest_key]
        found = self._seen.get(key)
        return found[1] if found else None

    def remember(self, key: str, event_id: str) -> None:
        self._seen[key] = (time.monotonic(), event_id)
