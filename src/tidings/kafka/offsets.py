"""OffsetCommit and OffsetFetch: a Kafka group's committed offsets are the streams' named
readers.

A group's committed offset for a partition is the named reader of the partition's stream
under the group's name. Kafka commits the *next* offset to read, a named reader the *last*
one processed: a commit of offset N is stored as reader offset N - 1 (0 as -1, "nothing
yet"), and read back the other way. So ``tidings streams``, ``/api/streams``, Prometheus and
the dashboard show each group's lag, ``client.read(stream, reader=group)`` resumes where the
group committed, and a Kafka consumer of the group resumes where a tidings reader committed.
A commit is answered once it is on disk.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from kio.schema.errors import ErrorCode

from tidings.errors import InvalidArgumentError, PreconditionFailedError, TidingsError
from tidings.kafka.errors import GroupError, TopicError
from tidings.kafka.groups import Coordinator
from tidings.kafka.protocol import make, nested
from tidings.kafka.settings import KafkaSettings
from tidings.kafka.topics import NO_THROTTLE, Topics, partition_stream
from tidings.routing.front_door import FrontDoor

__all__ = ["Offsets"]

log = logging.getLogger("tidings.kafka")

#: May this connection read this topic? (Raises TopicError when not.)
TopicCheck = Callable[[str], None]


class Offsets:
    def __init__(self, broker: FrontDoor, topics: Topics, coordinator: Coordinator,
                 settings: KafkaSettings) -> None:
        self.broker, self.topics, self.coordinator = broker, topics, coordinator
        self.settings = settings
        self.vhost = settings.vhost

    def _streams(self) -> list[str]:
        return [partition_stream(t.name, i) for t in self.topics.all()
                for i in range(t.partitions)]

    def committed_groups(self) -> set[str]:
        """Every group (named reader) with an offset committed on some topic."""
        found: set[str] = set()
        for stream in self._streams():
            with contextlib.suppress(TidingsError):  # (gone meanwhile)
                found.update(self.broker.list_readers(self.vhost, stream))
        return found

    def delete_group(self, group: str) -> bool:
        """Forget every offset ``group`` committed (its named readers); False when it had
        none."""
        found = False
        for stream in self._streams():
            with contextlib.suppress(TidingsError):
                if group in self.broker.list_readers(self.vhost, stream):
                    self.broker.forget_reader(self.vhost, stream, group)
                    found = True
        return found

    def commit(self, body: Any, schema: type, may_read: TopicCheck
               ) -> Coroutine[Any, Any, Any] | Any:
        topic_type = nested(schema, "OffsetCommitResponseTopic")
        partition_type = nested(schema, "OffsetCommitResponsePartition")
        group_error = ErrorCode.none
        try:
            self.coordinator.committer(body.group_id, body.generation_id_or_member_epoch,
                                       body.member_id, getattr(body, "group_instance_id", None))
        except GroupError as e:
            group_error = e.error_code
        topics = []
        committed = False
        for topic in body.topics[:self.settings.max_topics_per_request]:
            results = []
            for p in topic.partitions:
                code = group_error
                if code == ErrorCode.none:
                    code = self._commit_one(body.group_id, topic.name, p, may_read)
                    committed = committed or code == ErrorCode.none
                results.append(make(partition_type, partition_index=p.partition_index,
                                    error_code=code))
            topics.append(make(topic_type, name=topic.name, partitions=tuple(results)))
        response = make(schema, throttle_time=NO_THROTTLE, topics=tuple(topics))
        return self._durable(response) if committed else response

    async def _durable(self, response: Any) -> Any:
        await self.broker.sync()
        return response

    def _commit_one(self, group: str, topic: str, p: Any, may_read: TopicCheck) -> ErrorCode:
        metadata = p.committed_metadata
        if metadata is not None and len(metadata.encode()) > \
                self.settings.offset_metadata_max_bytes:
            return ErrorCode.offset_metadata_too_large
        try:
            may_read(topic)
            stream = self.topics.stream(topic, p.partition_index)
            self.broker.commit_offset(self.vhost, stream, group, max(-1, p.committed_offset - 1),
                                      metadata)
        except TopicError as e:
            return e.error_code
        except InvalidArgumentError:  # past the end of the partition
            return ErrorCode.offset_out_of_range
        except PreconditionFailedError as e:  # the stream keeps no more readers
            log.warning("offset commit of group '%s' refused: %s", group, e)
            return ErrorCode.policy_violation
        except TidingsError:  # the stream went meanwhile
            return ErrorCode.unknown_topic_or_partition
        return ErrorCode.none

    def fetch(self, body: Any, schema: type, may_read: TopicCheck) -> Any:
        topic_type = nested(schema, "OffsetFetchResponseTopic")
        partition_type = nested(schema, "OffsetFetchResponsePartition")
        if body.topics is None:  # every partition the group has committed on
            wanted = [(t.name, list(range(t.partitions))) for t in self.topics.all()]
        else:
            wanted = [(t.name, list(t.partition_indexes))
                      for t in body.topics[:self.settings.max_topics_per_request]]
        topics = []
        for name, partitions in wanted:
            results = []
            for index in partitions:
                offset, metadata, code = self._fetch_one(body.group_id, name, index, may_read)
                if body.topics is None and offset < 0:
                    continue
                results.append(make(partition_type, partition_index=index,
                                    committed_offset=offset, committed_leader_epoch=-1,
                                    metadata=metadata, error_code=code))
            if results or body.topics is not None:
                topics.append(make(topic_type, name=name, partitions=tuple(results)))
        return make(schema, throttle_time=NO_THROTTLE, topics=tuple(topics),
                    error_code=ErrorCode.none)

    def _fetch_one(self, group: str, topic: str, index: int, may_read: TopicCheck
                   ) -> tuple[int, str, ErrorCode]:
        try:
            may_read(topic)
            stream = self.topics.stream(topic, index)
            found = self.broker.find_reader(self.vhost, stream, group)
        except TopicError as e:
            return -1, "", e.error_code
        except TidingsError:
            return -1, "", ErrorCode.unknown_topic_or_partition
        if found is None:
            return -1, "", ErrorCode.none
        return found[0] + 1, found[1], ErrorCode.none
