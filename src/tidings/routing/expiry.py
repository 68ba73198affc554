"""TTL: when a message expires, and one timer per queue for the head's expiry.

A message's expiry is the earlier of its queue's ``x-message-ttl`` and its own ``expiration``
property, fixed when it is enqueued. As in RabbitMQ, expired messages leave a queue only from
its head: a queue arms one timer for the head's expiry (:class:`HeadExpiryTimers`), and a
message found expired when it is about to be delivered is dead-lettered instead.
"""

from __future__ import annotations

from typing import Protocol

from tidings.clock import Clock, Timer
from tidings.message import Message
from tidings.routing.arguments import QueueOptions, message_ttl_ms


def expires_at(options: QueueOptions, message: Message, now: float) -> float | None:
    """When ``message``, enqueued ``now`` in a queue with ``options``, expires (None: never)."""
    if options.message_ttl_ms is None and message.expiration is None:
        return None
    ttls = [t for t in (options.message_ttl_ms, message_ttl_ms(message.expiration))
            if t is not None]
    return now + min(ttls) / 1000.0


class Expiring(Protocol):
    """What a head-expiry timer needs of its queue."""

    store_key: str
    deleted: bool

    def expire_head(self) -> None: ...


class HeadExpiryTimers:
    """At most one timer per queue, for the earliest head expiry asked for."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._timers: dict[str, tuple[float, Timer]] = {}

    def arm(self, queue: Expiring, at: float) -> None:
        current = self._timers.get(queue.store_key)
        if current is not None:
            if current[0] <= at:
                return
            current[1].cancel()
        try:
            timer = self._clock.call_at(at, lambda: self._fire(queue))
        except RuntimeError:  # no running loop yet: the broker's start() expires and re-arms
            return
        self._timers[queue.store_key] = (at, timer)

    def _fire(self, queue: Expiring) -> None:
        self._timers.pop(queue.store_key, None)
        if not queue.deleted:
            queue.expire_head()

    def cancel(self, queue: Expiring) -> None:
        timer = self._timers.pop(queue.store_key, None)
        if timer:
            timer[1].cancel()

    def cancel_all(self) -> None:
        for _, timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
