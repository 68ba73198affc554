"""Fetch and ListOffsets: reading a topic's partition streams.

A fetch returns, per partition, the record batches from the one holding ``fetch_offset`` on:
batches a Kafka producer sent, as they are stored; records another face appended, as one
uncompressed batch per run. ``partition_max_bytes`` and the request's ``max_bytes`` bound
what is read (the first batch always comes whole, as Kafka's KIP-74 has it), so reading a
topic far larger than memory keeps memory flat. With nothing (or less than ``min_bytes``)
to return, the fetch waits up to ``max_wait_ms`` for a commit on one of its partitions.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kio.schema.errors import ErrorCode

from tidings.errors import TidingsError
from tidings.kafka.access import Access
from tidings.kafka.errors import TopicError
from tidings.kafka.protocol import make, nested
from tidings.kafka.settings import KafkaSettings
from tidings.kafka.topics import NO_THROTTLE, Topics
from tidings.routing.front_door import FrontDoor

__all__ = ["Fetching"]

LATEST, EARLIEST = -1, -2


class Fetching:
    def __init__(self, broker: FrontDoor, topics: Topics, settings: KafkaSettings) -> None:
        self.broker, self.topics, self.settings = broker, topics, settings
        self.vhost = settings.vhost

    # -- Fetch ---------------------------------------------------------------------------------

    async def fetch(self, body: Any, schema: type, access: Access) -> Any:
        wait_s = max(0.0, body.max_wait.total_seconds())
        deadline = time.monotonic() + min(wait_s, 60.0)
        while True:
            topics, total, streams, failed = self._read(body, schema, access)
            left = deadline - time.monotonic()
            if total >= max(1, body.min_bytes) or failed or left <= 0 or not streams:
                break
            try:
                waiters = [self.broker.wait_for_records(self.vhost, s) for s in streams]
            except TidingsError:
                continue  # a stream went meanwhile: the next read says so
            try:
                await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:  # the others are done with: the streams forget them
                    waiter.cancel()
        return make(schema, throttle_time=NO_THROTTLE, error_code=ErrorCode.none,
                    session_id=0, responses=tuple(topics))

    def _read(self, body: Any, schema: type, access: Access
              ) -> tuple[list[Any], int, list[str], bool]:
        """The responses, their bytes, the streams read, and whether any partition failed."""
        topic_type = nested(schema, "FetchableTopicResponse")
        partition_type = nested(schema, "PartitionData")
        left = max(1, body.max_bytes if body.max_bytes > 0 else 2**31 - 1)
        total, streams, failed, out = 0, [], False, []
        budget = self.settings.max_topics_per_request
        for topic in body.topics:
            rows = []
            for p in topic.partitions:
                budget -= 1
                code, high, start, records = ErrorCode.none, -1, -1, b""
                try:
                    if budget < 0:
                        raise TopicError(ErrorCode.invalid_request,
                                         "too many partitions in one request")
                    access.check_topic("read", topic.topic)
                    stream = self.topics.stream(topic.topic, p.partition)
                    start, high = self.broker.stream_bounds(self.vhost, stream)
                    if not start <= p.fetch_offset <= high:
                        code = ErrorCode.offset_out_of_range
                    elif p.fetch_offset < high and left > 0:
                        limit = min(p.partition_max_bytes, left)
                        records = b"".join(self.broker.read_batches(
                            self.vhost, stream, p.fetch_offset, limit))
                        left -= len(records)
                        total += len(records)
                    streams.append(stream)
                except TopicError as e:
                    code = e.error_code
                except TidingsError:
                    code = ErrorCode.unknown_topic_or_partition
                failed = failed or code != ErrorCode.none
                rows.append(make(partition_type, partition_index=p.partition, error_code=code,
                                 high_watermark=high, last_stable_offset=high,
                                 log_start_offset=start, aborted_transactions=(),
                                 preferred_read_replica=-1, records=records))
            out.append(make(topic_type, topic=topic.topic, partitions=tuple(rows)))
        return out, total, streams, failed

    # -- ListOffsets -----------------------------------------------------------------------

    def list_offsets(self, body: Any, schema: type, access: Access) -> Any:
        topic_type = nested(schema, "ListOffsetsTopicResponse")
        partition_type = nested(schema, "ListOffsetsPartitionResponse")
        topics = []
        for topic in body.topics[:self.settings.max_topics_per_request]:
            rows = []
            for p in topic.partitions[:self.settings.max_topics_per_request]:
                code, offset, timestamp = ErrorCode.none, -1, -1
                try:
                    access.check_topic("read", topic.name)
                    stream = self.topics.stream(topic.name, p.partition_index)
                    first, end = self.broker.stream_bounds(self.vhost, stream)
                    if p.timestamp == LATEST:
                        offset = end
                    elif p.timestamp == EARLIEST:
                        offset = first
                    elif p.timestamp < 0:
                        code = ErrorCode.invalid_request
                    else:
                        found, stamp = self.broker.stream_offset_at(self.vhost, stream,
                                                                    p.timestamp)
                        if found < end:
                            offset, timestamp = found, stamp
                except TopicError as e:
                    code = e.error_code
                except TidingsError:
                    code = ErrorCode.unknown_topic_or_partition
                rows.append(make(partition_type, partition_index=p.partition_index,
                                 error_code=code, timestamp=timestamp, offset=offset,
                                 leader_epoch=0))
            topics.append(make(topic_type, name=topic.name, partitions=tuple(rows)))
        return make(schema, throttle_time=NO_THROTTLE, topics=tuple(topics))
