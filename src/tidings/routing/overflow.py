"""Overflow: what a queue at ``x-max-length`` / ``x-max-length-bytes`` does with one more
message, as RabbitMQ defines ``x-overflow``, decided here and nowhere else.

- ``drop-head`` (the default): the oldest ready messages are dead-lettered to make room; with
  a limit of 0 the new message itself is the head and is dead-lettered at once.
- ``reject-publish``: the new message is refused (a publisher confirm says nack).
- ``reject-publish-dlx``: refused, and dead-lettered as well.
"""

from __future__ import annotations

import enum
from typing import Protocol

from tidings.message import Record
from tidings.routing.arguments import QueueOptions
from tidings.routing.ready import Entry, ReadyMessages


class Verdict(enum.Enum):
    #: Enqueue the message.
    ENQUEUE = "enqueue"
    #: Refused: the publisher's confirm is a nack.
    REFUSE = "refuse"
    #: Accepted and dead-lettered at once (drop-head with no room at all).
    DROPPED = "dropped"


class Bounded(Protocol):
    """What the overflow policy needs of a queue."""

    options: QueueOptions
    ready: ReadyMessages

    def pop_ready(self) -> Entry | None:
        """Remove the head ready message (None if there is none readable now)."""
        ...

    def drop(self, entry: Entry, reason: str) -> None:
        """Dead-letter (or discard) ``entry``, which has left the queue."""
        ...


def _over(o: QueueOptions, ready: ReadyMessages, count: int, size: int) -> bool:
    """Would the ready messages and ``count`` more of ``size`` bytes pass a limit?"""
    if o.max_length is not None and len(ready) + count > o.max_length:
        return True
    return o.max_length_bytes is not None and ready.total_bytes() + size > o.max_length_bytes


def _drop_heads(queue: Bounded, count: int, size: int) -> None:
    """Dead-letter the oldest ready messages until ``count`` more of ``size`` bytes fit."""
    while _over(queue.options, queue.ready, count, size) and len(queue.ready):
        head = queue.pop_ready()
        if head is None:  # the head is paged out and not readable until the commit
            break
        queue.drop(head, "maxlen")


def admit(queue: Bounded, record: Record) -> Verdict:
    """Apply the queue's length limits before ``record`` is added."""
    o = queue.options
    size = len(record.message.body)
    if o.max_length is None and o.max_length_bytes is None:
        return Verdict.ENQUEUE
    if not _over(o, queue.ready, 1, size):
        return Verdict.ENQUEUE
    if o.overflow != "drop-head":
        if o.overflow == "reject-publish-dlx":
            queue.drop(Entry(0, record, False), "maxlen")
        return Verdict.REFUSE
    _drop_heads(queue, 1, size)
    if _over(o, queue.ready, 1, size):  # x-max-length 0, or the head is not readable yet
        queue.drop(Entry(0, record, False), "maxlen")
        return Verdict.DROPPED
    return Verdict.ENQUEUE


def trim(queue: Bounded) -> None:
    """The limits were lowered (a policy): with ``drop-head`` the oldest ready messages over
    them are dead-lettered now, as RabbitMQ does; the rejecting modes keep what they hold."""
    if queue.options.overflow == "drop-head":
        _drop_heads(queue, 0, 0)
