"""Timers and numbers of the broker (a Broker mixin): head-of-queue expiry, paging retries,
the once-a-second tick (rates, ``x-expires``, consumer timeouts) and the statistics records.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tidings.errors import PreconditionFailedError
from tidings.routing import quarantine
from tidings.statistics import COUNTERS, BrokerStatistics, Counters, QueueStatistics

if TYPE_CHECKING:
    from tidings.clock import Clock, Timer
    from tidings.routing.broker import VHost
    from tidings.routing.delayed import DelayedMessages
    from tidings.routing.queue import Queue
    from tidings.routing.session import Session
    from tidings.storage.base import Store

log = logging.getLogger("tidings.broker")

#: Seconds between housekeeping ticks (rates, x-expires, consumer timeouts).
TICK_S = 1.0


class UpkeepMixin:
    store: Store
    clock: Clock
    closed: bool
    counters: Counters
    delayed: DelayedMessages
    sessions: set[Session]
    vhosts: dict[str, VHost]
    default_consumer_timeout_ms: int | None
    _expiry_timers: dict[str, tuple[float, Timer]]
    _tick_timer: Timer | None

    if TYPE_CHECKING:  # provided by Broker or a sibling mixin; never defined here
        def _delete_queue(self, queue: Queue) -> int: ...

    # -- timers ----------------------------------------------------------------------------

    def _arm_expiry(self, queue: Queue, at: float) -> None:
        current = self._expiry_timers.get(queue.store_key)
        if current is not None:
            if current[0] <= at:
                return
            current[1].cancel()
        try:
            timer = self.clock.call_at(at, lambda: self._expire(queue))
        except RuntimeError:  # no running loop yet: start() expires and re-arms
            return
        self._expiry_timers[queue.store_key] = (at, timer)

    def _expire(self, queue: Queue) -> None:
        self._expiry_timers.pop(queue.store_key, None)
        if not queue.deleted:
            queue.expire_head()

    def _retry_after_commit(self, queue: Queue) -> None:
        try:
            future = self.store.sync()
        except RuntimeError:  # no running loop: the next call reads again
            queue.after_commit(deliver=False)
            return
        future.add_done_callback(lambda _: queue.after_commit())

    def _tick(self) -> None:
        """Once a second: rates, queue expiry, consumer timeouts. A failure is logged and the
        next tick still comes: upkeep must never stop for good."""
        now = self.clock.time()
        try:
            self._upkeep(now)
        except Exception:
            log.exception("broker upkeep failed; retrying at the next tick")
        finally:
            if not self.closed:
                self._tick_timer = self.clock.call_at(now + TICK_S, self._tick)

    def _upkeep(self, now: float) -> None:
        self.counters.sample(now)
        for v in self.vhosts.values():
            for queue in list(v.queues.values()):
                queue.counters.sample(now)
                expires_ms = queue.options.expires_ms
                if (expires_ms is not None and not queue.consumers
                        and now - queue.last_used >= expires_ms / 1000.0):
                    self._delete_queue(queue)
        self._check_consumer_timeouts(now)

    def _check_consumer_timeouts(self, now: float) -> None:
        for session in list(self.sessions):
            for queue, entry, _ in list(session.unacked.values()):
                timeout_ms = queue.options.consumer_timeout_ms or self.default_consumer_timeout_ms
                if timeout_ms is None or (now - entry.delivered_at) * 1000.0 < timeout_ms:
                    continue
                error = PreconditionFailedError(
                    f"delivery acknowledgement timed out: a message from queue '{queue.name}' "
                    f"in vhost '{queue.vhost}' was not acknowledged within the consumer "
                    f"timeout of {timeout_ms} ms; its channel is closed and the message requeued"
                )
                session.close()
                if session.on_error is not None:
                    session.on_error(error)
                break

    # -- statistics ------------------------------------------------------------------------

    def held_bytes(self) -> int:
        """Message bytes the broker holds in memory: every queue's ready window and unacked
        messages (what the memory alarm measures; paged-out messages are on disk only)."""
        return sum(q.ready_bytes + q.unacked_bytes for v in self.vhosts.values()
                   for q in v.queues.values())

    def quarantined(self) -> list[quarantine.QuarantinedRecord]:
        """Stored records that could not be read, moved aside (see ``routing/quarantine``)."""
        return quarantine.records(self.store)

    def drop_quarantined(self, ident: str) -> None:
        quarantine.drop(self.store, ident)

    def queue_statistics(self, queue: Queue) -> QueueStatistics:
        oldest = queue.oldest_ready_at()
        c = queue.counters
        return QueueStatistics(
            vhost=queue.vhost,
            name=queue.name,
            ready=queue.ready_count,
            unacked=len(queue.unacked),
            delayed=self.delayed.per_queue.get((queue.vhost, queue.name), 0),
            consumers=len(queue.consumers),
            ready_bytes=queue.ready_bytes + queue.paged_bytes,
            oldest_ready_age_s=None if oldest is None else max(0.0, self.clock.time() - oldest),
            counts=dict(zip(COUNTERS, c.values(), strict=True)),
            rates=c.rates(),
            waiting_time=queue.waiting.summary(),
            processing_time=queue.processing.summary(),
        )

    def statistics(self) -> BrokerStatistics:
        queues = tuple(self.queue_statistics(q) for v in self.vhosts.values()
                       for q in v.queues.values())
        counts = {name: sum(q.counts[name] for q in queues) for name in COUNTERS}
        counts["published"] = self.counters.published
        rates = {name: sum(q.rates[name] for q in queues) for name in COUNTERS}
        rates["published"] = self.counters.rates()["published"]
        return BrokerStatistics(
            queues=queues,
            exchanges=sum(len(v.exchanges) for v in self.vhosts.values()),
            sessions=len(self.sessions),
            consumers=sum(q.consumers for q in queues),
            ready=sum(q.ready for q in queues),
            unacked=sum(q.unacked for q in queues),
            delayed=len(self.delayed),
            counts=counts,
            rates=rates,
            quarantined=len(self.quarantined()),
        )


