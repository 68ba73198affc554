"""What the Kafka engine keeps that Kafka has no place for, in one compacted topic
(:data:`~tidings.client.kafka_names.CATALOG`): a queue's rules (``queue:<name>``), a binding
of an event pattern to a queue (``bind:<queue>\\x1f<pattern>``), a record removed from a
queue's topic by a delete or a dead-letter replay (``removed:<topic>:<partition>:<offset>``),
a stream's retention (``stream:<name>``) and a named reader of a stream
(``reader:<stream>\\x1f<reader>``).

Every process reads the whole topic when it opens and the new records before it answers from
it (at most every second, or at once when asked), so all processes see one catalog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tidings.client.kafka_names import CATALOG


class Catalog:
    """The catalog topic, read into a dict."""

    def __init__(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        self.consumer, self.producer = consumer, producer
        self.entries: dict[str, Any] = {}
        self._tp = TopicPartition(CATALOG, 0)
        self._lock = asyncio.Lock()
        self._read = 0.0
        #: The server says a partition ends before records it has (see KafkaEngine).
        self.ends_lag = False

    async def open(self) -> None:
        await self.consumer.start()
        self.consumer.assign([self._tp])
        await self.consumer.seek_to_beginning(self._tp)
        await self.refresh(force=True)

    async def refresh(self, force: bool = False) -> None:
        """Read what other processes wrote since (skipped within a second unless
        ``force``)."""
        if not force and time.monotonic() - self._read < 1.0:
            return
        async with self._lock:
            end = (await self.consumer.end_offsets([self._tp]))[self._tp]
            while await self.consumer.position(self._tp) < end:
                batches = await self.consumer.getmany(self._tp, timeout_ms=500)
                for record in batches.get(self._tp, ()):
                    self._apply(record.key, record.value)
            while self.ends_lag and (batches := await self.consumer.getmany(
                    self._tp, timeout_ms=30)):  # (the end said is short of the records)
                for record in batches.get(self._tp, ()):
                    self._apply(record.key, record.value)
            self._read = time.monotonic()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        name = key.decode(errors="replace")
        if value is None:
            self.entries.pop(name, None)
        else:
            with contextlib.suppress(ValueError):
                self.entries[name] = json.loads(value)

    async def put(self, key: str, value: Any) -> None:
        """Write an entry (None removes it) and wait until Kafka has it."""
        data = None if value is None else json.dumps(value).encode()
        await (await self.producer.send(CATALOG, data, key=key.encode(), partition=0))
        self._apply(key.encode(), data)

    def get(self, key: str) -> Any:
        return self.entries.get(key)

    def named(self, prefix: str) -> dict[str, Any]:
        """Entries whose key starts with ``prefix``, by the rest of their key."""
        return {k[len(prefix):]: v for k, v in self.entries.items() if k.startswith(prefix)}

    def removed(self, topic: str, partition: int, offset: int) -> bool:
        return f"removed:{topic}:{partition}:{offset}" in self.entries

    async def close(self) -> None:
        await self.consumer.stop()
