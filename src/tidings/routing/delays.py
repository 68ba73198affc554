"""Delayed delivery as the broker does it: hold, persist, release when due (a Broker mixin).

The data structure is :class:`tidings.routing.delayed.DelayedMessages`; this part decides
where a due message goes (its queue, or its exchange's inner routing) and keeps one timer
armed for the earliest due time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.message import Record

if TYPE_CHECKING:
    from tidings.clock import Clock, Timer
    from tidings.message import Message
    from tidings.routing.broker import VHost
    from tidings.routing.delayed import DelayedMessages
    from tidings.routing.exchange import Exchange
    from tidings.routing.queue import Entry, Queue
    from tidings.storage.base import Store


class DelaysMixin:
    store: Store
    clock: Clock
    delayed: DelayedMessages
    vhosts: dict[str, VHost]
    _delay_timer: tuple[float, Timer] | None

    if TYPE_CHECKING:  # provided by Broker or a sibling mixin; never defined here
        def next_seq(self) -> int: ...

        def route(self, vhost: str, ex: Exchange, message: Message) -> list[Queue]: ...

        def _enqueue(self, queue: Queue, record: Record, now: float) -> bool: ...

    # -- delays ----------------------------------------------------------------------------

    def delay(self, record: Record, target: dict[str, str], due_at: float) -> None:
        record.due_at, record.target = due_at, target
        self.delayed.add(self.next_seq(), record)
        self._arm_delay_timer()

    def requeue_later(self, queue: Queue, entry: Entry, delay_ms: int) -> None:
        """nack with a delay: back into ``queue`` no earlier than ``delay_ms`` from now."""
        record = queue.release_for_delay(entry)
        if record is not None:
            now = self.clock.time()
            target = {"vhost": queue.vhost, "queue": queue.name}
            self.delay(Record(record.message, now, record.delivery_count), target,
                       now + delay_ms / 1000.0)

    def cancel_delayed(self, seq: int, record: Record) -> bool:
        """Cancel a delayed message found by ``delayed.entries()``; False if it is gone."""
        return self.delayed.remove(seq, record)

    def _arm_delay_timer(self) -> None:
        due = self.delayed.next_due()
        if due is None:
            return
        if self._delay_timer is not None:
            if self._delay_timer[0] <= due:
                return
            self._delay_timer[1].cancel()
        try:
            self._delay_timer = (due, self.clock.call_at(due, self._release_delayed))
        except RuntimeError:  # no running loop yet: start() arms it
            self._delay_timer = None

    def _release_delayed(self) -> None:
        self._delay_timer = None
        now = self.clock.time()
        wait = self.delayed.promote(now)
        if wait is not None:  # a bucket is read in once the writes before it are committed
            wait.add_done_callback(lambda _: self._release_delayed())
            return
        for seq, record in self.delayed.pop_due(now):
            if not self.delayed.is_void(seq, record):  # its queue was deleted meanwhile
                self._release_one(record, now)
        self._arm_delay_timer()

    def _release_one(self, record: Record, now: float) -> None:
        vhost = record.target.get("vhost", "/")
        v = self.vhosts.get(vhost)
        if v is None:
            return
        fresh = Record(record.message, now, record.delivery_count)
        if "queue" in record.target:
            queue = v.queues.get(record.target["queue"])
            if queue is not None:
                self._enqueue(queue, fresh, now)
            return
        ex = v.exchanges.get(record.target.get("exchange", ""))
        if ex is not None:
            for queue in self.route(vhost, ex, record.message):
                self._enqueue(queue, Record(record.message, now, record.delivery_count), now)

