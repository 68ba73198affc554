"""Running a :class:`~tidings.client.machine.Machine` durably on a client's transport.

The machine's queue ``machine.NAME`` receives the events of every topic its transitions name
(and its timers). Each event is applied by :meth:`Machine.step`, and what the step decided is
committed by the broker as one step with the event's acknowledgement
(``Transport.commit_transition``): the instance's new row, the messages, the timers armed and
cancelled. A crash before that commit leaves everything as it was and the event comes again;
after it, the event is gone and its effects are all there. So each event causes exactly one
transition.

Events of one instance are applied one at a time, in the order they arrive; instances run
concurrently (one chain per key). An event for no instance that the initial state does not
take, or one its state does not accept, becomes a dead letter in ``machine.NAME.dead`` with
the reason in its ``x-machine-reason`` header, committed with its ack. A handler that raises
is retried (the event comes back after a delay) until the queue's delivery limit
dead-letters it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Generic, TypeVar

from tidings.client.bodies import encode_body
from tidings.client.machine import (
    TIMER_PREFIX,
    Event,
    Instance,
    Machine,
    Step,
    Verdict,
)
from tidings.client.machine_replay import ReplayReport, rebuild
from tidings.client.machine_rows import (
    KEY_HEADER,
    REASON_HEADER,
    TOPIC_HEADER,
    VHOST,
    decode_instance,
    encode_instance,
    event_of,
)
from tidings.client.streams import Start
from tidings.client.transport import EVENTS_EXCHANGE, QueueSpec, Subscription, Transport
from tidings.dead_letters import dead_letter_queue
from tidings.errors import ConfigError, VersionConflictError
from tidings.message import Delivery, Message
from tidings.statistics import TransitionNumbers
from tidings.transitions import TransitionCommit, machine_queue

log = logging.getLogger("tidings.client")
D = TypeVar("D")
#: Seconds before a failed event is tried again.
RETRY_DELAY_MS = 1_000
#: Times an event is judged again at once when its instance moved on under it.
CONFLICT_ATTEMPTS = 5
#: Instances a runner remembers as it committed them.
CACHED_INSTANCES = 10_000
#: Most partitions a machine's instances spread over.
MAX_PARTITIONS = 256
#: The queue argument that makes a single-active-consumer queue partition I of a set, and
#: the consumer argument that orders the members its partitions spread over.
PARTITION_ARGUMENT, MEMBER_ARGUMENT = "x-tidings-partition", "x-tidings-member"


class MachineRunner(Generic[D]):
    """One machine on one transport: its queue, its consumer, its instances."""

    def __init__(self, machine: Machine[D], transport: Transport | Callable[[], Transport], *,
                 prefetch: int = 100,
                 partitions: int = 1, new_id: Callable[[], str] | None = None,
                 ensure_queue: Callable[[str], Awaitable[None]] | None = None) -> None:
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise ConfigError(f"machine '{machine.name}': partitions must be from 1 to "
                              f"{MAX_PARTITIONS}, not {partitions}")
        self.machine, self.prefetch = machine, prefetch
        #: The transport, or how to get it once the client is open (a runner made at import).
        self._transport = transport
        #: Declares a queue a transition sends to, as the client's ``send`` would.
        self._ensure_queue = ensure_queue
        self.queue = machine_queue(machine.name)
        #: Instances are spread over this many partition queues (1: the machine's queue).
        self.partitions = partitions
        #: This runner among those of the machine: the partitions spread in the order of
        #: these names, which sort by start time (so a newcomer never takes the one partition
        #: of an unpartitioned machine from the runner that has it).
        self.member = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        self._new_id = new_id
        self._chains: dict[str, asyncio.Task[None]] = {}
        self._subscriptions: list[Subscription] = []
        #: The instances this runner committed last (newest last): a transition judged on
        #: one needs no read, and the broker refuses it if the instance moved on since.
        self._cache: OrderedDict[str, Instance[D]] = OrderedDict()
        #: Verdicts counted since start.
        self.counts: dict[str, int] = {v.value: 0 for v in Verdict}
        #: Per transition (``source -> target on topic``): counts and times.
        self.transitions: dict[str, TransitionNumbers] = {}

    async def start(self) -> None:
        if not self.transport.capabilities.machines:
            raise self.transport.capabilities.unsupported("machines", "run a state machine")
        await self.transport.describe_machine(
            self.machine.name, json.dumps(self.machine.describe()).encode())
        if self._subscriptions:
            return
        # one consumer at a time over every process: the events of an instance are applied
        # in order, one after the other (instances in parallel within the active consumer);
        # as a partition (of one), the queue moves to another process only once the one
        # before has settled what it holds
        await self.transport.declare_queue(self.queue, QueueSpec(delivery_limit=10, arguments=(
            ("x-single-active-consumer", True), (PARTITION_ARGUMENT, 0))))
        for topic in sorted({t.topic for t in self.machine.transitions
                             if not t.topic.startswith(TIMER_PREFIX)}):
            await self.transport.bind_events(self.queue, topic)
        member = {MEMBER_ARGUMENT: self.member}
        if self.partitions == 1:
            self._subscriptions.append(await self.transport.consume(
                self.queue, self.prefetch, self._arrived, member))
            return
        # partitions: each instance's events go on to one partition queue, whose single
        # active consumer is spread over the runners (partition I: the (I mod n)-th of n)
        for i in range(self.partitions):
            queue = self.partition_queue(i)
            await self.transport.declare_queue(queue, QueueSpec(delivery_limit=10, arguments=(
                ("x-single-active-consumer", True), (PARTITION_ARGUMENT, i))))
            self._subscriptions.append(await self.transport.consume(
                queue, self.prefetch, self._arrived, member))
        self._subscriptions.append(await self.transport.consume(
            self.queue, self.prefetch, self._forward, member))

    @property
    def transport(self) -> Transport:
        t = self._transport
        return t() if callable(t) else t

    def partition_queue(self, index: int) -> str:
        return f"{self.queue}.p{index}"

    def queue_of(self, key: str) -> str:
        """The queue that takes ``key``'s events and timers."""
        if self.partitions == 1:
            return self.queue
        return self.partition_queue(zlib.crc32(key.encode()) % self.partitions)

    async def stop(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.cancel()
        chains = list(self._chains.values())
        if chains:
            await asyncio.gather(*chains, return_exceptions=True)

    # -- reading ---------------------------------------------------------------------------

    async def get(self, key: str) -> Instance[D] | None:
        row = await self.transport.find_instance(self.machine.name, key)
        return None if row is None else decode_instance(self.machine, key, row)

    async def list(self, state: str | None = None) -> list[Instance[D]]:
        rows = await self.transport.list_instances(self.machine.name)
        found = [decode_instance(self.machine, key, row) for key, row in rows]
        return sorted((i for i in found if state is None or i.state == state),
                      key=lambda i: i.key)

    async def replay(self, start: Start = "first", *, apply: bool = False) -> ReplayReport[D]:
        """Rebuild the instances from the events kept since ``start`` (``client.keep_events``)
        through this definition, outputs suppressed, and report where they differ from the
        stored ones (a dry run). ``apply=True`` writes the differing ones as new versions and
        arms their pending timers (``client/machine_replay.py``)."""
        stored = {i.key: i for i in await self.list()}
        return await rebuild(self.machine, self.transport, start, stored, apply=apply,
                             queue_of=self.queue_of)

    # -- applying events --------------------------------------------------------------------

    def _arrived(self, delivery: Delivery) -> None:
        event = event_of(delivery)
        try:
            key = str(event.headers.get(KEY_HEADER) or self.machine.key_of(event))
        except Exception as e:  # no key: it can never apply; a dead letter says why
            key = ""
            self._chain(key, self._dead(delivery, key, str(e)))
            return
        self._chain(key, self._apply(delivery, event, key))

    def _forward(self, delivery: Delivery) -> None:
        """An event for the machine's queue goes on to its instance's partition, moved there
        in one step with its ack (so it is neither lost nor doubled)."""
        event = event_of(delivery)
        try:
            key = str(event.headers.get(KEY_HEADER) or self.machine.key_of(event))
        except Exception as e:
            self._chain("", self._dead(delivery, "", str(e)))
            return
        m = delivery.message
        moved = replace(m, routing_key=self.queue_of(key), headers={
            **(m.headers or {}), TOPIC_HEADER: event.topic, KEY_HEADER: key})
        commit = TransitionCommit(VHOST, self.machine.name, key, None, (("", moved),))

        async def forward() -> None:
            try:
                await self.transport.commit_transition(delivery.delivery_tag, commit)
            except Exception:
                log.exception("machine '%s': event %s could not move to its partition; it "
                              "comes again", self.machine.name, event.id)
                with contextlib.suppress(Exception):
                    await self.transport.nack(delivery.delivery_tag, True, RETRY_DELAY_MS)

        self._chain(f"\x1f{key}", forward())

    def _chain(self, key: str, work: Any) -> None:
        before = self._chains.get(key)

        async def run() -> None:
            if before is not None:
                with contextlib.suppress(Exception):
                    await before
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._chains[key] = task
        task.add_done_callback(lambda t: self._chains.pop(key, None)
                               if self._chains.get(key) is t else None)

    async def _apply(self, delivery: Delivery, event: Event, key: str) -> None:
        """Apply ``event``; if the instance moved on meanwhile (an operator's move, or another
        process that was the active consumer), read it again and judge the event anew."""
        try:
            fresh = False
            for _ in range(CONFLICT_ATTEMPTS):
                try:
                    if await self._apply_once(delivery, event, key, fresh):
                        return
                except VersionConflictError:
                    self.counts["conflicts"] = self.counts.get("conflicts", 0) + 1
                self._cache.pop(key, None)
                fresh = True
            raise VersionConflictError(f"instance '{key}' kept moving on under the event")
        except Exception:
            log.exception("machine '%s': event %s for '%s' failed; it comes again",
                          self.machine.name, event.id, key)
            with contextlib.suppress(Exception):
                await self.transport.nack(delivery.delivery_tag, True, RETRY_DELAY_MS)

    async def _apply_once(self, delivery: Delivery, event: Event, key: str,
                          fresh: bool) -> bool:
        """Judge ``event`` on the instance as this runner last committed it (read from the
        broker when it has none, or ``fresh``) and settle it; False when a verdict made on
        the remembered instance must be checked on the stored one first. A transition from a
        version that is no longer current (another process, or an operator, moved it on) is
        refused by the broker: VersionConflictError."""
        instance = None if fresh else self._cache.get(key)
        remembered = instance is not None
        if not remembered:
            instance = await self.get(key)
        started = time.perf_counter()
        try:
            step = self.machine.step(instance, event, key, time.time())
        except Exception:
            await self._failed(instance, event, key)
            raise
        handler_ms = (time.perf_counter() - started) * 1000
        if remembered and step.verdict is not Verdict.APPLIED:
            return False  # (only a commit checks the version: judge it on the stored one)
        if step.verdict is Verdict.APPLIED:
            for queue in {e.queue for e in step.messages if e.queue}:
                if self._ensure_queue is not None:
                    await self._ensure_queue(queue)
            committing = time.perf_counter()
            await self.transport.commit_transition(
                delivery.delivery_tag, self._commit(key, step, instance, handler_ms))
            assert step.instance is not None and step.transition is not None
            self._remember(key, step.instance)
            numbers = self._numbers(step.transition.name)
            numbers.committed(time.time(), handler_ms)
            numbers.commit.observe((time.perf_counter() - committing) * 1000)
        elif step.verdict in (Verdict.UNKNOWN_INSTANCE, Verdict.NOT_ACCEPTED):
            await self._dead(delivery, key, step.reason,
                             instance.version if instance is not None else 0)
        else:
            await self.transport.ack([delivery.delivery_tag])
        self.counts[step.verdict.value] += 1
        return True

    def _remember(self, key: str, instance: Instance[D]) -> None:
        cache = self._cache
        cache[key] = instance
        cache.move_to_end(key)
        if len(cache) > CACHED_INSTANCES:
            cache.popitem(last=False)

    def _numbers(self, transition: str) -> TransitionNumbers:
        found = self.transitions.get(transition)
        if found is None:
            found = self.transitions[transition] = TransitionNumbers()
        return found

    async def _failed(self, instance: Instance[D] | None, event: Event, key: str) -> None:
        """A handler (or guard) raised: counted against the transition it was in, here and
        by the broker (for its numbers; nothing else changes)."""
        state = instance.state if instance is not None else self.machine.initial
        for t in self.machine.transitions:
            if t.source == state and t.topic == event.topic:
                self._numbers(t.name).failures += 1
                with contextlib.suppress(Exception):
                    await self.transport.commit_transition(None, TransitionCommit(
                        VHOST, self.machine.name, key, None, transition=t.name,
                        outcome="failed"))
                return

    def statistics(self) -> dict[str, Any]:
        """This runner's numbers since it started. Per transition: how many committed, their
        rate (per second, the last few seconds), failures, handler and commit time (ms);
        and the verdicts of every event so far (applied, duplicate, stale, dead-lettered,
        ...). The broker counts the same over every runner (``GET /api/machines/V/NAME``)."""
        now = time.time()
        return {"machine": self.machine.name, "events": dict(self.counts),
                "transitions": {name: n.as_dict(now)
                                for name, n in sorted(self.transitions.items())}}

    async def _dead(self, delivery: Delivery, key: str, reason: str,
                    expected_version: int | None = None) -> None:
        """A dead letter with its reason, committed with the event's ack (refused if the
        instance moved on since the verdict, so the event is judged again)."""
        m = delivery.message
        dead = replace(m, routing_key=dead_letter_queue(self.queue),
                       headers={**(m.headers or {}), REASON_HEADER: reason[:500]})
        await self.transport.commit_transition(delivery.delivery_tag, TransitionCommit(
            VHOST, self.machine.name, key, None, messages=(("", dead),),
            expected_version=expected_version, outcome="dead_lettered"))
        self.counts["dead_lettered"] = self.counts.get("dead_lettered", 0) + 1

    def _commit(self, key: str, step: Step[D], before: Instance[D] | None,
                handler_ms: float) -> TransitionCommit:
        assert step.instance is not None and step.transition is not None
        messages = []
        for e in step.messages:
            body, ctype = encode_body(e.body, None)
            message = Message(body, e.queue or e.topic or "", headers=e.headers or None,
                              content_type=ctype, message_id=self._id(), persistent=True)
            messages.append(("" if e.queue else EVENTS_EXCHANGE, message))
        # A cancelled or replaced timer is not looked for among the delayed messages (a scan
        # of the delayed store per cancel): its message stays until due, then is dropped
        # unapplied (the instance no longer has it armed).
        timers = []
        for change in step.timers:
            if change.after_s is not None:
                queue = self.queue_of(key)
                timer = Message(b"", queue, message_id=change.id, persistent=True,
                                headers={TOPIC_HEADER: f"{TIMER_PREFIX}{change.name}",
                                         KEY_HEADER: key})
                timers.append((queue, timer, int(change.after_s * 1000)))
        return TransitionCommit(VHOST, self.machine.name, key,
                                encode_instance(step.instance, time.time()),
                                tuple(messages), tuple(timers),
                                expected_version=before.version if before is not None else 0,
                                version=step.instance.version,
                                transition=step.transition.name, handler_ms=handler_ms)

    def _id(self) -> str:
        return self._new_id() if self._new_id is not None else uuid.uuid4().hex
