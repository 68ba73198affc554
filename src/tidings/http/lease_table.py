"""Receive with a lease: messages handed out over REST stay unacked until their receipt is
acked, nacked or its lease runs out (then the message goes back to its queue, redelivered).

A receipt is an opaque random string mapped to a delivery tag of a broker session of the
gateway's, one per user and vhost: one user's leases, their timeouts and their settlements never
touch another user's deliveries, and a receipt is only honoured for the user it was given to.
``extend`` moves the deadline and restarts the broker's consumer-timeout clock.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from tidings.errors import NotFoundError
from tidings.routing.front_door import Delivery, FrontDoor, Session

#: Longest lease a client may ask for (the broker's default consumer timeout).
MAX_VISIBILITY_MS = 30 * 60 * 1000


@dataclass
class Lease:
    session: Session
    delivery_tag: int
    timer: asyncio.TimerHandle
    user: str


class Leases:
    def __init__(self, broker: FrontDoor) -> None:
        self.broker = broker
        self._sessions: dict[tuple[str, str], Session] = {}
        self._leases: dict[str, Lease] = {}

    def session(self, user: str, vhost: str) -> Session:
        found = self._sessions.get((user, vhost))
        if found is None or found.closed:
            found = self.broker.open_session(vhost, f"http-{user}-{vhost}")
            self._sessions[(user, vhost)] = found
        return found

    def grant(self, user: str, session: Session, delivery: Delivery,
              visibility_ms: int) -> str:
        receipt = secrets.token_urlsafe(18)
        timer = self._arm(receipt, visibility_ms)
        self._leases[receipt] = Lease(session, delivery.delivery_tag, timer, user)
        return receipt

    def _arm(self, receipt: str, visibility_ms: int) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(visibility_ms / 1000.0, self._expire,
                                                     receipt)

    def _expire(self, receipt: str) -> None:
        lease = self._leases.pop(receipt, None)
        if lease is not None and lease.session.holds(lease.delivery_tag):
            lease.session.nack(lease.delivery_tag, requeue=True)

    def _take(self, user: str, receipt: str) -> Lease:
        lease = self._leases.get(receipt)
        if lease is None or lease.user != user or \
                not lease.session.holds(lease.delivery_tag):
            raise NotFoundError(f"no lease with receipt '{receipt}' (settled or expired)")
        del self._leases[receipt]
        lease.timer.cancel()
        return lease

    def ack(self, user: str, receipt: str) -> None:
        lease = self._take(user, receipt)
        lease.session.ack(lease.delivery_tag)

    def nack(self, user: str, receipt: str, requeue: bool, delay_ms: int | None) -> None:
        lease = self._take(user, receipt)
        lease.session.nack(lease.delivery_tag, requeue=requeue, delay_ms=delay_ms)

    def extend(self, user: str, receipt: str, visibility_ms: int) -> None:
        lease = self._take(user, receipt)
        lease.session.extend(lease.delivery_tag)
        lease.timer = self._arm(receipt, visibility_ms)
        self._leases[receipt] = lease

    def close(self) -> None:
        for lease in self._leases.values():
            lease.timer.cancel()
        for session in self._sessions.values():
            session.close()
