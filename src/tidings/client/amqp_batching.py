"""What the AMQP transport gathers per loop turn: sends into batches, acks into few frames.

aiormq spends per frame what a message is worth twice over (a future, a lock, pamqp's generic
codec, a write queue entry), so the client does not send a frame per message where it need not:

- The sends of one loop turn (all ``client.send`` calls of an ``asyncio.gather``, a
  producer's burst) are gathered (:mod:`tidings.client.turns`) and cut here into batches per
  exchange, which a tidings server takes as one publish with one confirm each (the batch
  extension, :mod:`tidings.message_batches`). Each send still returns only when its message is
  durable, and fails alone when its queue is missing or full.
- :class:`AmqpConsumer` is a consumer on a channel of its own; the acks of one loop turn go out
  as one ``basic.ack`` with ``multiple`` for the run of deliveries below the lowest one still
  open, and one frame for each acked above it (any AMQP broker: RabbitMQ too). An ack has no
  answer in AMQP, so nothing waits for it; a channel that closes first returns the messages,
  as any lost ack does.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tidings.message import Message

#: Bounds of one batch (the server takes at most ``MAX_BATCH_MESSAGES``).
BATCH_MESSAGES = 1_000
BATCH_BYTES = 1 << 20
#: A message this large travels on its own (a batch would only copy it once more).
LARGE_BYTES = 1 << 16


def chunks(entries: list[tuple[str, Message]]) -> list[list[tuple[str, Message]]]:
    """``entries`` cut into batches within the bounds."""
    out: list[list[tuple[str, Message]]] = []
    start, size = 0, 0
    for i, (_, message) in enumerate(entries):
        size += len(message.body)
        if i + 1 - start >= BATCH_MESSAGES or size >= BATCH_BYTES:
            out.append(entries[start:i + 1])
            start, size = i + 1, 0
    if start < len(entries):
        out.append(entries[start:])
    return out


class AmqpConsumer:
    """A consumer on a channel of its own. Cancelling stops new deliveries at once; the
    channel stays open until every delivery made on it is settled, so handlers still running
    (a worker stopping gently) can acknowledge their messages."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.tag = ""
        self.unsettled = 0
        self.cancelled = False
        #: Delivery tags handed out and not yet settled on the wire.
        self._open: set[int] = set()
        self._acks: list[int] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def delivered(self, delivery_tag: int) -> None:
        self.unsettled += 1
        self._open.add(delivery_tag)

    def settling(self, delivery_tag: int) -> None:
        """``delivery_tag`` is settled by a frame of its own written now (a nack, a reject):
        no gathered ``multiple`` ack may count on it staying open."""
        self._open.discard(delivery_tag)

    def ack_soon(self, delivery_tag: int) -> None:
        """Ack ``delivery_tag`` with the others of this loop turn."""
        self._acks.append(delivery_tag)
        if len(self._acks) == 1:
            asyncio.get_running_loop().call_soon(self._start_acks)

    def _start_acks(self) -> None:
        task = asyncio.ensure_future(self._write_acks())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_acks(self) -> None:
        acks, self._acks = self._acks, []
        acked = set(acks)
        still_open = self._open - acked
        floor = min(still_open) if still_open else None
        below = [t for t in acks if floor is None or t < floor]
        above = [t for t in acks if floor is not None and t > floor]
        self._open = still_open
        with contextlib.suppress(Exception):  # the channel is gone: its messages come back
            if below:
                await self.channel.basic_ack(max(below), multiple=len(below) > 1, wait=False)
            for tag in above:
                await self.channel.basic_ack(tag, wait=False)
        self.unsettled -= len(acks) - 1
        await self.settled()

    async def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        with contextlib.suppress(Exception):
            await self.channel.basic_cancel(self.tag)
        if not self.unsettled:
            await self._close()

    async def settled(self) -> None:
        self.unsettled -= 1
        if self.cancelled and not self.unsettled:
            await self._close()

    async def _close(self) -> None:
        if not self.channel.is_closed:
            with contextlib.suppress(Exception):
                await self.channel.close()
