"""Broker: the one object the faces call, composed of explicit collaborators.

- :class:`~tidings.routing.vhost.VirtualHosts`: the virtual hosts, each owning its exchanges
  and queues, routing, enqueue and dead-lettering;
- :class:`~tidings.routing.declarations.Declarations`: declaring and deleting the topology;
- :class:`~tidings.routing.delayed.DelayedDelivery`: messages held until due;
- :class:`~tidings.routing.upkeep.Upkeep`: the once-a-second tick;
- :class:`~tidings.routing.expiry.HeadExpiryTimers`: one TTL timer per queue.

Each is given the registry, store and clock it needs when it is built, here and nowhere
else. Everything is synchronous and runs on the event loop's thread; durability is asked for
separately with :meth:`Broker.sync` (one future per batch, not per message), which is what a
publisher confirm waits on. The faces see this class through the typed front door,
:class:`tidings.routing.front_door.FrontDoor`; recovery from the store happens in the
constructor (:mod:`tidings.routing.recovery`).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tidings.clock import Clock, LoopClock
from tidings.dead_letters import dead_letter_queue, revive
from tidings.errors import (
    AccessRefusedError,
    ConfigError,
    NotAllowedError,
    NotFoundError,
    PreconditionFailedError,
)
from tidings.message import Message, Record
from tidings.routing.declarations import Declarations
from tidings.routing.delayed import DelayedDelivery, DelayedMessages, header_delay_ms
from tidings.routing.exchange import DELAYED, Binding, Exchange
from tidings.routing.expiry import HeadExpiryTimers
from tidings.routing.front_door import BindingInfo, ExchangeInfo, PublishResult, QueueInfo
from tidings.routing.machines import MachineRows, TransitionCommit
from tidings.routing.policies import Policy
from tidings.routing.queue import DEFAULT_WINDOW, Entry, Queue
from tidings.routing.recovery import recover
from tidings.routing.reporting import broker_statistics, queue_statistics
from tidings.routing.session import Consumer, Delivery, Session
from tidings.routing.stream import StreamQueue
from tidings.routing.upkeep import Upkeep
from tidings.routing.vhost import DEFAULT_VHOST, Sequence, VirtualHost, VirtualHosts
from tidings.statistics import (
    BrokerStatistics,
    Counters,
    Histogram,
    QueueStatistics,
    StreamStatistics,
    Tally,
    TransitionNumbers,
)
from tidings.storage import key_admin, quarantine, segment_keys
from tidings.storage.base import Store
from tidings.storage.key_admin import KeyStatus, Rotated
from tidings.storage.keys import Keyring
from tidings.storage.streams import StreamFiles

__all__ = ["DEFAULT_VHOST", "MAX_WRITE_BACKLOG_BYTES", "Broker", "PublishResult"]

#: Bytes of uncommitted writes tolerated before acks and unconfirmed publishes wait for the
#: store (each write counts its payload plus a fixed overhead).
MAX_WRITE_BACKLOG_BYTES = 16 * 2**20

#: Shared results for the common case (routed to a few queues, nothing refused).
_ROUTED = [PublishResult(n) for n in range(16)]


class Broker:
    def __init__(
        self,
        store: Store,
        clock: Clock | None = None,
        *,
        queue_window: int = DEFAULT_WINDOW,
        default_consumer_timeout_ms: int | None = 30 * 60 * 1000,
        streams: StreamFiles | None = None,
    ) -> None:
        self.store = store
        self._streams = streams
        self.clock: Clock = clock or LoopClock()
        self.counters = Counters()
        #: Broker-wide operation counts (unroutable, deliveries by kind, acks, queues).
        self.tally = Tally()
        self.seq = seq = Sequence(store.max_seq())
        self.timers = HeadExpiryTimers(self.clock)
        self.vhosts = VirtualHosts(store=store, clock=self.clock, seq=seq,
                                   counters=self.counters, timers=self.timers,
                                   streams=self.streams, window=queue_window)
        #: The delayed messages (the data); :attr:`delays` releases them.
        self.delayed = DelayedMessages(store, self.clock.time)
        self.delays = DelayedDelivery(self.delayed, self.vhosts, self.clock, seq)
        self.declarations = Declarations(self.vhosts, store, self.clock, self.delayed, seq,
                                         self.tally)
        self.sessions: set[Session] = set()
        self.upkeep = Upkeep(self.vhosts, self.sessions, self.declarations, self.clock,
                             self.counters, default_consumer_timeout_ms)
        self.closed = False
        #: State machine instances (opaque rows) and the transition commit.
        self.machine_rows = MachineRows(store, self.vhosts)
        #: Transitions whose commit time is counted when the store's future is done.
        self._timed_future: asyncio.Future[None] | None = None
        self._timed: list[tuple[TransitionNumbers, float]] = []
        recover(store, self.vhosts, self.delayed, self.clock)
        self.machine_rows.recover()
        self._forget_orphan_streams()

    # -- lifecycle and durability ----------------------------------------------------------

    @property
    def durable(self) -> bool:
        """Whether a confirmed message survives a crash (False for ``memory://``)."""
        return self.store.durable

    def streams(self) -> StreamFiles:
        """The stream logs, opened on first use: ``streams/`` beside a durable store's files,
        else a temporary directory removed on close (a ``memory://`` broker's streams)."""
        if self._streams is None:
            directory = getattr(self.store, "directory", None)
            if self.store.durable and isinstance(directory, Path):
                self._streams = StreamFiles(directory / "streams",
                                            keyring=getattr(self.store, "keyring", None))
            else:
                self._streams = StreamFiles(tempfile.mkdtemp(prefix="tidings-streams-"),
                                            durable=False, temporary=True)
        return self._streams

    def _forget_orphan_streams(self) -> None:
        """Delete the segment files of streams that are no longer defined (a crash between
        a stream's deletion and its files')."""
        directory = getattr(self.store, "directory", None)
        if self._streams is None and not (isinstance(directory, Path)
                                          and (directory / "streams").is_dir()):
            return
        live = {q.store_key for q in self.vhosts.queues() if isinstance(q, StreamQueue)}
        files = self.streams()
        for name in files.names():
            if name not in live:
                files.delete(name)

    def sync(self) -> asyncio.Future[None]:
        """A future resolved when everything done so far is durable (publisher confirms)."""
        future = self.store.sync()
        if self._streams is not None and self._streams.pending():
            return _both(future, self._streams.sync())
        return future

    # -- encryption at rest ------------------------------------------------------------------

    async def key_status(self) -> KeyStatus:
        """What the data directory is sealed under (``tidings keys status`` while serving)."""
        directory = getattr(self.store, "directory", None)
        if not self.store.durable or not isinstance(directory, Path):
            return KeyStatus()  # nothing on disk
        return await asyncio.to_thread(key_admin.status, directory, False)

    async def rotate_keys(self, keyring: Keyring | None = None) -> Rotated:
        """Rotate the master key while serving: every data key (the store's and each stream
        segment's) rewrapped by ``keyring``'s active key (by default the keyring read again
        from where the process took it: its key file), new writes under a new data key; no
        record is rewritten. Refused, changing nothing, when ``keyring`` lacks a master key
        in use."""
        rotate = getattr(self.store, "rotate_keys", None)
        if rotate is None or getattr(self.store, "keyring", None) is None:
            raise PreconditionFailedError("this broker was started without a keyring: "
                                          "encryption at rest is off, there is no key to "
                                          "rotate (docs/security.md)")
        keyring = keyring or Keyring.from_environment()
        if keyring is None:
            raise ConfigError("no keyring to rotate to: the key file or "
                              "TIDINGS_ENCRYPTION_KEY is gone")
        streams = self.streams()
        await asyncio.to_thread(segment_keys.check_all, streams.directory, keyring)
        rewrapped, number = await asyncio.to_thread(rotate, keyring)
        streams.use_keyring(keyring)  # segments made from now on: under the new master key
        segments = await asyncio.to_thread(segment_keys.rewrap_all, streams.directory, keyring)
        return Rotated(rewrapped, number, segments, keyring.active)

    def write_backlog_exceeded(self) -> bool:
        """True when the store lags behind by more than :data:`MAX_WRITE_BACKLOG_BYTES`.

        Faces that settle or publish without waiting for durability (acks, unconfirmed
        publishes) then await :meth:`sync` before taking more, so memory stays bounded.
        """
        return self.store.backlog() > MAX_WRITE_BACKLOG_BYTES

    def write_error(self) -> str | None:
        """Why the store cannot write right now (its writes are retried), or None."""
        return self.store.write_error()

    def start(self) -> None:
        """Start housekeeping timers (call from inside the running event loop)."""
        self.upkeep.start()
        self.delays.arm()
        for queue in self.vhosts.queues():
            queue.expire_head()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for session in list(self.sessions):
            session.close()
        self.stop_timers()
        self.store.close()
        if self._streams is not None:
            self._streams.close()

    def stop_timers(self) -> None:
        """Cancel every timer (close does this; tests use it to play a crashed process)."""
        self.timers.cancel_all()
        self.delays.stop()
        self.upkeep.stop()

    # -- the topology (declarations) -------------------------------------------------------

    def vhost_names(self) -> list[str]:
        return self.vhosts.names()

    def declare_vhost(self, name: str) -> None:
        self.vhosts.declare(name)

    def delete_vhost(self, name: str) -> None:
        """Everything of vhost ``name`` goes: queues and their messages, exchanges, bindings,
        policies, state machine instances; then the vhost."""
        self.declarations.delete_vhost(name)
        self.machine_rows.forget_vhost(name)

    def declare_exchange(self, vhost: str, name: str, kind: str = "direct", *,
                         durable: bool = True, auto_delete: bool = False,
                         internal: bool = False, arguments: dict[str, Any] | None = None,
                         passive: bool = False) -> ExchangeInfo:
        return exchange_info(self.declarations.declare_exchange(
            vhost, name, kind, durable=durable, auto_delete=auto_delete, internal=internal,
            arguments=arguments, passive=passive))

    def delete_exchange(self, vhost: str, name: str, *, if_unused: bool = False) -> None:
        self.declarations.delete_exchange(vhost, name, if_unused=if_unused)

    def list_exchanges(self, vhost: str) -> list[ExchangeInfo]:
        return [exchange_info(e) for e in self.vhosts.get(vhost).exchanges.values()]

    def bind(self, vhost: str, source: str, destination: str, routing_key: str = "",
             arguments: dict[str, Any] | None = None, *, to_exchange: bool = False) -> None:
        self.declarations.bind(vhost, source, destination, routing_key, arguments,
                               to_exchange=to_exchange)

    def unbind(self, vhost: str, source: str, destination: str, routing_key: str = "",
               arguments: dict[str, Any] | None = None, *, to_exchange: bool = False) -> None:
        self.declarations.unbind(vhost, source, destination, routing_key, arguments,
                                 to_exchange=to_exchange)

    def list_bindings(self, vhost: str) -> list[BindingInfo]:
        v = self.vhosts.get(vhost)
        return [binding_info(v, e, b) for e in v.exchanges.values() for b in e.bindings]

    def declare_queue(self, vhost: str, name: str = "", *, durable: bool = True,
                      exclusive: bool = False, auto_delete: bool = False,
                      arguments: dict[str, Any] | None = None, passive: bool = False,
                      connection_id: str | None = None, reserved_ok: bool = False) -> QueueInfo:
        return queue_info(self.declarations.declare_queue(
            vhost, name, durable=durable, exclusive=exclusive, auto_delete=auto_delete,
            arguments=arguments, passive=passive, connection_id=connection_id,
            reserved_ok=reserved_ok))

    @staticmethod
    def new_queue_name() -> str:
        return Declarations.new_queue_name()

    def delete_queue(self, vhost: str, name: str, *, if_unused: bool = False,
                     if_empty: bool = False, connection_id: str | None = None) -> int:
        return self.declarations.delete_queue(vhost, name, if_unused=if_unused,
                                              if_empty=if_empty, connection_id=connection_id)

    def purge_queue(self, vhost: str, name: str, connection_id: str | None = None) -> int:
        return self.declarations.purge_queue(vhost, name, connection_id)

    def close_connection(self, connection_id: str) -> None:
        """Delete the exclusive queues a closed connection owned."""
        self.declarations.close_connection(connection_id)

    def list_queues(self, vhost: str) -> list[QueueInfo]:
        return [queue_info(q) for q in self.vhosts.get(vhost).queues.values()]

    def describe_queue(self, vhost: str, name: str) -> QueueInfo:
        return queue_info(self.vhosts.get_queue(vhost, name))

    def queue_exists(self, vhost: str, name: str) -> bool:
        return self.vhosts.find_queue(vhost, name) is not None

    # -- state machines ----------------------------------------------------------------------

    def commit_transition(self, session: Session, delivery_tag: int | None,
                          commit: TransitionCommit) -> None:
        """One transition as one step (see ``routing/machines.py``); its commit time is
        counted until the step is durable."""
        started = time.perf_counter()
        numbers = self.machine_rows.commit(
            session, delivery_tag, commit,
            lambda vhost, exchange, message, delay_ms: self.publish(
                vhost, exchange, message, delay_ms=delay_ms))
        if numbers is not None:
            self._time_commit(numbers, started)

    def _time_commit(self, numbers: TransitionNumbers, started: float) -> None:
        """Count a transition's commit time once it is durable: one callback per group
        commit (the store's future is shared by the writes it takes), at the store's pace."""
        future = self.store.sync(hurry=False)
        if future is self._timed_future:
            self._timed.append((numbers, started))
            return
        batch = [(numbers, started)]
        self._timed_future, self._timed = future, batch

        def durable(f: asyncio.Future[None]) -> None:
            if not f.cancelled() and f.exception() is None:
                now = time.perf_counter()
                for n, t in batch:
                    n.commit.observe((now - t) * 1000)

        future.add_done_callback(durable)

    def machine_statistics(self, vhost: str, machine: str) -> dict[str, Any]:
        return self.machine_rows.statistics(vhost, machine)

    def transition_numbers(self, vhost: str) -> list[tuple[str, str, TransitionNumbers]]:
        return self.machine_rows.transition_numbers(vhost)

    def find_instance(self, vhost: str, machine: str, key: str) -> bytes | None:
        return self.machine_rows.find(vhost, machine, key)

    def list_instances(self, vhost: str, machine: str) -> list[tuple[str, bytes]]:
        return self.machine_rows.list(vhost, machine)

    def machine_names(self, vhost: str) -> list[str]:
        return self.machine_rows.machines(vhost)

    def describe_machine(self, vhost: str, machine: str, description: bytes) -> None:
        self.machine_rows.describe(vhost, machine, description)

    def machine_description(self, vhost: str, machine: str) -> bytes | None:
        return self.machine_rows.description(vhost, machine)

    def set_policy(self, policy: Policy) -> None:
        self.declarations.set_policy(policy)

    def delete_policy(self, vhost: str, name: str, *, operator: bool = False) -> None:
        self.declarations.delete_policy(vhost, name, operator=operator)

    def list_policies(self, vhost: str, *, operator: bool = False) -> list[Policy]:
        return self.vhosts.get(vhost).policies.list(operator)

    # routing's own callers and tests reach queues directly (faces use describe_queue)
    def get_queue(self, vhost: str, name: str) -> Queue:
        return self.vhosts.get_queue(vhost, name)

    def find_queue(self, vhost: str, name: str) -> Queue | None:
        return self.vhosts.find_queue(vhost, name)

    # -- publishing ------------------------------------------------------------------------

    def publish(self, vhost: str, exchange: str, message: Message, *,
                mandatory: bool = False, delay_ms: int | None = None) -> PublishResult:
        """Route and enqueue ``message``; call :meth:`sync` to wait until it is durable."""
        v = self.vhosts.get(vhost)
        ex = v.exchanges.get(exchange)
        if ex is None:
            raise NotFoundError(f"no exchange '{exchange}' in vhost '{vhost}'")
        if ex.internal:
            raise AccessRefusedError(
                f"cannot publish to internal exchange '{exchange}' in vhost '{vhost}'"
            )
        message.exchange = exchange
        self.counters.published += 1
        now = self.clock.time()
        if delay_ms is None and ex.kind == DELAYED:
            delay_ms = header_delay_ms(message)
        if delay_ms:
            self.delays.publish_later(vhost, exchange, message, now, delay_ms)
            return PublishResult(1)
        queues = v.route(ex, message)
        if not queues:
            if mandatory:
                self.tally.unroutable_returned += 1
            else:
                self.tally.unroutable_dropped += 1
            return PublishResult(0, returned=mandatory)
        if v.enqueue(queues, message, now):
            return PublishResult(len(queues), refused=True)
        return _ROUTED[len(queues)] if len(queues) < len(_ROUTED) else PublishResult(len(queues))

    # -- sessions and consumers ------------------------------------------------------------

    def open_session(self, vhost: str = DEFAULT_VHOST, connection_id: str = "local") -> Session:
        self.vhosts.get(vhost)
        session = Session(self, vhost, connection_id, self.tally)
        self.sessions.add(session)
        return session

    def session_count(self, vhosts: set[str] | None = None) -> int:
        """Open sessions (channels), in ``vhosts`` or in all."""
        if vhosts is None:
            return len(self.sessions)
        return sum(1 for s in self.sessions if s.vhost in vhosts)

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
        (``consumer.start()``) after answering consume-ok."""
        queue = self.vhosts.get_queue(session.vhost, queue_name)
        Declarations.check_exclusive(queue, session.connection_id)
        queue.check_consumer(prefetch_count, no_ack, arguments or {})
        tag = consumer_tag or session.new_consumer_tag()
        if tag in session.consumers:
            raise NotAllowedError(f"attempt to reuse consumer tag '{tag}'")
        if any(c.exclusive for c in queue.consumers) or (exclusive and queue.consumers):
            raise AccessRefusedError(
                f"queue '{queue_name}' in vhost '{session.vhost}' in exclusive use"
            )
        consumer = Consumer(tag, queue, session, on_delivery, prefetch_count=prefetch_count,
                            no_ack=no_ack, exclusive=exclusive, arguments=arguments or {})
        session.add_consumer(consumer)
        queue.add_consumer(consumer, self.clock.time())
        if dispatch:
            queue.dispatch()
        return consumer

    def get(self, session: Session, queue_name: str, *, no_ack: bool = False) -> Delivery | None:
        queue = self.vhosts.get_queue(session.vhost, queue_name)
        Declarations.check_exclusive(queue, session.connection_id)
        now = self.clock.time()
        queue.touch(now)
        entry = queue.take()
        if entry is None:
            self.tally.get_empty += 1
            return None
        queue.mark_delivered(entry, now)
        return session.register_get(queue, entry, no_ack)

    # what sessions ask of their owner (SessionOwner)

    def time(self) -> float:
        return self.clock.time()

    def cancel(self, session: Session, consumer_tag: str) -> None:
        consumer = session.remove_consumer(consumer_tag)
        if consumer is None:
            return
        queue = consumer.queue
        queue.remove_consumer(consumer, self.clock.time())
        if queue.auto_delete and not queue.consumers and not queue.deleted:
            self.declarations.remove_queue(queue)

    def requeue_later(self, queue: Queue, entry: Entry, delay_ms: int) -> None:
        self.delays.requeue_later(queue, entry, delay_ms)

    def forget_session(self, session: Session) -> None:
        self.sessions.discard(session)

    # -- waiting messages by id ------------------------------------------------------------

    def browse(self, vhost: str, queue_name: str, limit: int) -> list[Message]:
        """Up to ``limit`` ready messages of a queue, oldest first, left in place."""
        queue = self.vhosts.get_queue(vhost, queue_name)
        return [e.record.message for e in queue.ready.browse(limit)]

    def take(self, vhost: str, queue_name: str, message_id: str) -> Message | None:
        """Remove a waiting (ready or delayed) message by id; None when none is waiting. Far
        delayed messages are read from committed rows: ``await sync()`` first to see the
        latest ones."""
        queue = self.vhosts.get_queue(vhost, queue_name)
        for entry in queue.ready.browse(queue.ready_count):
            if entry.record.message.message_id == message_id:
                removed = queue.ready.remove(entry.seq)
                if removed is not None:
                    return removed.record.message
        for seq, record in self.delayed.entries():
            if (record.message.message_id == message_id
                    and self._delayed_for(record, vhost, queue_name)
                    and self.delays.cancel(seq, record)):
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
        v = self.vhosts.get(vhost)
        exchange = v.exchanges.get(target.get("exchange", ""))
        return exchange is not None and any(
            q.name == queue_name for q in v.route(exchange, record.message))

    # -- streams: named readers' offsets ---------------------------------------------------

    def _stream(self, vhost: str, name: str) -> StreamQueue:
        queue = self.vhosts.get_queue(vhost, name)
        if not isinstance(queue, StreamQueue):
            raise PreconditionFailedError(f"queue '{name}' in vhost '{vhost}' is not a stream")
        return queue

    def commit_offset(self, vhost: str, stream: str, reader: str, offset: int,
                      metadata: str | None = None) -> None:
        """Store that ``reader`` has processed ``stream`` up to ``offset`` (-1: nothing yet;
        durable once :meth:`sync` resolves); a restarted reader resumes after it."""
        self._stream(vhost, stream).commit(reader, offset, metadata)

    def find_reader(self, vhost: str, stream: str, reader: str) -> tuple[int, str] | None:
        """The last offset ``reader`` committed and the metadata committed with it."""
        queue = self._stream(vhost, stream)
        offset = queue.readers.get(reader)
        return None if offset is None else (offset, queue.reader_notes.get(reader, ""))

    def list_readers(self, vhost: str, stream: str) -> list[str]:
        """The names of the stream's named readers (those that committed an offset)."""
        return list(self._stream(vhost, stream).readers)

    def forget_reader(self, vhost: str, stream: str, reader: str) -> None:
        """Drop ``reader``'s committed offset (durable once :meth:`sync` resolves)."""
        self._stream(vhost, stream).forget_reader(reader)

    def stream_statistics(self, vhost: str, name: str) -> StreamStatistics:
        return self._stream(vhost, name).stream_statistics(self.clock.time())

    # -- streams as Kafka partitions: whole record batches in, batches out ------------------

    def append_batch(self, vhost: str, stream: str, batch: bytes, count: int) -> int:
        """Append one record batch of ``count`` records; returns its first offset (durable
        once :meth:`sync` resolves)."""
        return self._stream(vhost, stream).append_batch(batch, count, self.clock.time())

    def read_batches(self, vhost: str, stream: str, offset: int, max_bytes: int
                     ) -> list[bytes]:
        """Record batches from the one holding ``offset``, about ``max_bytes`` of them."""
        return self._stream(vhost, stream).read_batches(offset, max_bytes)

    def stream_bounds(self, vhost: str, stream: str) -> tuple[int, int]:
        """The first retained offset and the offset after the last readable record."""
        queue = self._stream(vhost, stream)
        return min(queue.log.first_offset, queue.end_offset), queue.end_offset

    def stream_offset_at(self, vhost: str, stream: str, timestamp_ms: int
                         ) -> tuple[int, int]:
        """The offset and timestamp of the first record stamped at or after
        ``timestamp_ms`` (the end offset and -1 when none is)."""
        return self._stream(vhost, stream).offset_for_time(timestamp_ms)

    def wait_for_records(self, vhost: str, stream: str) -> asyncio.Future[None]:
        """Resolved when more of ``stream`` becomes readable (or it is deleted)."""
        return self._stream(vhost, stream).wait_for_records()

    # -- dead letters (one implementation for every face) ----------------------------------

    def dead_letter_queue(self, vhost: str, queue_name: str) -> str:
        """Where a queue's dead letters wait: the queue its dead-letter routing key names on
        the default exchange, else ``<name>.dead`` (the client API's convention)."""
        options = self.vhosts.get_queue(vhost, queue_name).options
        dead = dead_letter_queue(queue_name)
        if options.dead_letter_exchange == "" and options.dead_letter_routing_key:
            dead = options.dead_letter_routing_key
        if self.vhosts.find_queue(vhost, dead) is None:
            raise NotFoundError(f"queue '{queue_name}' in vhost '{vhost}' has no dead-letter "
                                f"queue '{dead}'")
        return dead

    def dead_letters(self, vhost: str, queue_name: str, limit: int) -> list[Message]:
        """Up to ``limit`` of a queue's dead letters, oldest first, left in place."""
        return self.browse(vhost, self.dead_letter_queue(vhost, queue_name), limit)

    def replay_dead_letters(self, vhost: str, queue_name: str,
                            ids: set[str] | None = None) -> int:
        """Move dead letters (all, or those with ``ids``) back into the queue, without their
        ``x-`` headers; returns how many. Durable once ``sync()`` resolves."""
        dead = self.vhosts.get_queue(vhost, self.dead_letter_queue(vhost, queue_name))
        replayed = 0
        for entry in dead.ready.browse(dead.ready_count):
            message = entry.record.message
            if ids is not None and message.message_id not in ids:
                continue
            if dead.ready.remove(entry.seq) is None:
                continue
            self.publish(vhost, "", revive(message, queue_name))
            replayed += 1
        return replayed

    def purge_dead_letters(self, vhost: str, queue_name: str) -> int:
        """Drop a queue's dead letters; returns how many."""
        return self.purge_queue(vhost, self.dead_letter_queue(vhost, queue_name))

    # -- numbers ---------------------------------------------------------------------------

    def held_bytes(self) -> int:
        """Message bytes the broker holds in memory: every queue's ready window and unacked
        messages (what the memory alarm measures; paged-out messages are on disk only)."""
        return sum(q.held_bytes() for q in self.vhosts.queues())

    def quarantined(self) -> list[quarantine.QuarantinedRecord]:
        """Stored records that could not be read, moved aside (see ``storage/quarantine``)."""
        return quarantine.records(self.store)

    def drop_quarantined(self, ident: str) -> None:
        quarantine.drop(self.store, ident)

    def queue_statistics(self, vhost: str, name: str) -> QueueStatistics:
        return self._queue_statistics(self.vhosts.get_queue(vhost, name))

    def queue_histograms(self, vhost: str, name: str) -> tuple[Histogram, Histogram]:
        """A queue's waiting-time and processing-time histograms (for Prometheus)."""
        queue = self.vhosts.get_queue(vhost, name)
        return queue.waiting, queue.processing

    def _queue_statistics(self, queue: Queue) -> QueueStatistics:
        delayed = self.delayed.per_queue.get((queue.vhost, queue.name), 0)
        return queue_statistics(queue, delayed, self.clock.time())

    def statistics(self, vhosts: set[str] | None = None) -> BrokerStatistics:
        """Every queue's numbers and the totals, over ``vhosts`` (None: all)."""
        shown = [v for v in self.vhosts if vhosts is None or v.name in vhosts]
        queues = [self._queue_statistics(q) for v in shown for q in v.queues.values()]
        now = self.clock.time()
        streams = tuple(q.stream_statistics(now) for v in shown for q in v.queues.values()
                        if isinstance(q, StreamQueue))
        return broker_statistics(
            # publishes are counted per vhost at their queues only
            queues, self.counters if vhosts is None else None,
            exchanges=sum(len(v.exchanges) for v in shown),
            sessions=self.session_count(vhosts),
            delayed=len(self.delayed) if vhosts is None else sum(q.delayed for q in queues),
            quarantined=len(self.quarantined()),
            streams=streams,
            operations=self.tally.as_dict() if vhosts is None else None,
        )


def _both(a: asyncio.Future[None], b: asyncio.Future[None]) -> asyncio.Future[None]:
    """A future resolved when ``a`` and ``b`` are (failed when either failed)."""
    joined = a.get_loop().create_future()

    def settle(_: asyncio.Future[None]) -> None:
        if joined.done() or not (a.done() and b.done()):
            return
        for f in (a, b):
            if f.cancelled():
                joined.cancel()
                return
            if (error := f.exception()) is not None:
                joined.set_exception(error)
                return
        joined.set_result(None)

    a.add_done_callback(settle)
    b.add_done_callback(settle)
    return joined


def queue_info(q: Queue) -> QueueInfo:
    a = q.applied
    return QueueInfo(q.vhost, q.name, q.durable, q.exclusive_owner is not None, q.auto_delete,
                     q.arguments, q.options.queue_type, q.ready_count, len(q.consumers),
                     a.policy, a.operator_policy, a.definition)


def exchange_info(e: Exchange) -> ExchangeInfo:
    return ExchangeInfo(e.vhost, e.name, e.kind, e.durable, e.auto_delete, e.internal,
                        e.arguments, e.policy)


def binding_info(v: VirtualHost, source: Exchange, b: Binding) -> BindingInfo:
    found = v.exchanges.get(b.destination) if b.to_exchange else v.queues.get(b.destination)
    durable = source.durable and found is not None and found.durable
    return BindingInfo(v.name, b.source, b.destination, b.to_exchange, b.routing_key,
                       dict(b.args), durable)
