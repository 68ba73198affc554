"""Events over HTTP: ``POST /events/{topic}`` and ``POST /event`` in, ``GET /events/stream``
out as server-sent events (and ``/events/ws``, their WebSocket twin).

The history is a stream, :data:`EVENTS_LOG`, bound to the events exchange with ``#``: every
event published over HTTP, AMQP or the Python API is kept there on disk for as long as its
retention says (the gateway declares it, when nobody has, with :data:`HISTORY_MAX_AGE` and
:data:`HISTORY_MAX_BYTES`). An event's id is its offset in that stream, so a client that
reconnects with ``Last-Event-ID`` gets what it missed, across server restarts, for as long as
the events are retained; an id that is not an offset resumes with live events only.

Live events reach every open stream from one consumer of the log (fan-out in memory). Each
stream has a bounded buffer (in events and in bytes): a reader that falls that far behind is
cut off with an ``event: error`` naming the limit, never allowed to grow the server's memory;
it reconnects with its last id and reads the rest from the log. What a resuming stream missed
is read from the log by a consumer of its own with a bounded prefetch.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from tidings.http.schemas import message_to_json
from tidings.message import Message
from tidings.patterns import EVENTS_EXCHANGE, topic_matches
from tidings.routing.front_door import DEFAULT_VHOST, Delivery, FrontDoor
from tidings.stream_starts import OFFSET

#: The stream that keeps the events (the Python client's ``keep_events`` uses it too).
EVENTS_LOG = "tidings.events.log"
#: The history's retention when the gateway declares the log: a week ...
HISTORY_MAX_AGE = "7D"
#: ... and at most this many bytes (the oldest whole segments go first).
HISTORY_MAX_BYTES = 2 * 2**30
#: Segment size of the history (retention drops whole segments).
HISTORY_SEGMENT_BYTES = 16 * 2**20
#: Records a resuming stream holds from the log beyond the one it is writing: one, so that a
#: client that resumes and never reads pins at most a couple of events (the log's own
#: read-ahead is bounded at 1 MB), whatever their size. Measured: 20,000 records read back
#: as fast as with 256 (each ack is answered at once by the next record).
HISTORY_PREFETCH = 1
#: Events a stream may fall behind before it is cut off ...
STREAM_BUFFER = 1_000
#: ... or bytes of their bodies.
STREAM_BUFFER_BYTES = 16 * 2**20
#: The queue that fed the in-memory history of earlier versions (hidden if still there).
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


def _logged(delivery: Delivery) -> LoggedEvent:
    """A delivery from the log as an event: its offset is its id (and leaves its headers)."""
    message = delivery.message
    headers = dict(message.headers or {})
    offset = headers.pop(OFFSET, -1)
    return LoggedEvent(int(offset), message.routing_key,
                       replace(message, headers=headers or None))


def _offset(event_id: str | None) -> int | None:
    """The offset a ``Last-Event-ID`` names (-1: before the first), or None."""
    text = (event_id or "").strip()
    if not text or len(text) > 20 or not text.lstrip("-").isdigit():
        return None
    return max(-1, int(text))


class EventLog:
    def __init__(self, broker: FrontDoor, stream_buffer: int = STREAM_BUFFER) -> None:
        self.broker = broker
        self.streams: set[Stream] = set()
        self.stream_buffer = stream_buffer
        self._session = broker.open_session(DEFAULT_VHOST, "http-event-log")
        self._unacked: list[int] = []
        self._serial = 0

    def start(self) -> None:
        self.broker.declare_exchange(DEFAULT_VHOST, EVENTS_EXCHANGE, "topic")
        if not self.broker.queue_exists(DEFAULT_VHOST, EVENTS_LOG):
            self.broker.declare_queue(DEFAULT_VHOST, EVENTS_LOG, durable=True, arguments={
                "x-queue-type": "stream", "x-max-age": HISTORY_MAX_AGE,
                "x-max-length-bytes": HISTORY_MAX_BYTES,
                "x-stream-max-segment-size-bytes": HISTORY_SEGMENT_BYTES})
        self.broker.bind(DEFAULT_VHOST, EVENTS_EXCHANGE, EVENTS_LOG, "#")
        consumer = self.broker.consume(self._session, EVENTS_LOG, self._on_delivery,
                                       prefetch_count=self.stream_buffer,
                                       arguments={OFFSET: "next"}, dispatch=False)
        consumer.on_deliveries = self._on_deliveries
        consumer.start()

    def _on_delivery(self, delivery: Delivery) -> None:
        self._on_deliveries([delivery])

    def _on_deliveries(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            event = _logged(delivery)
            for stream in self.streams:
                if topic_matches(stream.pattern, event.topic):
                    stream.push(event)
        # credit for more, on the next turn (acking here would deliver again, recursively)
        if not self._unacked:
            asyncio.get_running_loop().call_soon(self._give_credit)
        self._unacked.append(deliveries[-1].delivery_tag)

    def _give_credit(self) -> None:
        tags, self._unacked = self._unacked, []
        if tags and not self._session.closed:
            self._session.ack(max(tags), multiple=True)

    def close(self) -> None:
        """End every live stream (shutdown): SSE responses finish, WebSockets close."""
        for stream in list(self.streams):
            stream.end()

    def event_id(self, event: LoggedEvent) -> str:
        return str(event.seq)

    def tail(self) -> int:
        """The offset of the newest event in the log (-1 when there is none)."""
        last = self.broker.stream_statistics(DEFAULT_VHOST, EVENTS_LOG).last_offset
        return -1 if last is None else last

    async def missed(self, after: int, until: int, pattern: str
                     ) -> AsyncIterator[LoggedEvent]:
        """Events of the log after offset ``after`` up to ``until`` that match ``pattern``,
        read by a consumer of this stream's own (at most :data:`HISTORY_PREFETCH` ahead, in
        records; each is acknowledged once the next is asked for)."""
        if after >= until:
            return
        self._serial += 1
        session = self.broker.open_session(DEFAULT_VHOST, f"http-event-history-{self._serial}")
        arrived: deque[Delivery] = deque()
        wake = asyncio.Event()

        def on_delivery(delivery: Delivery) -> None:
            arrived.append(delivery)
            wake.set()

        try:
            self.broker.consume(session, EVENTS_LOG, on_delivery,
                                prefetch_count=HISTORY_PREFETCH,
                                arguments={OFFSET: after + 1})
            while True:
                while not arrived:
                    wake.clear()
                    await wake.wait()
                delivery = arrived.popleft()
                event = _logged(delivery)
                session.ack(delivery.delivery_tag)  # the next one arrives: one ahead at most
                if event.seq > until:
                    return
                if topic_matches(pattern, event.topic):
                    yield event
                if event.seq == until:
                    return
        finally:
            session.close()

    async def follow(self, pattern: str, last_event_id: str | None
                     ) -> AsyncIterator[LoggedEvent | str]:
        """Missed events, then live ones; ``KEEPALIVE`` when idle, ``TOO_SLOW`` at the end
        of a stream that fell too far behind. Shared by the SSE and WebSocket endpoints."""
        stream = Stream(pattern, self.stream_buffer)
        self.streams.add(stream)  # live events collect from here ...
        until = self.tail()  # ... and those up to here come from the log
        try:
            after = _offset(last_event_id)
            if after is not None:
                async for event in self.missed(after, until, pattern):
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
                if event.seq <= until:
                    continue  # read from the log already (or from before this stream)
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
