"""Virtual hosts: each owns its exchanges and queues, routes, enqueues and dead-letters.

A :class:`VirtualHost` is what a queue talks back to (:class:`tidings.routing.queue.QueueOwner`):
it routes a queue's dead letters through its own exchanges and arms the queue's expiry timer.
:class:`VirtualHosts` is the registry the broker and its collaborators share; it builds every
virtual host with the same store, clock, message sequence and counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from tidings.clock import Clock
from tidings.dead_letters import dead_letter_message
from tidings.errors import NotFoundError
from tidings.message import Message, Record
from tidings.routing.arguments import parse_queue_arguments
from tidings.routing.exchange import PREDECLARED, Binding, Exchange
from tidings.routing.expiry import HeadExpiryTimers
from tidings.routing.policies import PolicySet, exchange_alternate, queue_arguments
from tidings.routing.queue import DEFAULT_WINDOW, Entry, Queue
from tidings.routing.stream import StreamQueue
from tidings.statistics import Counters
from tidings.storage.base import Store
from tidings.storage.streams import StreamFiles

DEFAULT_VHOST = "/"


class Sequence:
    """The broker-wide message sequence: every enqueued or delayed message gets the next."""

    __slots__ = ("last",)

    def __init__(self, last: int) -> None:
        self.last = last

    def next(self) -> int:
        self.last += 1
        return self.last


class VirtualHost:
    def __init__(self, name: str, *, store: Store, clock: Clock, seq: Sequence,
                 counters: Counters, timers: HeadExpiryTimers,
                 streams: Callable[[], StreamFiles], window: int = DEFAULT_WINDOW) -> None:
        self.name = name
        self._streams = streams
        self._store, self._clock, self._seq = store, clock, seq
        self._counters, self._timers, self._window = counters, timers, window
        self.exchanges: dict[str, Exchange] = {"": Exchange("", "direct", name)}
        for ex_name, kind in PREDECLARED.items():
            self.exchanges[ex_name] = Exchange(ex_name, kind, name)
        self.queues: dict[str, Queue] = {}
        self.policies = PolicySet()

    # -- contents --------------------------------------------------------------------------

    def add_exchange(self, exchange: Exchange) -> None:
        self.exchanges[exchange.name] = exchange
        exchange.alternate, exchange.policy = exchange_alternate(
            self.policies, exchange.name, exchange.arguments)

    def add_binding(self, binding: Binding) -> bool:
        """Add a binding whose source exists; False when it was there already (or the
        source is gone)."""
        source = self.exchanges.get(binding.source)
        return source is not None and source.add_binding(binding)

    def create_queue(self, name: str, *, durable: bool, auto_delete: bool,
                     arguments: dict[str, Any], exclusive_owner: str | None) -> Queue:
        applied = queue_arguments(self.policies, name, _queue_type(arguments), arguments)
        options = parse_queue_arguments(name, applied.arguments)
        parts: dict[str, Any] = dict(
            store=self._store, owner=self, now=self._clock.time, durable=durable,
            exclusive_owner=exclusive_owner, auto_delete=auto_delete, arguments=arguments,
            window=self._window)
        queue = (StreamQueue(name, self.name, options, streams=self._streams(), **parts)
                 if options.queue_type == "stream" else Queue(name, self.name, options, **parts))
        queue.applied = applied
        self.queues[name] = queue
        return queue

    def apply_policies(self) -> None:
        """After a policy changed: every queue and exchange runs with what now applies."""
        for queue in self.queues.values():
            applied = queue_arguments(self.policies, queue.name, queue.options.queue_type,
                                      queue.arguments)
            if applied != queue.applied:
                queue.reconfigure(parse_queue_arguments(queue.name, applied.arguments), applied)
        for exchange in self.exchanges.values():
            if exchange.name:
                exchange.alternate, exchange.policy = exchange_alternate(
                    self.policies, exchange.name, exchange.arguments)

    def remove_queue(self, queue: Queue) -> None:
        del self.queues[queue.name]
        self._timers.cancel(queue)

    # -- routing ---------------------------------------------------------------------------

    def route(self, ex: Exchange, message: Message) -> list[Queue]:
        """The queues ``message`` goes to, following e2e bindings and alternate exchanges."""
        if ex.name == "":
            q = self.queues.get(message.routing_key)
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
                    nxt = self.exchanges.get(b.destination)
                    if nxt is not None:
                        stack.append(nxt)
                elif (q := self.queues.get(b.destination)) is not None:
                    found[q.name] = q
            alternate = e.alternate
            if not bindings and alternate is not None and alternate in self.exchanges:
                stack.append(self.exchanges[alternate])
        return list(found.values())

    def enqueue(self, queues: list[Queue], message: Message, now: float,
                delivery_count: int = 0) -> bool:
        """Put ``message`` in each of ``queues`` (TTL and overflow applied), numbered in the
        broker's one sequence: the only way into a queue. True when any refused it."""
        refused, next_seq = False, self._seq.next
        for queue in queues:
            refused |= not queue.offer(Record(message, now, delivery_count), now, next_seq)
        return refused

    # -- what queues ask of their owner (QueueOwner) ---------------------------------------

    def dead_letter(self, queue: Queue, entry: Entry, reason: str) -> None:
        self._counters.dead_lettered += 1
        dlx = queue.options.dead_letter_exchange
        if dlx is None or (ex := self.exchanges.get(dlx)) is None:
            return
        now = self._clock.time()
        message = dead_letter_message(entry.record.message, queue.name, reason, now,
                                      queue.options.dead_letter_routing_key)
        for target in self.route(ex, message):
            if not _is_cycle(message, target.name, reason):
                self.enqueue([target], replace(message), now)

    def head_expires(self, queue: Queue, at: float) -> None:
        self._timers.arm(queue, at)

    def wait_for_commit(self, queue: Queue) -> None:
        try:
            future = self._store.sync()
        except RuntimeError:  # no running loop: the next call reads again
            queue.after_commit(deliver=False)
            return
        future.add_done_callback(lambda _: queue.after_commit())


