"""Produces of one loop turn as one batch per partition: every ``send``, ``publish`` and
``append`` the application makes at once (a ``gather`` of single sends included) travels in
as few produce requests as Kafka allows, with one acknowledgement to wait for per batch
instead of one future per record.

A record with a key goes to the partition the key hashes to (Kafka's murmur2, as every Kafka
producer); records without one go, per turn, to one partition picked at random (Kafka's
sticky partitioning), so that a turn's records stay together and turns spread over the
partitions. A record too large for a batch of its own is produced alone.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from tidings.client.turns import Outcomes, TurnBatches

#: A record's key, value and headers.
Record = tuple[bytes | None, bytes, Any]

_BY_KEY = DefaultPartitioner()


class Outbox:
    """Collects the produces of a loop turn and sends them as batches."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._turns: TurnBatches[str, list[Record]] = TurnBatches(self._send_turn)

    def produce(self, topic: str, records: list[Record]) -> asyncio.Future[None]:
        """A future that is done once every replica in sync has ``records`` (acks=all)."""
        return self._turns.add(topic, records)

    async def _send_turn(self, topic: str, produces: list[list[Record]]) -> Outcomes:
        await self._send(topic, [r for records in produces for r in records])
        return [None] * len(produces)

    async def _send(self, topic: str, records: list[Record]) -> None:
        partitions = sorted(await self.producer.partitions_for(topic))
        sticky = random.choice(partitions)
        by_partition: dict[int, list[Record]] = {}
        for record in records:
            key = record[0]
            partition = sticky if key is None else _BY_KEY(key, partitions, partitions)
            by_partition.setdefault(partition, []).append(record)
        acks = []
        for partition, mine in by_partition.items():
            batch = self.producer.create_batch()
            for key, value, headers in mine:
                if batch.append(timestamp=None, key=key, value=value, headers=headers) \
                        is not None:
                    continue
                if batch.record_count():  # full: send it, start another
                    acks.append(await self.producer.send_batch(batch, topic,
                                                               partition=partition))
                    batch = self.producer.create_batch()
                    if batch.append(timestamp=None, key=key, value=value,
                                    headers=headers) is not None:
                        continue
                acks.append(await self.producer.send(topic, value, key=key, headers=headers,
                                                     partition=partition))  # (too large)
            if batch.record_count():
                acks.append(await self.producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*acks)
