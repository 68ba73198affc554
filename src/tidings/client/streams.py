"""Reading a stream: :class:`StreamRecord` (one record, with its offset and timestamp) and
:class:`StreamReader` (an async iterator and an async context manager over a stream, from a
start you choose or from where a named reader committed).

A reader holds at most ``prefetch`` records it has not handed out; handing one out gives the
broker credit for the next, so reading a stream far larger than memory keeps memory flat.
Nothing is removed by reading: any number of readers read the same stream, each at its pace.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable
from typing import Any

from tidings.client.received import Inbox, MessageView
from tidings.client.transport import Delivery, Subscription, Transport
from tidings.errors import InvalidArgumentError
from tidings.stream_starts import OFFSET, READER

__all__ = ["START_CHOICES", "Start", "StreamReader", "StreamRecord", "start_argument"]

#: Where a reader may start, besides an offset, a datetime, a timedelta or an age ("1h").
START_CHOICES = ("first", "last", "next")
#: Records read before their credit goes back to the broker in one round.
ACK_EVERY = 32

Start = str | int | datetime.datetime | datetime.timedelta


def start_argument(start: Start) -> Any:
    """``start`` as the ``x-stream-offset`` consumer argument (RabbitMQ's forms)."""
    if isinstance(start, bool):
        raise InvalidArgumentError(f"start={start!r}: not a start choice")
    if isinstance(start, datetime.timedelta):
        seconds = int(start.total_seconds())
        if seconds < 0:
            raise InvalidArgumentError(f"start={start!r}: a negative age")
        return f"{seconds}s"
    if isinstance(start, int):
        if start < 0:
            raise InvalidArgumentError(f"start={start}: offsets start at 0")
        return start
    if isinstance(start, datetime.datetime):
        return start if start.tzinfo else start.replace(tzinfo=datetime.UTC)
    if isinstance(start, str) and (start in START_CHOICES or (
            start[:-1].isdigit() and start[-1:] in ("Y", "M", "D", "h", "m", "s"))):
        return start
    raise InvalidArgumentError(
        f"start={start!r}: use 'first', 'last', 'next', an offset, a datetime, a timedelta or "
        f"an age such as '1h' (units Y, M, D, h, m, s)")


class StreamRecord(MessageView):
    """One record of a stream: its ``offset``, when it was appended (``timestamp``, seconds
    since the epoch) and the message itself (``body``, ``text()``, ``json()``, ``id``...)."""

    __slots__ = ("offset",)

    def __init__(self, incoming: Delivery) -> None:
        self._incoming = incoming
        headers = incoming.message.headers or {}
        self.offset: int = int(headers.get(OFFSET, -1))

    @property
    def headers(self) -> dict[str, Any]:
        """The headers it was appended with (without ``x-stream-offset``)."""
        return {k: v for k, v in (self._incoming.message.headers or {}).items() if k != OFFSET}

    @property
    def timestamp(self) -> float | None:
        ts = self._incoming.message.timestamp
        return None if ts is None else float(ts)

    def __repr__(self) -> str:
        return f"StreamRecord(offset={self.offset}, id={self.id!r}, {len(self.body)} bytes)"


class StreamReader:
    """An open reader of one stream. ``async for record in reader`` hands out records in
    offset order; it waits at the tail for new ones until you leave the loop or close it.

    With a ``reader`` name, it starts after the offset that name last committed
    (``await reader.commit()``), or at ``start`` when the name has committed nothing yet.
    """

    def __init__(self, transport: Transport, stream: str, start: Start, reader: str | None,
                 prefetch: int, closed: Callable[[StreamReader], None] | None = None) -> None:
        """``closed`` is told when the reader closes (its owner stops tracking it)."""
        if prefetch < 1:
            raise InvalidArgumentError(f"prefetch must be >= 1, got {prefetch}")
        if reader is not None and not reader:
            raise InvalidArgumentError("a named reader needs a non-empty name")
        self._transport, self.stream, self.reader = transport, stream, reader
        self._on_close = closed
        self._start_at = start_argument(start)
        self.prefetch = prefetch
        self._inbox = Inbox()
        self._buffer = self._inbox.items
        self._credit: list[Any] = []
        self._subscription: Subscription | None = None
        self._closed = False
        #: The offset of the last record handed out (what :meth:`commit` stores by default).
        self.position: int | None = None

    async def _open(self) -> None:
        arguments: dict[str, Any] = {OFFSET: self._start_at}
        if self.reader is not None:  # the broker starts it after the reader's commit
            arguments[READER] = self.reader
        self._subscription = await self._transport.consume(
            self.stream, self.prefetch, self._inbox.put, arguments)

    def __aiter__(self) -> StreamReader:
        return self

    async def __anext__(self) -> StreamRecord:
        if self._closed:
            raise StopAsyncIteration
        if self._subscription is None:
            await self._open()
        while not self._buffer:
            if self._credit:  # (more may arrive while this awaits: look again)
                await self._give_credit()
                continue
            if self._closed:
                raise StopAsyncIteration
            await self._inbox.wait()
        incoming = self._buffer.popleft()
        self._credit.append(incoming.delivery_tag)
        if len(self._credit) >= min(ACK_EVERY, max(1, self.prefetch // 2)):
            await self._give_credit()
        record = StreamRecord(incoming)
        self.position = record.offset
        return record

    async def _give_credit(self) -> None:
        """Acknowledge what was handed out: on a stream, an ack only lets more come."""
        if self._credit:
            credit, self._credit = self._credit, []
            await self._transport.ack(credit)

    async def commit(self, offset: int | StreamRecord | None = None) -> None:
        """Store, in the broker, that this named reader has processed the stream up to
        ``offset`` (by default the last record handed out): a reader of that name started
        later, in any process, resumes after it."""
        if self.reader is None:
            raise InvalidArgumentError("commit needs a named reader: client.read(stream, "
                                       "reader='name')")
        if isinstance(offset, StreamRecord):
            offset = offset.offset
        if offset is None:
            offset = self.position
        if offset is None:
            return  # nothing read yet: nothing to commit
        await self._transport.commit_offset(self.stream, self.reader, offset)

    async def close(self) -> None:
        """Stop reading; records read ahead but not handed out are dropped."""
        if self._closed:
            return
        self._closed = True
        self._inbox.close()
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.cancel()
            # settle what was read ahead too, so the consumer's channel can close
            self._credit.extend(d.delivery_tag for d in self._buffer)
            with contextlib.suppress(Exception):
                await self._give_credit()
        self._buffer.clear()
        if self._on_close is not None:
            self._on_close(self)

    async def __aenter__(self) -> StreamReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