def _queue_type(arguments: dict[str, Any]) -> str:
    kind = arguments.get("x-queue-type")
    return kind if kind in ("quorum", "stream") else "classic"


def _is_cycle(message: Message, target: str, reason: str) -> bool:
    """RabbitMQ drops a dead letter that would cycle back without any rejection on the way."""
    deaths = (message.headers or {}).get("x-death") or []
    if reason == "rejected":
        return False
    seen_target = any(d.get("queue") == target for d in deaths)
    return seen_target and all(d.get("reason") != "rejected" for d in deaths)


class VirtualHosts:
    """The registry of virtual hosts, keyed by name."""

    def __init__(self, *, store: Store, clock: Clock, seq: Sequence, counters: Counters,
                 timers: HeadExpiryTimers, streams: Callable[[], StreamFiles],
                 window: int = DEFAULT_WINDOW) -> None:
        self._store = store
        self._parts: dict[str, Any] = dict(store=store, clock=clock, seq=seq,
                                           counters=counters, timers=timers, streams=streams,
                                           window=window)
        self._hosts: dict[str, VirtualHost] = {}
        self._hosts[DEFAULT_VHOST] = VirtualHost(DEFAULT_VHOST, **self._parts)

    def __iter__(self) -> Iterator[VirtualHost]:
        return iter(list(self._hosts.values()))

    def names(self) -> list[str]:
        return list(self._hosts)

    def declare(self, name: str) -> VirtualHost:
        found = self._hosts.get(name)
        if found is None:
            found = self._hosts[name] = VirtualHost(name, **self._parts)
            self._store.put_definition("vhost", name, b"{}")
        return found

    def remove(self, name: str) -> None:
        """Forget an emptied vhost (the default one stays: the broker always has it)."""
        if name != DEFAULT_VHOST and self._hosts.pop(name, None) is not None:
            self._store.delete_definition("vhost", name)

    def get(self, name: str) -> VirtualHost:
        found = self._hosts.get(name)
        if found is None:
            raise NotFoundError(f"no vhost '{name}'")
        return found

    def find(self, name: str) -> VirtualHost | None:
        return self._hosts.get(name)

    def get_exchange(self, vhost: str, name: str) -> Exchange:
        found = self.get(vhost).exchanges.get(name)
        if found is None:
            raise NotFoundError(f"no exchange '{name}' in vhost '{vhost}'")
        return found

    def get_queue(self, vhost: str, name: str) -> Queue:
        found = self.get(vhost).queues.get(name)
        if found is None:
            raise NotFoundError(f"no queue '{name}' in vhost '{vhost}'")
        return found

    def find_queue(self, vhost: str, name: str) -> Queue | None:
        v = self._hosts.get(vhost)
        return v.queues.get(name) if v else None

    def queues(self) -> Iterator[Queue]:
        for v in list(self._hosts.values()):
            yield from list(v.queues.values())
