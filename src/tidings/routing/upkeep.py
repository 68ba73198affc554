"""The broker's once-a-second tick: rates, ``x-expires`` and consumer timeouts.

A failure in one tick is logged and the next tick still comes: upkeep must never stop for
good.
"""

from __future__ import annotations

import logging

from tidings.clock import Clock, Timer
from tidings.errors import PreconditionFailedError
from tidings.routing.declarations import Declarations
from tidings.routing.session import Session
from tidings.routing.vhost import VirtualHosts
from tidings.statistics import Counters

log = logging.getLogger("tidings.broker")

#: Seconds between housekeeping ticks (rates, x-expires, consumer timeouts).
TICK_S = 1.0


class Upkeep:
    def __init__(self, vhosts: VirtualHosts, sessions: set[Session],
                 declarations: Declarations, clock: Clock, counters: Counters,
                 default_consumer_timeout_ms: int | None) -> None:
        self._vhosts, self._sessions, self._declarations = vhosts, sessions, declarations
        self._clock, self._counters = clock, counters
        self.default_consumer_timeout_ms = default_consumer_timeout_ms
        self._timer: Timer | None = None
        self._stopped = False

    def start(self) -> None:
        self._stopped = False
        if self._timer is None:
            self._timer = self._clock.call_at(self._clock.time() + TICK_S, self.tick)

    def stop(self) -> None:
        self._stopped = True
        if self._timer:
            self._timer.cancel()
            self._timer = None

    def tick(self) -> None:
        now = self._clock.time()
        try:
            self.run(now)
        except Exception:
            log.exception("broker upkeep failed; retrying at the next tick")
        finally:
            if not self._stopped:
                self._timer = self._clock.call_at(now + TICK_S, self.tick)

    def run(self, now: float) -> None:
        """One round of upkeep at ``now``."""
        self._counters.sample(now)
        for queue in self._vhosts.queues():
            queue.counters.sample(now)
            queue.housekeep(now)
            expires_ms = queue.options.expires_ms
            if (expires_ms is not None and not queue.consumers and not queue.deleted
                    and now - queue.last_used >= expires_ms / 1000.0):
                self._declarations.remove_queue(queue)
        self._check_consumer_timeouts(now)

    def _check_consumer_timeouts(self, now: float) -> None:
        for session in list(self._sessions):
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
