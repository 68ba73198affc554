"""Replaying retained events to a new subscription before it goes live.

``await client.keep_events(max_age="7D")`` binds a stream, :data:`EVENTS_LOG`, to the
events exchange: from then on every published event is also kept there. A subscription
made with ``replay=...`` whose queue does not exist yet (a new group, or a private
subscription) then catches up on that history before it takes live events:

1. a marker record is appended to the log (``M0``), then the subscription's queue is
   declared and bound (live events collect in it from here), then a second marker (``M1``);
2. the log is read from the replay start up to ``M1``; each event whose topic matches is
   handed to the handler (with the subscription's retries and backoff; an event that still
   fails is sent to the queue's dead letters);
3. the queue is consumed. Events between the markers may be in both the log and the queue:
   their ids are remembered and their queue copies acknowledged unhandled, so each event is
   handled once by this process (at least once across a group that starts in several
   processes at the same moment).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from tidings.client.received import CallNext, ReceivedMessage
from tidings.client.streams import Start, StreamReader, StreamRecord
from tidings.client.transport import Transport
from tidings.errors import NotFoundError
from tidings.message import Message
from tidings.patterns import topic_matches

log = logging.getLogger("tidings.client")

#: The stream that keeps published events for replay.
EVENTS_LOG = "tidings.events.log"
#: Header of the marker records a replay appends to the log (never handed to handlers).
MARKER = "x-tidings-replay-marker"


class ReplayedMessage(ReceivedMessage):
    """A retained event handed to a handler during replay: settling it does nothing (the
    log keeps it; the replay moves on once the handler returns)."""

    __slots__ = ()

    def __init__(self, transport: Transport, record: StreamRecord) -> None:
        super().__init__(transport, record.delivery)

    async def ack(self) -> None:
        self.settled = True

    async def nack(self, requeue: bool = True, delay_ms: int | None = None) -> None:
        self.settled = True

    async def reject(self) -> None:
        self.settled = True

    async def extend(self) -> None:
        pass


async def append_marker(transport: Transport) -> str:
    marker = f"replay-{uuid.uuid4().hex}"
    await transport.send(EVENTS_LOG, [Message(b"", routing_key=EVENTS_LOG,
                                                     headers={MARKER: marker},
                                                     message_id=marker)])
    return marker


async def check_events_log(transport: Transport) -> None:
    if not await transport.queue_exists(EVENTS_LOG):
        raise NotFoundError(
            "subscribe(replay=...) needs retained events: call "
            "'await client.keep_events(max_age=...)' once, before the events to replay are "
            "published")


async def replay(transport: Transport, pattern: str, start: Start, until: str, seam_from: str,
                 handle: CallNext, retries: int, backoff: Any, dead_queue: str | None
                 ) -> set[str]:
    """Hand every retained event matching ``pattern`` from ``start`` up to the marker
    ``until`` to ``handle``; returns the ids of those appended after the marker
    ``seam_from`` (their live copies are skipped)."""
    seam: set[str] = set()
    in_seam = False
    async with StreamReader(transport, EVENTS_LOG, start, None, 100) as records:
        async for record in records:
            marker = record.headers.get(MARKER)
            if marker is not None:
                if marker == until:
                    return seam
                in_seam = in_seam or marker == seam_from
                continue
            if not topic_matches(pattern, record.topic):
                continue
            if in_seam and record.id:
                seam.add(record.id)
            await _handle(transport, record, handle, retries, backoff, dead_queue)
    return seam


async def _handle(transport: Transport, record: StreamRecord, handle: CallNext, retries: int,
                  backoff: Any, dead_queue: str | None) -> None:
    for attempt in range(1, retries + 2):
        try:
            await handle(ReplayedMessage(transport, record))
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if attempt > retries:
                log.error("replayed event %s (offset %d) failed %d times, last with %r",
                          record.id, record.offset, attempt, e)
                if dead_queue is not None:
                    message = record.delivery.message
                    dead = Message(message.body, headers={
                        **record.headers, "x-replay-offset": record.offset,
                        "x-exception": repr(e)[:500]}, content_type=message.content_type,
                        message_id=message.message_id, timestamp=message.timestamp)
                    await transport.send(dead_queue, [dead])
                return
            await asyncio.sleep(backoff(attempt) / 1000.0)
