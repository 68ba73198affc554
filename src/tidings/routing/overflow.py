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


def admit(queue: Bounded, record: Record) -> Verdict:
    """Apply the queue's length limits before ``record`` is added."""
    o, ready = queue.options, queue.ready
    size = len(record.message.body)
    if o.max_length is None and o.max_length_bytes is None:
        return Verdict.ENQUEUE

    def over() -> bool:
        if o.max_length is not None and len(ready) + 1 > o.max_length:
            return True
        return (o.max_length_bytes is not None
                and ready.total_bytes() + size > o.max_length_bytes)

    if not over():
        return Verdict.ENQUEUE
    if o.overflow != "drop-head":
        if o.overflow == "reject-publish-dlx":
            queue.drop(Entry(0, record, False), "maxlen")
        return Verdict.REFUSE
    while over() and len(ready):
        head = queue.pop_ready()
        if head is None:  # the head is paged out and not readable until the commit
            break
        queue.drop(head, "maxlen")
    if over():  # x-max-length 0, or the head is not readable yet: the message is the head
        queue.drop(Entry(0, record, False), "maxlen")
        return Verdict.DROPPED
    return Verdict.ENQUEUE
