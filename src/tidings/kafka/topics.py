"""Topics are streams: how Kafka topics and partitions map onto the broker's stream queues,
and the requests that describe, create and delete them (Metadata, CreateTopics,
DeleteTopics, DescribeConfigs).

**Naming.** Partition 0 of topic ``orders`` is the stream queue ``orders``; partition ``i``
(i > 0) is the stream ``orders:i``. Kafka topic names hold only ``[a-zA-Z0-9._-]``, so a
partition stream's name can never be another topic's. Partition 0 carries the topic's
partition count in its ``x-kafka-partitions`` argument (1 when absent): an AMQP stream queue
is a one-partition topic under its own name, and a one-partition topic created over Kafka is
an AMQP stream queue. CreateTopics declares partitions ``1..N-1`` first and partition 0 last,
so a topic is seen only once it is whole; DeleteTopics removes partition 0 first.

**Configs** map onto the streams' retention: ``retention.ms`` → ``x-max-age``,
``retention.bytes`` → ``x-max-length-bytes`` (per partition, as Kafka's), ``segment.bytes``
→ ``x-stream-max-segment-size-bytes``. ``cleanup.policy=compact`` and configs tidings does
not implement are refused with INVALID_CONFIG, never ignored.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import re
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from tidings.errors import NotFoundError, TidingsError
from tidings.kafka.access import Access
from tidings.kafka.errors import TopicError
from tidings.kafka.protocol import make, nested
from tidings.kafka.settings import KafkaSettings
from tidings.routing.front_door import FrontDoor, QueueInfo
from tidings.statistics import StreamStatistics

__all__ = ["PARTITIONS_ARGUMENT", "Topics", "partition_stream"]

PARTITIONS_ARGUMENT = "x-kafka-partitions"
_LEGAL = re.compile(r"[a-zA-Z0-9._-]{1,249}")
NO_THROTTLE = datetime.timedelta(0)

#: Kafka topic config -> (queue argument, how a Kafka value becomes the argument's).
_RETENTION = {
    "retention.ms": ("x-max-age", lambda ms: f"{math.ceil(ms / 1000)}s"),
    "retention.bytes": ("x-max-length-bytes", int),
    "segment.bytes": ("x-stream-max-segment-size-bytes", int),
}


def partition_stream(topic: str, partition: int) -> str:
    return topic if partition == 0 else f"{topic}:{partition}"


def topic_problem(name: str) -> str | None:
    if not _LEGAL.fullmatch(name) or name in (".", ".."):
        return (f"topic name {name[:60]!r} is not legal: 1 to 249 of [a-zA-Z0-9._-], "
                f"not '.' or '..'")
    return None


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    partitions: int
    arguments: dict[str, Any]


class Topics:
    """The topics of one listener's vhost, read and changed through the front door."""

    def __init__(self, broker: FrontDoor, settings: KafkaSettings) -> None:
        self.broker = broker
        self.settings = settings
        self.vhost = settings.vhost

    # -- reading -----------------------------------------------------------------------------

    @staticmethod
    def _topic_of(info: QueueInfo) -> Topic | None:
        if info.queue_type != "stream" or topic_problem(info.name):
            return None
        count = info.arguments.get(PARTITIONS_ARGUMENT, 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            count = 1
        return Topic(info.name, count, info.arguments)

    def all(self) -> list[Topic]:
        return [t for info in self.broker.list_queues(self.vhost)
                if (t := self._topic_of(info)) is not None]

    def find(self, name: str) -> Topic | None:
        if topic_problem(name):
            return None
        try:
            return self._topic_of(self.broker.describe_queue(self.vhost, name))
        except NotFoundError:
            return None

    def stream(self, name: str, partition: int) -> str:
        """The stream of a partition; raises :class:`TopicError` when there is none."""
        topic = self.find(name)
        if topic is None or not 0 <= partition < topic.partitions:
            raise TopicError(ErrorCode.unknown_topic_or_partition,
                             f"no partition {partition} of topic '{name}' in vhost "
                             f"'{self.vhost}'")
        return partition_stream(name, partition)

    # -- Metadata -------------------------------------------------------------------------

    def metadata(self, version: int, body: Any, schema: type, port: int, access: Access
                 ) -> Any:
        """The broker (at the listener's ``port``) and the topics ``access`` may see."""
        names = None if body.topics is None else [t.name for t in body.topics]
        if version == 0 and names == []:
            names = None  # v0: an empty list means every topic
        auto_create = self.settings.auto_create_topics and getattr(
            body, "allow_auto_topic_creation", True)
        broker_type = nested(schema, "MetadataResponseBroker")
        topic_type = nested(schema, "MetadataResponseTopic")
        s = self.settings
        broker = make(broker_type, node_id=s.node_id, host=s.host, port=port, rack=None)
        topics = []
        if names is None:
            found: list[tuple[str, Topic | None, ErrorCode]] = [
                (t.name, t, ErrorCode.none) for t in self.all() if access.may_see(t.name)]
        else:
            found = [self._looked_up(n, auto_create, access) for n in
                     names[:s.max_topics_per_request]]
        for name, topic, code in found:
            topics.append(make(topic_type, error_code=code, name=name, is_internal=False,
                               partitions=self._partitions(schema, topic),
                               topic_authorized_operations=-2147483648))
        return make(schema, throttle_time=NO_THROTTLE, brokers=(broker,),
                    cluster_id=s.cluster_id, controller_id=s.node_id, topics=tuple(topics),
                    cluster_authorized_operations=-2147483648)

    def _looked_up(self, name: str, auto_create: bool, access: Access
                   ) -> tuple[str, Topic | None, ErrorCode]:
        if topic_problem(name):
            return name, None, ErrorCode.invalid_topic_exception
        if not access.may_see(name):
            return name, None, ErrorCode.topic_authorization_failed
        topic = self.find(name)
        if topic is None and auto_create and access.may("configure", name):
            try:
                self.create(name, 1, {})
            except (TopicError, TidingsError):
                return name, None, ErrorCode.unknown_topic_or_partition
            topic = self.find(name)
        if topic is None:
            return name, None, ErrorCode.unknown_topic_or_partition
        return name, topic, ErrorCode.none

    def _partitions(self, schema: type, topic: Topic | None) -> tuple[Any, ...]:
        if topic is None:
            return ()
        partition_type = nested(schema, "MetadataResponsePartition")
        node = self.settings.node_id
        return tuple(make(partition_type, error_code=ErrorCode.none, partition_index=i,
                          leader_id=node, leader_epoch=0, replica_nodes=(node,),
                          isr_nodes=(node,), offline_replicas=())
                     for i in range(topic.partitions))

    # -- CreateTopics and DeleteTopics ------------------------------------------------------

    def create_topics(self, body: Any, schema: type, access: Access) -> Any:
        result_type = nested(schema, "CreatableTopicResult")
        results = []
        for topic in body.topics[:self.settings.max_topics_per_request]:
            code, message = ErrorCode.none, None
            try:
                count = topic.num_partitions
                if topic.assignments:
                    count = len(topic.assignments)
                access.check_topic("configure", topic.name)
                if topic.replication_factor not in (-1, 1):
                    raise TopicError(ErrorCode.invalid_replication_factor,
                                     f"replication factor {topic.replication_factor}: tidings "
                                     f"is one node, so 1 (or -1, the default) only")
                self.create(topic.name, 1 if count == -1 else count,
                            {c.name: c.value for c in topic.configs},
                            validate_only=body.validate_only)
            except TopicError as e:
                code, message = e.error_code, str(e)
            results.append(make(result_type, name=topic.name, error_code=code,
                                error_message=message, topic_config_error_code=ErrorCode.none,
                                num_partitions=-1, replication_factor=-1, configs=None))
        return make(schema, throttle_time=NO_THROTTLE, topics=tuple(results))

    def create(self, name: str, partitions: int, configs: dict[str, str | None], *,
               validate_only: bool = False) -> None:
        if problem := topic_problem(name):
            raise TopicError(ErrorCode.invalid_topic_exception, problem)
        if not 1 <= partitions <= self.settings.max_partitions:
            raise TopicError(ErrorCode.invalid_partitions,
                             f"{partitions} partitions: 1 to {self.settings.max_partitions} "
                             f"(--kafka-max-partitions)")
        arguments = stream_arguments(configs)
        streams = [partition_stream(name, i) for i in range(partitions)]
        taken = [s for s in streams if self.broker.queue_exists(self.vhost, s)]
        if taken:
            raise TopicError(ErrorCode.topic_already_exists,
                             f"topic '{name}' already exists in vhost '{self.vhost}'"
                             if taken[0] == name and self.find(name) is not None else
                             f"queue '{taken[0]}' in vhost '{self.vhost}' already exists "
                             f"(topic '{name}' would need it for its partition "
                             f"{streams.index(taken[0])})")
        if validate_only:
            return
        try:
            for i in reversed(range(partitions)):  # partition 0, which makes it a topic, last
                extra = {PARTITIONS_ARGUMENT: partitions} if i == 0 and partitions > 1 else {}
                self.broker.declare_queue(self.vhost, streams[i], durable=True,
                                          arguments={**arguments, **extra})
        except TidingsError as e:
            raise TopicError(ErrorCode.invalid_config, str(e)) from None

    def delete_topics(self, body: Any, schema: type, access: Access) -> Any:
        result_type = nested(schema, "DeletableTopicResult")
        results = []
        for name in body.topic_names[:self.settings.max_topics_per_request]:
            topic = self.find(name)
            code = ErrorCode.none
            if not access.may("configure", name):
                code = ErrorCode.topic_authorization_failed
            elif topic is None:
                code = ErrorCode.unknown_topic_or_partition
            else:
                for i in range(topic.partitions):
                    with contextlib.suppress(NotFoundError):
                        self.broker.delete_queue(self.vhost, partition_stream(name, i))
            results.append(make(result_type, name=name, error_code=code, error_message=None))
        return make(schema, throttle_time=NO_THROTTLE, responses=tuple(results))

    # -- DescribeConfigs ---------------------------------------------------------------------

    def describe_configs(self, body: Any, schema: type, access: Access) -> Any:
        result_type = nested(schema, "DescribeConfigsResult")
        entry_type = nested(schema, "DescribeConfigsResourceResult")
        results = []
        for resource in body.resources[:self.settings.max_topics_per_request]:
            code, message, configs = ErrorCode.none, None, []
            if resource.resource_type == 2:  # a topic
                topic = self.find(resource.resource_name)
                if not access.may_see(resource.resource_name):
                    code = ErrorCode.topic_authorization_failed
                    message = f"topic '{resource.resource_name}' is not visible to this user"
                elif topic is None:
                    code = ErrorCode.unknown_topic_or_partition
                    message = f"no topic '{resource.resource_name}' in vhost '{self.vhost}'"
                else:
                    configs = topic_configs(
                        self.broker.stream_statistics(self.vhost, topic.name), self.settings)
            elif resource.resource_type == 4:  # a broker
                configs = broker_configs(self.settings)
            else:
                code = ErrorCode.invalid_request
                message = f"resource type {resource.resource_type} is not described"
            wanted = resource.configuration_keys
            entries = tuple(
                make(entry_type, name=n, value=v, read_only=ro, is_default=default,
                     config_source=5 if default else 1, is_sensitive=False, synonyms=(),
                     config_type=kind, documentation=None)
                for n, v, ro, default, kind in configs if wanted is None or n in wanted)
            results.append(make(result_type, error_code=code, error_message=message,
                                resource_type=resource.resource_type,
                                resource_name=resource.resource_name, configs=entries))
        return make(schema, throttle_time=NO_THROTTLE, results=tuple(results))


#: Config types of DescribeConfigs v3: BOOLEAN 1, STRING 2, INT 3, LONG 5.
ConfigEntry = tuple[str, str | None, bool, bool, int]


def stream_arguments(configs: dict[str, str | None]) -> dict[str, Any]:
    """A new topic's configs as stream queue arguments (raises :class:`TopicError`)."""
    arguments: dict[str, Any] = {"x-queue-type": "stream"}
    for name, value in configs.items():
        if name == "cleanup.policy":
            if value != "delete":
                raise TopicError(ErrorCode.invalid_config,
                                 f"cleanup.policy={value}: tidings keeps topics as logs "
                                 f"(delete); compaction is not supported")
            continue
        if name not in _RETENTION:
            raise TopicError(ErrorCode.invalid_config,
                             f"topic config '{name}' is not supported (retention.ms, "
                             f"retention.bytes, segment.bytes, cleanup.policy=delete are)")
        argument, convert = _RETENTION[name]
        try:
            number = int(value or "")
        except ValueError:
            raise TopicError(ErrorCode.invalid_config,
                             f"{name}={value!r}: not a number") from None
        if number == -1:
            continue  # no limit
        if number < 1:
            raise TopicError(ErrorCode.invalid_config, f"{name}={number}: must be positive")
        arguments[argument] = convert(number)
    return arguments


def topic_configs(stream: StreamStatistics, settings: KafkaSettings) -> list[ConfigEntry]:
    """A topic's configs, read off its partition 0 stream's retention."""
    age_ms = None if stream.max_age_s is None else int(stream.max_age_s * 1000)
    out: list[ConfigEntry] = [
        ("retention.ms", str(-1 if age_ms is None else age_ms), False, age_ms is None, 5),
        ("retention.bytes", str(stream.max_bytes or -1), False, stream.max_bytes is None, 5),
        ("segment.bytes", str(stream.segment_bytes), False, False, 3),
        ("cleanup.policy", "delete", True, True, 2),
        ("max.message.bytes", str(settings.message_max_bytes), True, True, 3),
        ("message.timestamp.type", "CreateTime", True, True, 2),
        ("compression.type", "producer", True, True, 2),
        ("min.insync.replicas", "1", True, True, 3)]
    return out


def broker_configs(settings: KafkaSettings) -> list[ConfigEntry]:
    return [("message.max.bytes", str(settings.message_max_bytes), True, False, 3),
            ("socket.request.max.bytes", str(settings.max_request_bytes), True, False, 3),
            ("auto.create.topics.enable", str(settings.auto_create_topics).lower(), True,
             False, 1),
            ("num.partitions", "1", True, True, 3),
            ("default.replication.factor", "1", True, True, 4),
            ("log.retention.ms", "-1", True, True, 5)]
