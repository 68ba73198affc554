"""Produce and InitProducerId: record batches into a topic's partition streams.

Each partition's records are checked whole before anything is appended (size against
``message.max.bytes``, every batch's head and CRC-32C, no transactional or control batches,
the idempotent producer's sequence), then each batch is appended as one entry of the
partition's stream: atomically, and at the offset the broker assigns. With ``acks`` 1 or -1
the response waits until the appends are fsynced (the broker's group commit, as an AMQP
confirm); with ``acks=0`` no response is sent at all, as Kafka does.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from kio.schema.errors import ErrorCode

from tidings.errors import NotFoundError, PreconditionFailedError, TidingsError
from tidings.kafka.access import Access
from tidings.kafka.errors import TopicError
from tidings.kafka.producers import REBUILD_RECORDS, PartitionProducers, ProducerIds
from tidings.kafka.protocol import make, nested
from tidings.kafka.settings import KafkaSettings
from tidings.kafka.topics import NO_THROTTLE, Topics
from tidings.record_batch import (
    CONTROL,
    TRANSACTIONAL,
    BatchError,
    BatchHeader,
    check_batch,
    read_header,
)
from tidings.routing.front_door import FrontDoor

__all__ = ["Producing"]

#: Partition result: error code, base offset, error message, log start offset.
Result = tuple[ErrorCode, int, str | None, int]
MAX_EPOCH = 2**15 - 1


class Producing:
    """The produce path of one listener (its producers' state included)."""

    def __init__(self, broker: FrontDoor, topics: Topics, settings: KafkaSettings) -> None:
        self.broker, self.topics, self.settings = broker, topics, settings
        self.vhost = settings.vhost
        self.ids = ProducerIds()
        self._producers: dict[str, PartitionProducers] = {}

    # -- InitProducerId -------------------------------------------------------------------

    def init_producer_id(self, body: Any, schema: type) -> Any:
        code, producer_id, epoch = ErrorCode.none, -1, -1
        if body.transactional_id is not None:
            code = ErrorCode.transactional_id_authorization_failed  # transactions: not yet
        elif getattr(body, "producer_id", -1) >= 0 and body.producer_epoch < MAX_EPOCH:
            producer_id, epoch = body.producer_id, body.producer_epoch + 1  # KIP-360 bump
        else:
            producer_id, epoch = self.ids.new(), 0
        return make(schema, throttle_time=NO_THROTTLE, error_code=code,
                    producer_id=producer_id, producer_epoch=epoch)

    # -- Produce ------------------------------------------------------------------------------

    def produce(self, body: Any, schema: type, access: Access
                ) -> Coroutine[Any, Any, Any] | None:
        """Append now (so a connection's requests apply in the order it sent them); returns
        what awaits the response once the appends are durable (None for ``acks=0``)."""
        refused: Result | None = None
        if body.acks not in (0, 1, -1):
            refused = (ErrorCode.invalid_required_acks, -1, f"acks={body.acks}: 0, 1 or -1",
                       -1)
        elif body.transactional_id is not None:
            refused = (ErrorCode.transactional_id_authorization_failed, -1,
                       "transactions are not supported", -1)
        results: list[tuple[str, list[tuple[int, Result]]]] = []
        appended = False
        budget = self.settings.max_topics_per_request
        for topic in body.topic_data:
            partitions = []
            for data in topic.partition_data:
                budget -= 1
                if refused is not None or budget < 0:
                    result = refused or (ErrorCode.invalid_request, -1,
                                         "too many partitions in one request", -1)
                else:
                    result = self._append(topic.name, data.index, data.records, access)
                    appended = appended or result[0] == ErrorCode.none
                partitions.append((data.index, result))
            results.append((topic.name, partitions))
        if body.acks == 0:
            return None
        return self._durable_response(schema, results, appended)

    async def _durable_response(self, schema: type,
                                results: list[tuple[str, list[tuple[int, Result]]]],
                                appended: bool) -> Any:
        if appended:
            try:
                await self.broker.sync()
            except (OSError, TidingsError) as e:  # not durable: nothing may be acknowledged
                results = [(name, [(i, (ErrorCode.kafka_storage_error, -1, str(e), -1))
                                   for i, _ in parts]) for name, parts in results]
        return self._response(schema, results)

    def _response(self, schema: type, results: list[tuple[str, list[tuple[int, Result]]]]
                  ) -> Any:
        topic_type = nested(schema, "TopicProduceResponse")
        partition_type = nested(schema, "PartitionProduceResponse")
        topics = []
        for name, partitions in results:
            rows = []
            for index, (code, offset, message, start) in partitions:
                rows.append(make(partition_type, index=index, error_code=code,
                                 base_offset=offset, log_append_time=None,
                                 log_start_offset=start, record_errors=(),
                                 error_message=message))
            topics.append(make(topic_type, name=name, partition_responses=tuple(rows)))
        return make(schema, responses=tuple(topics), throttle_time=NO_THROTTLE)

    def _append(self, topic: str, partition: int, records: bytes | None, access: Access
                ) -> Result:
        try:
            access.check_topic("write", topic)
            stream = self.topics.stream(topic, partition)
        except TopicError as e:
            return e.error_code, -1, str(e), -1
        data = records or b""
        if len(data) > self.settings.message_max_bytes:
            return (ErrorCode.message_too_large, -1,
                    f"{len(data)} bytes of records for one partition: the limit is "
                    f"{self.settings.message_max_bytes} (message.max.bytes)", -1)
        batches: list[tuple[BatchHeader, int]] = []
        position = 0
        try:
            while position < len(data):
                head = check_batch(data, position)
                if head.attributes & (TRANSACTIONAL | CONTROL):
                    return (ErrorCode.invalid_record, -1,
                            "transactional and control batches are not supported", -1)
                batches.append((head, position))
                position += head.size
        except BatchError as e:
            return ErrorCode.corrupt_message, -1, str(e), -1
        if not batches:
            return ErrorCode.corrupt_message, -1, "no record batch", -1
        producers = self._partition_producers(stream)
        first: int | None = None
        for head, position in batches:
            if head.producer_id >= 0:
                code, duplicate = producers.check(head)
                if code != ErrorCode.none:
                    return (code, -1, f"producer {head.producer_id} epoch "
                            f"{head.producer_epoch} sequence {head.base_sequence}: "
                            f"{code.name}", -1)
                if duplicate is not None:
                    first = duplicate if first is None else first
                    continue
            batch = data if len(batches) == 1 else data[position:position + head.size]
            try:
                offset = self.broker.append_batch(self.vhost, stream, batch, head.count)
            except (NotFoundError, PreconditionFailedError) as e:
                return ErrorCode.unknown_topic_or_partition, -1, str(e), -1
            except TidingsError as e:
                return ErrorCode.kafka_storage_error, -1, str(e), -1
            if head.producer_id >= 0:
                producers.appended(head, offset)
            first = offset if first is None else first
        start = self.broker.stream_bounds(self.vhost, stream)[0]
        return ErrorCode.none, -1 if first is None else first, None, start

    def _partition_producers(self, stream: str) -> PartitionProducers:
        """A partition's producers, read back from its log's tail the first time."""
        producers = self._producers.get(stream)
        if producers is None:
            producers = self._producers[stream] = PartitionProducers()
            first, end = self.broker.stream_bounds(self.vhost, stream)
            offset = max(first, end - REBUILD_RECORDS)
            while offset < end:
                batches = self.broker.read_batches(self.vhost, stream, offset, 4 * 2**20)
                if not batches:
                    break
                for batch in batches:
                    head = read_header(batch)
                    if head.producer_id >= 0:
                        producers.appended(head, head.base_offset)
                    offset = head.base_offset + head.count
        return producers

    def forget(self, topic: str) -> None:
        """A deleted topic's producers go with it."""
        for stream in [s for s in self._producers if s == topic or
                       s.startswith(f"{topic}:")]:
            del self._producers[stream]
