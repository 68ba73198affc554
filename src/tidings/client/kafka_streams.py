"""tidings streams on Kafka: a stream is a topic of the same name, a record's offset is its
Kafka offset, a named reader is the consumer group of that name (its committed offset is the
next record it reads, as every Kafka consumer of the group sees it).

A stream this engine creates has one partition, so its offsets are dense and a start means
one place. A topic of several partitions (made by another program) is read merged, each
record carrying its partition (``x-kafka-partition``) and that partition's offset; a named
reader's place and ``end`` need one partition, so committing on such a topic is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from tidings.client.engine import stream_statistics
from tidings.client.kafka_cursor import room_or_wait
from tidings.client.kafka_names import message_of_record, record_of, topic_of, with_offset
from tidings.client.tokens import Token
from tidings.client.transport import StreamSpec
from tidings.errors import InvalidArgumentError, NotFoundError
from tidings.message import Message
from tidings.statistics import StreamStatistics
from tidings.stream_starts import Start, offset_of, parse_age


class LogReader:
    """One consumer's reading of a stream: a consumer of its own, without a group, at the
    start's offsets, fetching while the consumer has room."""

    def __init__(self, consumer: AIOKafkaConsumer, stream: str, several: bool,
                 room: Callable[[], int], arrived: Callable[[Token], None]) -> None:
        self.consumer, self.stream, self.several = consumer, stream, several
        self.room, self.arrived = room, arrived
        self._wake = asyncio.Event()
        self.stopped = False
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self.stopped:
            room = await room_or_wait(self.room, self._wake)
            if room <= 0:
                continue
            try:
                batches = await self.consumer.getmany(timeout_ms=500, max_records=room)
            except KafkaError:
                await asyncio.sleep(0.5)
                continue
            for tp, records in sorted(batches.items(), key=lambda b: b[0].partition):
                for r in records:
                    message, _ = message_of_record(r.value, r.key, r.headers, r.timestamp,
                                                   self.stream)
                    with_offset(message, r.offset, tp.partition if self.several else None)
                    self.arrived(Token(self.stream, message, 0, r.timestamp, None))

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.task.cancel()
        await asyncio.wait([self.task], timeout=10)
        with contextlib.suppress(Exception):
            await self.consumer.stop()


class KafkaLogs:
    """The :class:`~tidings.client.engine.StreamLogs` of the Kafka engine."""

    def __init__(self, engine: Any) -> None:
        #: The KafkaEngine (its producer, admin client, catalog and consumers).
        self.engine = engine

    async def create(self, name: str, spec: StreamSpec) -> None:
        config: dict[str, str] = {}
        if spec.max_bytes is not None:
            config["retention.bytes"] = str(spec.max_bytes)
        if spec.max_age is not None:
            age = parse_age(spec.max_age)
            if age is None:
                raise InvalidArgumentError(f"max_age {spec.max_age!r} is not an age such as "
                                           f"'7D' or '12h'")
            config["retention.ms"] = str(age)
        if spec.segment_bytes is not None:
            config["segment.bytes"] = str(spec.segment_bytes)
        await self.engine.ensure_topic(topic_of(name), 1, config)
        key = f"stream:{name}"
        entry = {"max_bytes": spec.max_bytes, "max_age": spec.max_age}
        if self.engine.catalog.get(key) != entry:
            await self.engine.catalog.put(key, entry)

    async def exists(self, name: str) -> bool:
        """Every topic is a stream (those of queues and tidings' own aside)."""
        topic = topic_of(name)
        if topic.startswith(("tidings.", "__")):
            return False
        return topic in await self.engine.topics(fresh=True)

    async def _partitions(self, stream: str) -> list[TopicPartition]:
        found = await self.engine.partitions([topic_of(stream)])
        if not found:
            raise NotFoundError(f"no stream '{stream}' on {self.engine.capabilities.broker}")
        return found

    async def _one(self, stream: str) -> TopicPartition:
        tps = await self._partitions(stream)
        if len(tps) > 1:
            raise InvalidArgumentError(
                f"'{stream}' is a topic of {len(tps)} partitions: a named reader keeps one "
                f"place, so commit on a stream of one partition (or use a Kafka consumer "
                f"group for this topic)")
        return tps[0]

    async def append(self, stream: str, messages: Sequence[Message]) -> None:
        await self.engine.produce(topic_of(stream), [record_of(m) for m in messages])

    async def reader(self, stream: str, start: Start, room: Callable[[], int],
                     arrived: Callable[[Token], None]) -> LogReader:
        tps = await self._partitions(stream)
        firsts, ends = await self.engine.bounds(tps)
        consumer = self.engine.consumer(None)
        await consumer.start()
        consumer.assign(tps)
        times = await consumer.offsets_for_times({tp: start[1] for tp in tps}) \
            if start[0] == "time" else {}
        for tp in tps:
            at = offset_of(start, firsts[tp], ends[tp])
            if at is None:
                found = times.get(tp)
                at = found.offset if found is not None else ends[tp]
            consumer.seek(tp, at)
        return LogReader(consumer, stream, len(tps) > 1, room, arrived)

    async def end(self, stream: str) -> int:
        tp = await self._one(stream)
        return (await self.engine.bounds([tp]))[1][tp]

    async def commit(self, stream: str, reader: str, offset: int) -> None:
        tp = await self._one(stream)
        await self.engine.commit_offsets(reader, {tp: offset + 1})
        key = f"reader:{stream}\x1f{reader}"
        if self.engine.catalog.get(key) is None:
            await self.engine.catalog.put(key, 1)

    async def committed(self, stream: str, reader: str) -> int | None:
        tp = await self._one(stream)
        found = await self.engine.admin.list_consumer_group_offsets(reader, partitions=[tp])
        at = found.get(tp)
        return at.offset - 1 if at is not None and at.offset >= 0 else None

    async def statistics(self) -> list[StreamStatistics]:
        catalog = self.engine.catalog
        await catalog.refresh(force=True)
        found = []
        topics = await self.engine.topics(fresh=True)
        for name, spec in sorted(catalog.named("stream:").items()):
            if topic_of(name) not in topics:
                continue
            tps = await self._partitions(name)
            firsts, ends = await self.engine.bounds(tps)
            first, end = sum(firsts.values()), sum(ends.values())
            readers = []
            if len(tps) == 1:
                for reader in catalog.named(f"reader:{name}\x1f"):
                    at = await self.committed(name, reader)
                    if at is not None:
                        readers.append((reader, at, None))
            age_ms = parse_age((spec or {}).get("max_age"))
            found.append(stream_statistics(
                name, records=end - first, size=0, first=first, end=end, first_ms=None,
                last_ms=None, max_bytes=(spec or {}).get("max_bytes"),
                max_age_s=None if age_ms is None else age_ms / 1000, readers=readers))
        return found

