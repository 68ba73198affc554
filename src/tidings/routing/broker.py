"""Broker: the one object the faces call. Declare, bind, publish, consume, settle, observe.

Everything here is synchronous and runs on the event loop's thread; durability is asked for
separately with :meth:`Broker.sync` (one future per batch, not per message), which is what a
publisher confirm waits on. Exchanges and queues live per vhost, keyed by name, as in RabbitMQ.
Recovery from the store happens in the constructor (see :mod:`tidings.routing.recovery`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tidings.clock import Clock, LoopClock, Timer
from tidings.dead_letters import dead_letter_message, dead_letter_queue, revive
from tidings.errors import (
    AccessRefusedError,
    NotAllowedError,
    NotFoundError,
)
from tidings.message import Message, Record
from tidings.routing.arguments import message_ttl_ms
from tidings.routing.declarations import DeclarationsMixin
from tidings.routing.delayed import DelayedMessages
from tidings.routing.delays import DelaysMixin
from tidings.routing.exchange import DELAYED, PREDECLARED, Exchange
from tidings.routing.queue import DEFAULT_WINDOW, Entry, Queue
from tidings.routing.session import Consumer, Delivery, Session
from tidings.routing.upkeep import TICK_S, UpkeepMixin
from tidings.statistics import Counters
from tidings.storage.base import Store

DEFAULT_VHOST = "/"
#: Bytes of uncommitted writes tolerated before acks and unconfirmed publishes wait for the
#: store (each write counts its payload plus a fixed overhead).
MAX_WRITE_BACKLOG_BYTES = 16 * 2**20


@dataclass(frozen=True, slots=True)
class PublishResult:
    #: Number of queues the message was enqueued in (or 1 for a delayed message).
    routed: int
    #: True when a queue refused it (``x-overflow: reject-publish``): confirm with a nack.
    refused: bool = False
    #: True when it was mandatory and routed nowhere: return it to the publisher.
    returned: bool = False


#: Shared results for the common case (routed to a few queues, nothing refused).
_ROUTED = [PublishResult(n) for n in range(16)]


class VHost:
    def __init__(self, name: str) -> None:
        self.name = name
        self.exchanges: dict[str, Exchange] = {"": Exchange("", "direct", name)}
        for ex_name, kind in PREDECLARED.items():
            self.exchanges[ex_name] = Exchange(ex_name, kind, name)
        self.queues: dict[str, Queue] = {}


class Broker(DeclarationsMixin, DelaysMixin, UpkeepMixin):
    def __init__(
        self,
        store: Store,
        clock: Clock | None = None,
        *,
        queue_window: int = DEFAULT_WINDOW,
        default_consumer_timeout_ms: int | None = 30 * 60 * 1000,
    ) -> None:
        self.store = store
        self.clock: Clock = clock or LoopClock()
        self.queue_window = queue_window
        self.default_consumer_timeout_ms = default_consumer_timeout_ms
        self.vhosts: dict[str, VHost] = {DEFAULT_VHOST: VHost(DEFAULT_VHOST)}
        self.sessions: set[Session] = set()
        self.delayed = DelayedMessages(store, self.clock.time)
        self.counters = Counters()
        self._seq = store.max_seq()
        self._expiry_timers: dict[str, tuple[float, Timer]] = {}
        self._delay_timer: tuple[float, Timer] | None = None
        self._tick_timer: Timer | None = None
        self.closed = False
        from tidings.routing.recovery import recover  # recovery builds on the methods below

        recover(self)

    # -- small helpers ---------------------------------------------------------------------

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def sync(self) -> asyncio.Future[None]:
        """A future resolved when everything done so far is durable (publisher confirms)."""
        return self.store.sync()

    def write_backlog_exceeded(self) -> bool:
        """True when the store lags behind by more than :data:`MAX_WRITE_BACKLOG_BYTES`.

        Faces that settle or publish without waiting for durability (acks, unconfirmed
        publishes) then await :meth:`sync` before taking more, so memory stays bounded.
        """
        return self.store.backlog() > MAX_WRITE_BACKLOG_BYTES

    def start(self) -> None:
        """Start housekeeping timers (call from inside the running event loop)."""
        if self._tick_timer is None:
            self._tick_timer = self.clock.call_at(self.clock.time() + TICK_S, self._tick)
        self._arm_delay_timer()
        for vhost in self.vhosts.values():
            for queue in vhost.queues.values():
                queue.expire_head()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for session in list(self.sessions):
            session.close()
        self.stop_timers()
        self.store.close()

    def stop_timers(self) -> None:
        """Cancel every timer (close does this; tests use it to play a crashed process)."""
        for _, timer in self._expiry_timers.values():
            timer.cancel()
        self._expiry_timers.clear()
        if self._delay_timer:
            self._delay_timer[1].cancel()
            self._delay_timer = None
        if self._tick_timer:
            self._tick_timer.cancel()
            self._tick_timer = None

    def get_vhost(self, vhost: str) -> VHost:
        found = self.vhosts.get(vhost)
        if found is None:
            raise NotFoundError(f"no vhost '{vhost}'")
        return found

    def declare_vhost(self, name: str) -> None:
        if name not in self.vhosts:
            self.vhosts[name] = VHost(name)
            self.store.put_definition("vhost", name, b"{}")

    def get_exchange(self, vhost: str, name: str) -> Exchange:
        found = self.get_vhost(vhost).exchanges.get(name)
        if found is None:
            raise NotFoundError(f"no exchange '{name}' in vhost '{vhost}'")
        return found

    def get_queue(self, vhost: str, name: str) -> Queue:
        found = self.get_vhost(vhost).queues.get(name)
        if found is None:
            raise NotFoundError(f"no queue '{name}' in vhost '{vhost}'")
        return found

    def find_queue(self, vhost: str, name: str) -> Queue | None:
        v = self.vhosts.get(vhost)
        return v.queues.get(name) if v else None

    # -- publishing ------------------------------------------------------------------------

    def publish(self, vhost: str, exchange: str, message: Message, *,
                mandatory: bool = False, delay_ms: int | None = None) -> PublishResult:
        """Route and enqueue ``message``; call :meth:`sync` to wait until it is durable."""
        ex = self.get_exchange(vhost, exchange)
        if ex.internal:
            raise AccessRefusedError(
                f"cannot publish to internal exchange '{exchange}' in vhost '{vhost}'"
            )
        message.exchange = exchange
        self.counters.published += 1
        now = self.clock.time()
        if delay_ms is None and ex.kind == DELAYED and message.headers:
            delay = message.headers.get("x-delay")
            if isinstance(delay, int) and not isinstance(delay, bool) and delay > 0:
                delay_ms = delay
        if delay_ms:
            target = {"vhost": vhost, "exchange": exchange}
            if exchange == "":
                target = {"vhost": vhost, "queue": message.routing_key}
            self.delay(Record(message, now), target, now + delay_ms / 1000.0)
            return PublishResult(1)
        queues = self.route(vhost, ex, message)
        if not queues:
            return PublishResult(0, returned=mandatory)
        refused = False
        for queue in queues:
            refused |= not self._enqueue(queue, Record(message, now), now)
        if refused:
            return PublishResult(len(queues), refused=True)
        return _ROUTED[len(queues)] if len(queues) < len(_ROUTED) else PublishResult(len(queues))

    def route(self, vhost: str, ex: Exchange, message: Message) -> list[Queue]:
        """The queues ``message`` goes to, following e2e bindings and alternate exchanges."""
        v = self.vhosts[vhost]
        if ex.name == "":
            q = v.queues.get(message.routing_key)
            return [q] if q is not None else []
        found: dict[str, Queue] = {}
        stack, seen = [ex], set()
        while stack:
            e = stack.pop()
            if e.name in seen:
                continue
            seen.add(e.name)
            bindings = e.route(message)
            for b in bindings:
                if b.to_exchange:
                    nxt = v.exchanges.get(b.destination)
                    if nxt is not None:
                        stack.append(nxt)
                elif (q := v.queues.get(b.destination)) is not None:
                    found[q.name] = q
            alternate = e.arguments.get("alternate-exchange")
            if not bindings and isinstance(alternate, str) and alternate in v.exchanges:
                stack.append(v.exchanges[alternate])
        return list(found.values())

    def _enqueue(self, queue: Queue, record: Record, now: float) -> bool:
        """Put a record in a queue honouring TTL and overflow; False when refused."""
        options, expiration = queue.options, record.message.expiration
        if options.message_ttl_ms is not None or expiration is not None:
            ttls = [t for t in (options.message_ttl_ms, message_ttl_ms(expiration))
                    if t is not None]
            record.expires_at = now + min(ttls) / 1000.0
        if options.max_length is not None or options.max_length_bytes is not None:
            overflow = queue.make_room(len(record.message.body))
            if overflow in ("reject-publish", "reject-publish-dlx"):
                if overflow == "reject-publish-dlx":
                    self._dead_letter(queue, Entry(0, record, False), "maxlen")
                return False
            if overflow == "drop-head":  # x-max-length 0: the message itself is the head
                self._dead_letter(queue, Entry(0, record, False), "maxlen")
                return True
        self._seq += 1
        queue.enqueue(self._seq, record)
        return True

    def _dead_letter(self, queue: Queue, entry: Entry, reason: str) -> None:
        queue.remove_stored(entry)
        queue.counters.dead_lettered += 1
        self.counters.dead_lettered += 1
        dlx = queue.options.dead_letter_exchange
        if dlx is None:
            return
        ex = self.vhosts[queue.vhost].exchanges.get(dlx)
        if ex is None:
            return
        now = self.clock.time()
        message = dead_letter_message(entry.record.message, queue.name, reason, now,
                                      queue.options.dead_letter_routing_key)
        for target in self.route(queue.vhost, ex, message):
            if _is_cycle(message, target.name, reason):
                continue
            self._enqueue(target, Record(replace(message), now), now)

    # -- sessions and consumers ------------------------------------------------------------

    def open_session(self, vhost: str = DEFAULT_VHOST, connection_id: str = "local") -> Session:
        self.get_vhost(vhost)
        session = Session(self, vhost, connection_id)
        self.sessions.add(session)
        return session

    def forget_session(self, session: Session) -> None:
        self.sessions.discard(session)

    def consume(
        self,
        session: Session,
        queue_name: str,
        on_delivery: Callable[[Delivery], None],
        *,
        prefetch_count: int = 0,
        no_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str = "",
        arguments: dict[str, Any] | None = None,
        dispatch: bool = True,
    ) -> Consumer:
        """Add a consumer; with ``dispatch=False`` the caller starts deliveries itself
        (``consumer.queue.dispatch()``) after answering consume-ok."""
        queue = self.get_queue(session.vhost, queue_name)
        self._check_exclusive(queue, session.connection_id)
        tag = consumer_tag or session.new_consumer_tag()
        if tag in session.consumers:
            raise NotAllowedError(f"attempt to reuse consumer tag '{tag}'")
        if any(c.exclusive for c in queue.consumers) or (exclusive and queue.consumers):
            raise AccessRefusedError(
                f"queue '{queue_name}' in vhost '{session.vhost}' in exclusive use"
            )
        consumer = Consumer(tag, queue, session, on_delivery, prefetch_count=prefetch_count,
                            no_ack=no_ack, exclusive=exclusive, arguments=arguments or {})
        session.consumers[tag] = consumer
        queue.consumers.append(consumer)
        queue.last_used = self.clock.time()
        if dispatch:
            queue.dispatch()
        return consumer

    def cancel(self, session: Session, consumer_tag: str) -> None:
        consumer = session.consumers.pop(consumer_tag, None)
        if consumer is None:
            return
        queue = consumer.queue
        if consumer in queue.consumers:
            queue.consumers.remove(consumer)
        queue.last_used = self.clock.time()
        if queue.auto_delete and not queue.consumers and not queue.deleted:
            self._delete_queue(queue)

    def get(self, session: Session, queue_name: str, *, no_ack: bool = False) -> Delivery | None:
        queue = self.get_queue(session.vhost, queue_name)
        self._check_exclusive(queue, session.connection_id)
        queue.last_used = now = self.clock.time()
        entry = queue.take()
        if entry is None:
            return None
        queue.mark_delivered(entry, now)
        return session.register_get(queue, entry, no_ack)

    # -- waiting messages by id, and dead letters (one implementation for every face) ------

    def browse(self, vhost: str, queue_name: str, limit: int) -> list[Message]:
        """Up to ``limit`` ready messages of a queue, oldest first, left in place."""
        return [e.record.message for e in self.get_queue(vhost, queue_name).browse(limit)]

    def take(self, vhost: str, queue_name: str, message_id: str) -> Message | None:
        """Remove a waiting (ready or delayed) message by id; None when none is waiting. Far
        delayed messages are read from committed rows: ``await sync()`` first to see the
        latest ones."""
        queue = self.get_queue(vhost, queue_name)
        for entry in queue.browse(queue.ready_count):
            if entry.record.message.message_id == message_id:
                removed = queue.remove_ready(entry.seq)
                if removed is not None:
                    return removed.record.message
        for seq, record in self.delayed.entries():
            if (record.message.message_id == message_id
                    and self._delayed_for(record, vhost, queue_name)
                    and self.cancel_delayed(seq, record)):
                return record.message
        return None

    def _delayed_for(self, record: Record, vhost: str, queue_name: str) -> bool:
        """Whether a delayed message will go to the queue: named, or routed there by its
        exchange (a delayed-message exchange holds it until due)."""
        target = record.target
        if target.get("vhost", "/") != vhost:
            return False
        if "queue" in target:
            return target["queue"] == queue_name
        exchange = self.get_vhost(vhost).exchanges.get(target.get("exchange", ""))
        return exchange is not None and any(
            q.name == queue_name for q in self.route(vhost, exchange, record.message))

    def dead_letter_queue(self, vhost: str, queue_name: str) -> str:
        """Where a queue's dead letters wait: the queue its dead-letter routing key names on
        the default exchange, else ``<name>.dead`` (the client API's convention)."""
        options = self.get_queue(vhost, queue_name).options
        dead = dead_letter_queue(queue_name)
        if options.dead_letter_exchange == "" and options.dead_letter_routing_key:
            dead = options.dead_letter_routing_key
        if self.find_queue(vhost, dead) is None:
            raise NotFoundError(f"queue '{queue_name}' in vhost '{vhost}' has no dead-letter "
                                f"queue '{dead}'")
        return dead

    def replay_dead_letters(self, vhost: str, queue_name: str,
                            ids: set[str] | None = None) -> int:
        """Move dead letters (all, or those with ``ids``) back into the queue, without their
        ``x-`` headers; returns how many. Durable once ``sync()`` resolves."""
        dead = self.get_queue(vhost, self.dead_letter_queue(vhost, queue_name))
        replayed = 0
        for entry in dead.browse(dead.ready_count):
            message = entry.record.message
            if ids is not None and message.message_id not in ids:
                continue
            if dead.remove_ready(entry.seq) is None:
                continue
            self.publish(vhost, "", revive(message, queue_name))
            replayed += 1
        return replayed

    def dispatch_session(self, session: Session) -> None:
        for consumer in list(session.consumers.values()):
            consumer.queue.dispatch()

def _is_cycle(message: Message, target: str, reason: str) -> bool:
    """RabbitMQ drops a dead letter that would cycle back without any rejection on the way."""
    deaths = (message.headers or {}).get("x-death") or []
    if reason == "rejected":
        return False
    seen_target = any(d.get("queue") == target for d in deaths)
    return seen_target and all(d.get("reason") != "rejected" for d in deaths)
