"""The Kafka engine (``kafka://``, ``kafkas://``) of the engine core, on aiokafka: only Kafka
calls. The delivery rules are the core's (:mod:`tidings.client.engine`); here is how they land
on Kafka (docs/kafka.md says it for users; names and records are
:mod:`tidings.client.kafka_names`).

- **A queue** is a topic read by one consumer group; each process that consumes it is a
  member (:mod:`tidings.client.kafka_cursor`), so the queue's partitions are shared among
  the processes. Messages are acknowledged one by one: the group's committed offset is the
  lowest one not settled (:mod:`tidings.client.kafka_ledger`).
- **Nack, retry, dead letters**: the message is produced again (to its queue with one failure
  more, to the delayed topic, or to ``<name>.dead``) and, once Kafka has it, the delivery is
  settled. The rules (delivery limit, dead letters, TTL) are kept in the catalog.
- **Delays**: the topic ``tidings.delayed``, whose records carry their queue and due time; the
  processes that send delayed messages or consume queues are members of one group that moves
  each due record into its queue (a mover holds the records it waits for in memory).
- **Events**: an event topic is a Kafka topic of that name; a queue bound to a pattern reads
  every topic the pattern matches (AMQP's ``*`` and ``#`` over the dot-separated name,
  exactly as on the other brokers), looked for again every second; a binding starts at the
  end of the topics that exist when it is made.
- **Delete and replay** write a removal mark to the catalog; readers skip marked records.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
)

from tidings.client.engine import PRIVATE_PREFIX
from tidings.client.kafka_catalog import Catalog
from tidings.client.kafka_cursor import Cursor, CursorReader, Decode
from tidings.client.kafka_names import (
    CATALOG,
    DELAY_GROUP,
    DELAYED,
    DUE,
    PROBE,
    TARGET,
    header,
    message_of_record,
    queue_group,
    queue_topic,
    record_of,
    topic_of,
)
from tidings.client.kafka_outbox import Outbox
from tidings.client.kafka_streams import KafkaLogs
from tidings.client.kafka_url import KafkaSettings, parse
from tidings.client.remote import QueueRules, broker_statistics, queue_statistics
from tidings.client.tokens import Stored, Token
from tidings.client.transport import Capabilities, QueueSpec
from tidings.errors import (
    AccessRefusedError,
    BrokenResourceError,
    NotFoundError,
    NotSupportedError,
    PreconditionFailedError,
)
from tidings.message import Message
from tidings.patterns import topic_matches
from tidings.statistics import BrokerStatistics

log = logging.getLogger("tidings.client.kafka")

#: How long a get waits for a record it knows is there (the fetch round trip).
GET_WAIT_S = 5.0
#: Records a mover holds while they wait for their due time.
MOVER_ROOM = 100_000


def kafka_capabilities(broker: str = "Kafka") -> Capabilities:
    return Capabilities(
        broker, priorities=False, extend=False, latency_statistics=False,
        reasons=(("priorities", "a Kafka topic keeps records in the order they were "
                                "written: use a separate queue for urgent work"),
                 ("extend", "a Kafka consumer holds its deliveries until it leaves its group "
                            "or its session lapses: there is no per-message timeout to "
                            "extend (extend() does nothing)"),
                 ("latency_statistics", "Kafka counts records but does not time them"),
                 ("machines", "not yet (a Kafka transaction could write the instance to a "
                              "compacted topic with the messages and the event's offset): run "
                              "the machine on tidings serve or a data directory")))


class KafkaEngine:
    """The :class:`~tidings.client.engine.Engine` of Kafka."""

    def __init__(self, url: str, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.settings: KafkaSettings = parse(url, ssl_context)
        self.capabilities = kafka_capabilities(f"Kafka at {self.settings.bootstrap}")
        common = self.settings.common
        self.producer = AIOKafkaProducer(
            **common, acks="all", enable_idempotence=self.settings.idempotence,
            linger_ms=1, max_request_size=8 * 1024 * 1024, max_batch_size=256 * 1024)
        self.admin = AIOKafkaAdminClient(**common)
        self.catalog = Catalog(self.consumer(None), self.producer)
        self.outbox = Outbox(self.producer)
        self.cursors: dict[str, Cursor] = {}
        self._known_topics: set[str] = set()
        self._topics_read = 0.0
        self._private: list[str] = []
        self._mover: Mover | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        #: A consumer without a group for offsets and scans (one user at a time).
        self.reading = self.consumer(None, fetch_max_wait_ms=20)
        self._reading_lock = asyncio.Lock()
        #: Whether the server was seen to say a partition ends before records it has.
        self.ends_lag = False
        #: The stream verbs (client/kafka_streams.py).
        self.logs = KafkaLogs(self)

    def consumer(self, group: str | None, **options: Any) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **self.settings.common, group_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_interval_ms=86_400_000,
            rebalance_timeout_ms=60_000, session_timeout_ms=6_000,
            heartbeat_interval_ms=1_000, metadata_max_age_ms=5_000, **options)

    async def open(self) -> None:
        where = self.settings.where
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                await self.producer.start()
                await self.admin.start()
                await self.ensure_topic(CATALOG, 1, {"cleanup.policy": "compact"})
                await self.reading.start()
                await self._probe_ends()
                await self.catalog.open()
        except TimeoutError:
            await self.close()
            raise BrokenResourceError(
                f"cannot connect to {where}: no Kafka answer within "
                f"{self.settings.connect_timeout_s:g} s (is a Kafka broker listening there? "
                f"?connect_timeout= sets the limit)") from None
        except KafkaError as e:
            await self.close()
            refused = await self._login_refused() if isinstance(
                e, KafkaConnectionError) else e
            if isinstance(refused, AuthenticationFailedError | SaslAuthenticationFailed):
                raise AccessRefusedError(f"login refused by {where}: {refused}") from e
            raise BrokenResourceError(f"cannot use {where}: {e!r}") from e
        except (OSError, ssl.SSLError) as e:
            await self.close()
            raise BrokenResourceError(f"cannot connect to {where}: {e}") from e

    async def _login_refused(self) -> Exception | None:
        """Why the first broker refused us, when it was the login (aiokafka reports only
        that it could not bootstrap)."""
        common = self.settings.common
        if "sasl_mechanism" not in common:
            return None
        host, _, port = common["bootstrap_servers"][0].rpartition(":")
        try:
            conn = await asyncio.wait_for(create_conn(
                host.strip("[]"), int(port), ssl_context=common.get("ssl_context"),
                security_protocol=common["security_protocol"],
                sasl_mechanism=common["sasl_mechanism"],
                sasl_plain_username=common["sasl_plain_username"],
                sasl_plain_password=common["sasl_plain_password"]),
                self.settings.connect_timeout_s)
        except (KafkaError, OSError, TimeoutError) as e:
            return e
        conn.close()
        return None

    async def _probe_ends(self) -> None:
        """Find out whether the server says where a partition ends correctly: two records in
        one batch to the probe topic (kept a minute), and the end it answers then."""
        await self.ensure_topic(PROBE, 1, {"retention.ms": "60000"})
        key = f"probe:{uuid.uuid4().hex}".encode()
        sent = [await self.producer.send(PROBE, None, key=key, partition=0) for _ in (1, 2)]
        last = (await asyncio.gather(*sent))[-1].offset
        tp = TopicPartition(PROBE, 0)
        self.ends_lag = self.catalog.ends_lag = (await self.ends([tp]))[tp] <= last

    # -- topics ----------------------------------------------------------------------------

    async def topics(self, fresh: bool = False) -> set[str]:
        """The cluster's topics (listed again at most every second unless ``fresh``)."""
        if fresh or time.monotonic() - self._topics_read > 1.0:
            self._known_topics = set(await self.admin.list_topics())
            self._topics_read = time.monotonic()
        return self._known_topics

    async def ensure_topic(self, topic: str, partitions: int | None = None,
                           config: dict[str, str] | None = None) -> bool:
        """Create ``topic`` unless it exists; True when this call created it."""
        if topic in self._known_topics:
            return False
        try:
            await self.admin.create_topics([NewTopic(
                topic, partitions or self.settings.partitions, self.settings.replication,
                topic_configs=config or {})])
        except TopicAlreadyExistsError:
            self._known_topics.add(topic)
            return False
        self._known_topics.add(topic)
        for _ in range(100):  # until the leader answers for it
            with contextlib.suppress(KafkaError):
                if await self.producer.partitions_for(topic):
                    break
            await asyncio.sleep(0.05)
        return True

    async def partitions(self, topics: list[str]) -> list[TopicPartition]:
        found = []
        for topic in topics:
            for p in sorted(await self.producer.partitions_for(topic) or ()):
                found.append(TopicPartition(topic, p))
        return found

    async def queue_topics(self, queue: str, fresh: bool = False) -> list[str]:
        """The topics ``queue`` reads: its own and those its bindings match (``fresh``: as
        the server has them now)."""
        await self.catalog.refresh(force=fresh)
        own = queue_topic(queue)
        patterns = list(self.catalog.named(f"bind:{queue}\x1f"))
        if not patterns:
            return [own]
        return [own, *sorted(t for t in await self.topics(fresh) if t != own and not
                             t.startswith(("tidings.", "__")) and
                             any(topic_matches(p, t) for p in patterns))]

    # -- declarations ----------------------------------------------------------------------

    async def create_queue(self, name: str, spec: QueueSpec, rules: QueueRules) -> None:
        if spec.max_length is not None:
            raise NotSupportedError(self.capabilities.broker, "bound a queue by max_length",
                                    "a Kafka topic is bounded by its retention (bytes, time), "
                                    "not by a count of messages")
        entry = {"rules": rules.dumps()}
        await self.catalog.refresh(force=True)
        existing = self.catalog.get(f"queue:{name}")
        if existing is not None and existing != entry:
            raise PreconditionFailedError(f"queue '{name}' exists with other settings")
        if name.startswith(PRIVATE_PREFIX):
            self._private.append(name)
        await self.ensure_topic(queue_topic(name))
        if existing is None:
            await self.catalog.put(f"queue:{name}", entry)

    async def read_rules(self, name: str) -> QueueRules:
        entry = self.catalog.get(f"queue:{name}")
        if entry is None:
            await self.catalog.refresh(force=True)
            entry = self.catalog.get(f"queue:{name}")
        if entry is None:
            raise NotFoundError(f"no queue '{name}' on {self.capabilities.broker}")
        return QueueRules.loads(entry.get("rules"))

    async def bind(self, queue: str, pattern: str, rules: QueueRules) -> None:
        """Keep the binding; the queue starts at the end of the topics it matches now."""
        key = f"bind:{queue}\x1f{pattern}"
        if self.catalog.get(key) is not None:
            return
        group = queue_group(queue)
        topics = [t for t in await self.topics(fresh=True)
                  if not t.startswith(("tidings.", "__")) and topic_matches(pattern, t)]
        if topics and not await self.busy(group):
            tps = await self.partitions(topics)
            committed = await self.admin.list_consumer_group_offsets(group, partitions=tps)
            fresh = [tp for tp in tps if committed.get(tp) is None or
                     committed[tp].offset < 0]
            if fresh:
                await self.commit_offsets(group, await self.end_offsets(fresh))
        await self.catalog.put(key, 1)

    # -- writing ---------------------------------------------------------------------------

    async def produce(self, topic: str, records: Sequence[tuple[bytes | None, bytes, Any]]
                      ) -> None:
        """Produce records and wait until every in-sync replica has them (acks=all)."""
        await self.outbox.produce(topic, list(records))

    async def append(self, queue: str, messages: Sequence[Message],
                     due_ms: int | None) -> None:
        if due_ms is None:
            await self.produce(queue_topic(queue), [record_of(m) for m in messages])
        else:
            await self.delay(queue, messages, 0, due_ms)

    async def delay(self, queue: str, messages: Sequence[Message], failures: int,
                    due_ms: int) -> None:
        await self.ensure_topic(DELAYED)
        extra = [(DUE, str(due_ms).encode()), (TARGET, queue.encode())]
        await self.produce(DELAYED, [record_of(m, failures, extra) for m in messages])
        self.mover()

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        name = topic_of(topic)
        if name not in self._known_topics:
            await self.ensure_topic(name)
            for cursor in self.cursors.values():  # a queue here may be bound to it
                cursor.follow_soon()
        await self.produce(name, [record_of(m) for m in messages])

    def mover(self) -> None:
        """Start moving due messages in this process (in the background: joining the delay
        group may take the server's initial rebalance delay)."""
        if self._mover is None:
            self._mover = Mover(self)
            self._mover.task = asyncio.get_running_loop().create_task(self._mover.run())

    # -- reading ---------------------------------------------------------------------------

    def decoder(self, queue: str) -> Decode:
        def decode(record: Any, handle: Any, before: int) -> Token | None:
            if self.catalog.removed(record.topic, record.partition, record.offset):
                return None
            message, failures = message_of_record(record.value, record.key, record.headers,
                                                  record.timestamp, queue)
            # (``before``: deliveries to members that died, counted as failures)
            return Token(queue, message, failures + before, record.timestamp, handle)
        return decode

    async def cursor(self, queue: str, grouped: bool) -> Cursor:
        """This process's cursor of ``queue`` (a grouped one replaces one alone)."""
        cursor = self.cursors.get(queue)
        if cursor is not None and (cursor.grouped or not grouped):
            return cursor
        if cursor is not None:
            await cursor.close()
        if grouped:
            self.mover()  # a queue's consumers also move due messages
        cursor = Cursor(self.consumer(queue_group(queue)), queue, queue_group(queue), grouped,
                        lambda fresh: self.queue_topics(queue, fresh), self.partitions,
                        self.decoder(queue), self.ends, lambda: self.ends_lag,
                        self.commit_metadata, self._idle if grouped else None)
        self.cursors[queue] = cursor
        return await cursor.start()

    async def reader(self, queue: str, room: Callable[[], int],
                     arrived: Callable[[Token], None]) -> CursorReader:
        cursor = await self.cursor(queue, grouped=True)
        return cursor.add(room, arrived)

    async def _idle(self, cursor: Cursor) -> None:
        """A cursor's last reader left: leave the group (at once when it holds nothing, else
        once what it holds is settled, 30 s at most) so other processes get the
        partitions."""
        async def leave() -> None:
            deadline = time.monotonic() + 30
            while cursor.open and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if not cursor.readers and self.cursors.get(cursor.name) is cursor:
                await cursor.close()
                if self.cursors.get(cursor.name) is cursor:
                    del self.cursors[cursor.name]
        if not cursor.open:
            await leave()
            return
        task = asyncio.get_running_loop().create_task(leave())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def read_one(self, queue: str) -> Token | None:
        """A get: through this process's consumers of the queue when it has some; alone
        while no process consumes it; and nothing while other processes' consumers hold its
        partitions (joining their group would move partitions away from them, and with them
        the messages they are working on)."""
        cursor = self.cursors.get(queue)
        if cursor is None:
            if await self.busy(queue_group(queue)):
                return None
            cursor = await self.cursor(queue, grouped=False)
        elif not cursor.grouped and await self.busy(queue_group(queue)):
            await cursor.close()  # (consumers elsewhere took the queue over)
            del self.cursors[queue]
            return None
        return await cursor.get(GET_WAIT_S)

    async def busy(self, group: str) -> bool:
        """Whether ``group`` has members (then only they may commit its offsets)."""
        try:
            described = await self.admin.describe_consumer_groups([group])
        except KafkaError:
            return False
        for found in described:
            for g in getattr(found, "groups", ()) or ():
                # (DescribeGroups' group: error, id, state, protocol type, protocol, members)
                members = g[5] if len(g) > 5 else ()
                if members:
                    return True
        return False

    # -- settling --------------------------------------------------------------------------

    async def settle(self, tokens: Sequence[Token]) -> None:
        by_cursor: dict[Cursor, list[Token]] = {}
        for token in tokens:
            by_cursor.setdefault(token.handle[0], []).append(token)
        for cursor, mine in by_cursor.items():
            cursor.settle(mine)
            cursor.commit_soon()

    async def rewrite(self, token: Token, queue: str, message: Message, failures: int,
                      due_ms: int | None) -> None:
        if due_ms is not None:
            await self.delay(queue, [message], failures, due_ms)
        else:
            await self.produce(queue_topic(queue), [record_of(message, failures)])
        await self.settle([token])

    async def renew(self, tokens: Sequence[Token]) -> None:
        """Nothing: a member holds its deliveries while its session lives."""

    # -- looking at and editing queues -----------------------------------------------------

    async def bounds(self, tps: list[TopicPartition]
                     ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """The first and the next offset of each partition."""
        async with self._reading_lock:
            starts = dict(await self.reading.beginning_offsets(tps))
            ends = dict(await self.reading.end_offsets(tps))
            # a server may answer the end of the last batch's first record (Tansu does):
            # what can still be fetched from the end says where it really is
            self.reading.assign(tps)
            for tp in tps:
                self.reading.seek(tp, ends[tp])
            while batches := await self.reading.getmany(timeout_ms=30):
                for tp, records in batches.items():
                    if records and records[-1].offset >= ends[tp]:
                        ends[tp] = records[-1].offset + 1
                        self.ends_lag = True
            return starts, ends

    async def ends(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The end of each partition as the server says it (on a connection of its own: a
        consumer's long-polling fetch holds up what is sent after it on its connection)."""
        async with self._reading_lock:
            return dict(await self.reading.end_offsets(tps))

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return (await self.bounds(tps))[1]

    async def commit_metadata(self, group: str, tps: list[TopicPartition]
                              ) -> dict[TopicPartition, str]:
        """The metadata of ``group``'s last commit on each of ``tps``."""
        found = await self.admin.list_consumer_group_offsets(group, partitions=tps)
        return {tp: at.metadata for tp, at in found.items() if at is not None and at.metadata}

    async def commit_offsets(self, group: str, offsets: dict[TopicPartition, int]) -> None:
        """Commit for a group without members (as a consumer that assigned itself)."""
        committer = self.consumer(group)
        await committer.start()
        try:
            committer.assign(list(offsets))
            await committer.commit(offsets)
        finally:
            await committer.stop()

    async def _span(self, group: str, topics: list[str]
                    ) -> list[tuple[TopicPartition, int, int]]:
        """Each partition of ``topics`` with the group's place in it and its end."""
        return (await self._spans({group: topics}))[group]

    async def _spans(self, groups: dict[str, list[str]]
                     ) -> dict[str, list[tuple[TopicPartition, int, int]]]:
        """:meth:`_span` of several groups, with one look at where partitions end."""
        tps = {group: await self.partitions(topics) for group, topics in groups.items()}
        every = sorted({tp for found in tps.values() for tp in found})
        starts, ends = await self.bounds(every) if every else ({}, {})
        spans: dict[str, list[tuple[TopicPartition, int, int]]] = {}
        for group, found in tps.items():
            committed = await self.admin.list_consumer_group_offsets(group, partitions=found) \
                if found else {}
            spans[group] = []
            for tp in found:
                at = committed.get(tp)
                start = at.offset if at is not None and at.offset >= 0 else starts[tp]
                spans[group].append((tp, max(start, starts[tp]), ends[tp]))
        return spans

    async def _chunk(self, tp: TopicPartition, start: int, end: int) -> list[Any]:
        """Records of ``tp`` from ``start`` (a fetch's worth, below ``end``)."""
        async with self._reading_lock:
            self.reading.assign([tp])
            self.reading.seek(tp, start)
            batches = await self.reading.getmany(tp, timeout_ms=1000, max_records=500)
        return [r for r in batches.get(tp, ()) if r.offset < end]

    async def _records(self, spans: list[tuple[TopicPartition, int, int]]
                       ) -> AsyncIterator[Any]:
        """The records of each span, in offset order, that no mark removed (read a chunk
        at a time: nothing is held while the caller looks at one)."""
        await self.catalog.refresh(force=True)
        for tp, start, end in spans:
            while start < end:
                chunk = await self._chunk(tp, start, end)
                if not chunk:
                    break
                for record in chunk:
                    if not self.catalog.removed(tp.topic, tp.partition, record.offset):
                        yield record
                start = chunk[-1].offset + 1

    async def scan(self, queue: str, delayed: bool = False) -> AsyncIterator[Stored]:
        spans = await self._span(queue_group(queue), await self.queue_topics(queue))
        async for record in self._records(spans):
            message, _ = message_of_record(record.value, record.key, record.headers,
                                           record.timestamp, queue)
            yield Stored(message, (record.topic, record.partition, record.offset))
        if not delayed or DELAYED not in await self.topics(fresh=True):
            return
        async for record in self._records(await self._span(DELAY_GROUP, [DELAYED])):
            if header(record.headers, TARGET) == queue.encode():
                message, _ = message_of_record(record.value, record.key, record.headers,
                                               record.timestamp, queue)
                yield Stored(message, (record.topic, record.partition, record.offset))

    async def remove(self, queue: str, stored: Stored) -> bool:
        topic, partition, offset = stored.handle
        if self.catalog.removed(topic, partition, offset):
            return False
        await self.catalog.put(f"removed:{topic}:{partition}:{offset}", 1)
        return True

    async def restore(self, stored: Stored, queue: str, message: Message) -> None:
        await self.produce(queue_topic(queue), [record_of(message)])
        await self.remove(queue, stored)

    async def purge(self, queue: str) -> int:
        group = queue_group(queue)
        if await self.busy(group):
            raise PreconditionFailedError(
                f"cannot purge '{queue}' while consumers read it: on Kafka only the members "
                f"of its consumer group may move the group's offsets; stop them first")
        spans = await self._span(group, await self.queue_topics(queue))
        count = 0
        async for _ in self._records(spans):
            count += 1
        cursor = self.cursors.get(queue)
        if cursor is not None:
            await cursor.flush()  # (a commit under way would undo the purge's)
        await self.commit_offsets(group, {tp: end for tp, _, end in spans})
        if cursor is not None:
            await cursor.reset()
        return count

    # -- the rest --------------------------------------------------------------------------

    async def sync(self) -> None:
        """Every produce is answered once Kafka has it; wait for the commits of settled
        deliveries under way."""
        for cursor in list(self.cursors.values()):
            await cursor.flush()

    async def statistics(self) -> BrokerStatistics:
        await self.catalog.refresh(force=True)
        held = self._mover.held_by_queue() if self._mover is not None else {}
        names = sorted(self.catalog.named("queue:"))
        spans_of = await self._spans({queue_group(name): await self.queue_topics(name)
                                      for name in names})
        queues = []
        for name in names:
            spans = spans_of[queue_group(name)]
            cursor = self.cursors.get(name)
            unacked = cursor.open if cursor is not None else 0
            ready = sum(end - start for _, start, end in spans) - unacked
            queues.append(queue_statistics(
                "/", name, ready=max(0, ready), unacked=unacked,
                delayed=held.get(name, 0),
                consumers=len(cursor.readers) if cursor is not None else 0))
        return broker_statistics(queues)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        for cursor in list(self.cursors.values()):
            await cursor.close()
        self.cursors.clear()
        if self._mover is not None:
            await self._mover.close()
        with contextlib.suppress(Exception):
            for name in self._private:
                await self.admin.delete_topics([queue_topic(name)])
                await self.catalog.put(f"queue:{name}", None)
                for pattern in self.catalog.named(f"bind:{name}\x1f"):
                    await self.catalog.put(f"bind:{name}\x1f{pattern}", None)
        for stop in (self.catalog.close, self.reading.stop, self.admin.close,
                     self.producer.stop):
            with contextlib.suppress(Exception):
                await stop()


class Mover:
    """This process's share of moving delayed messages: a member of the delay group that
    holds each record until it is due, then produces it into its queue and settles it."""

    def __init__(self, engine: KafkaEngine) -> None:
        self.engine = engine
        self.cursor = Cursor(engine.consumer(DELAY_GROUP), DELAYED, DELAY_GROUP, True,
                             self._topics, engine.partitions, self._decode, engine.ends,
                             lambda: engine.ends_lag, engine.commit_metadata)
        self.waiting: list[tuple[int, int, Token]] = []  # (due ms, sequence, token)
        self._seq = 0
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.closing = False

    async def _topics(self, fresh: bool) -> list[str]:
        return [DELAYED]

    def _decode(self, record: Any, handle: Any, before: int) -> Token | None:
        """A delayed record (moving it again after a mover died is no failure of its)."""
        target = (header(record.headers, TARGET) or b"").decode(errors="replace")
        due = header(record.headers, DUE) or b"0"
        message, failures = message_of_record(record.value, record.key, record.headers,
                                              record.timestamp, target)
        return Token(target, message, failures, int(due) if due.isdigit() else 0, handle)

    async def run(self) -> None:
        while not self.closing:
            try:
                await self.engine.ensure_topic(DELAYED)
                await self.cursor.start()
                break
            except KafkaError as e:
                log.warning("cannot join the group that moves delayed messages: %r; again "
                            "shortly", e)
                await asyncio.sleep(1.0)
        self.cursor.add(lambda: MOVER_ROOM - len(self.waiting), self._arrived)
        await self._run()

    def _arrived(self, token: Token) -> None:
        self._seq += 1
        heapq.heappush(self.waiting, (int(token.enqueued_ms), self._seq, token))
        self._wake.set()

    def held_by_queue(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for _, _, token in self.waiting:
            found[token.queue] = found.get(token.queue, 0) + 1
        return found

    async def _run(self) -> None:
        while not self.closing:  # (not only a cancel: wait_for can swallow one)
            now = int(time.time() * 1000)
            due: list[Token] = []
            while self.waiting and self.waiting[0][0] <= now:
                due.append(heapq.heappop(self.waiting)[2])
            if due:
                try:
                    await self._move(due)
                except Exception as e:
                    log.warning("moving %d due messages failed: %r; again shortly",
                                len(due), e)
                    for token in due:
                        self._arrived(token)
                    await asyncio.sleep(0.5)
                continue
            wait_s = 0.5 if not self.waiting else (self.waiting[0][0] - now) / 1000
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(0.5, max(0.002, wait_s)))

    async def _move(self, due: list[Token]) -> None:
        engine = self.engine
        await engine.catalog.refresh()
        moving = []
        for token in due:
            _, tp, offset, _ = token.handle
            if not engine.catalog.removed(tp.topic, tp.partition, offset):
                moving.append(token)
        by_queue: dict[str, list[Any]] = {}
        for token in moving:
            by_queue.setdefault(token.queue, []).append(record_of(token.message,
                                                                  token.failures))
        for queue, records in by_queue.items():
            await engine.produce(queue_topic(queue), records)
        self.cursor.settle(due)
        await self.cursor.commit()

    async def close(self) -> None:
        self.closing = True
        self._wake.set()
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task], timeout=10)
        await self.cursor.close()

