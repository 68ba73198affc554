"""The Kafka listener byte by byte: versions, refusals, bounds, the idempotent producer, long
polling and hostile bytes, with requests written by kio on a plain socket."""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import struct
import threading
import time

import pytest
from kio.schema.api_versions.v0.request import ApiVersionsRequest as ApiVersionsV0
from kio.schema.api_versions.v0.response import ApiVersionsResponse as ApiVersionsV0Response
from kio.schema.create_topics.v4 import request as create
from kio.schema.errors import ErrorCode
from kio.schema.fetch.v11 import request as fetch
from kio.schema.init_producer_id.v1.request import InitProducerIdRequest
from kio.schema.list_offsets.v5 import request as list_offsets
from kio.schema.metadata.v5.request import MetadataRequest, MetadataRequestTopic
from kio.schema.produce.v7 import request as produce
from kio.serial import entity_reader

from tidings.record_batch import encode_batch

from ..serverproc import ServerProcess
from .raw import RawKafka

SECOND = datetime.timedelta(seconds=1)
#: Garbage frames sent by the fuzz test (``TIDINGS_KAFKA_FUZZ=5000`` for a long run).
FUZZ_FRAMES = int(os.environ.get("TIDINGS_KAFKA_FUZZ", "200"))


@pytest.fixture
def raw(server: ServerProcess) -> RawKafka:
    client = RawKafka(server.kafka_port)
    yield client
    client.close()


def _create(raw: RawKafka, name: str, partitions: int = 1,
            configs: dict[str, str] | None = None) -> ErrorCode:
    body = create.CreateTopicsRequest(topics=(create.CreatableTopic(
        name=name, num_partitions=partitions, replication_factor=1, assignments=(),
        configs=tuple(create.CreatableTopicConfig(name=k, value=v)
                      for k, v in (configs or {}).items())),), timeout=SECOND,
        validate_only=False)
    return raw.request(19, 4, body).topics[0].error_code


def _produce(raw: RawKafka, topic: str, records: bytes, acks: int = -1,
             partition: int = 0) -> tuple[ErrorCode, int]:
    body = produce.ProduceRequest(acks=acks, timeout=SECOND, topic_data=(
        produce.TopicProduceData(name=topic, partition_data=(
            produce.PartitionProduceData(index=partition, records=records),)),))
    result = raw.request(0, 7, body).responses[0].partition_responses[0]
    return result.error_code, result.base_offset


def _batch(n: int, **producer: int) -> bytes:
    now = int(time.time() * 1000)
    return encode_batch(0, [(now, b"k", b"v%d" % i, [("h", b"1")]) for i in range(n)],
                        **producer)


def _end(raw: RawKafka, topic: str) -> int:
    body = list_offsets.ListOffsetsRequest(replica_id=-1, isolation_level=0, topics=(
        list_offsets.ListOffsetsTopic(name=topic, partitions=(
            list_offsets.ListOffsetsPartition(partition_index=0, timestamp=-1,
                                              current_leader_epoch=-1),)),))
    return raw.request(2, 5, body).topics[0].partitions[0].offset


def _fetch(raw: RawKafka, topic: str, offset: int, wait_ms: int = 0) -> fetch.FetchRequest:
    return fetch.FetchRequest(
        replica_id=-1, max_wait=datetime.timedelta(milliseconds=wait_ms), min_bytes=1,
        max_bytes=1 << 20, isolation_level=0, session_id=0, session_epoch=-1, topics=(
            fetch.FetchTopic(topic=topic, partitions=(fetch.FetchPartition(
                partition=0, current_leader_epoch=-1, fetch_offset=offset,
                log_start_offset=-1, partition_max_bytes=1 << 20),)),),
        forgotten_topics_data=(), rack_id="")


def test_api_versions_it_does_not_know_get_error_35_in_the_v0_layout(raw: RawKafka) -> None:
    frame = bytearray(raw.frame(18, 0, ApiVersionsV0()))
    struct.pack_into(">h", frame, 2, 9)  # ask for ApiVersions v9
    raw.send_frame(bytes(frame))
    data = raw.read_frame()
    response, _ = entity_reader(ApiVersionsV0Response)(data, 4)
    assert response.error_code == ErrorCode.unsupported_version
    versions = {v.api_key: (v.min_version, v.max_version) for v in response.api_keys}
    assert versions[0] == (0, 8)  # Produce advertised from v0 (librdkafka's compression)
    assert versions[1][0] == 4 and versions[3][1] >= 5
    assert 24 not in versions and 26 not in versions  # no transactions advertised


def test_produce_v0_to_v2_is_refused_with_unsupported_version(raw: RawKafka,
                                                              server: ServerProcess) -> None:
    assert _create(raw, "old-produce") == ErrorCode.none
    frame = bytearray(raw.frame(0, 3, produce.ProduceRequest(
        acks=-1, timeout=SECOND, topic_data=(produce.TopicProduceData(
            name="old-produce", partition_data=(produce.PartitionProduceData(
                index=0, records=_batch(1)),)),))))
    # v3 less its transactional id (a null string, after the header) is v2
    header_end = 2 + 2 + 4 + 2 + len("raw")
    v2 = frame[:header_end] + frame[header_end + 2:]
    struct.pack_into(">h", v2, 2, 2)
    raw.send_frame(bytes(v2))
    data = raw.read_frame()
    # topics: [name, [index, error, base offset, log append time]], throttle
    name_length = struct.unpack_from(">h", data, 8)[0]
    at = 10 + name_length + 4
    index, error, _, _ = struct.unpack_from(">ihqq", data, at)
    assert (index, error) == (0, ErrorCode.unsupported_version.value)
    assert len(data) == at + 22 + 4
    assert _end(raw, "old-produce") == 0  # nothing appended


@pytest.mark.parametrize("frame", [
    struct.pack(">hhi", 1000, 0, 1) + b"\xff\xff",  # an unknown API key
    struct.pack(">hhi", 3, 99, 1) + b"\xff\xff",  # Metadata v99
    struct.pack(">hhi", 3, 1, 1) + b"\x00",  # a header cut short
], ids=["unknown-api", "unknown-version", "truncated"])
def test_unknown_or_broken_requests_close_the_connection_and_nothing_else(
        raw: RawKafka, server: ServerProcess, frame: bytes) -> None:
    raw.send_frame(frame)
    assert raw.closed()
    other = RawKafka(server.kafka_port)  # the listener serves everyone else
    assert other.request(3, 5, MetadataRequest(topics=(), allow_auto_topic_creation=False)
                         ).controller_id == 1
    other.close()


def test_trailing_bytes_and_oversized_requests_close_the_connection(
        server: ServerProcess) -> None:
    raw = RawKafka(server.kafka_port)
    raw.send_frame(raw.frame(3, 5, MetadataRequest(topics=(), allow_auto_topic_creation=False))
                   + b"junk")
    assert raw.closed()
    raw.close()
    raw = RawKafka(server.kafka_port)
    raw.sock.sendall(struct.pack(">i", 200 * 2**20))  # above socket.request.max.bytes
    assert raw.closed()
    raw.close()


def test_metadata_names_a_real_controller_and_auto_creates(raw: RawKafka) -> None:
    response = raw.request(3, 5, MetadataRequest(topics=(MetadataRequestTopic(
        name="auto-made"),), allow_auto_topic_creation=True))
    assert response.controller_id == response.brokers[0].node_id
    assert response.topics[0].error_code == ErrorCode.none
    assert len(response.topics[0].partitions) == 1
    bad = raw.request(3, 5, MetadataRequest(topics=(MetadataRequestTopic(name="bad name!"),),
                                            allow_auto_topic_creation=True))
    assert bad.topics[0].error_code == ErrorCode.invalid_topic_exception


def test_create_topics_refuses_what_it_cannot_honour(raw: RawKafka) -> None:
    assert _create(raw, "compacted", configs={"cleanup.policy": "compact"}) == \
        ErrorCode.invalid_config
    assert _create(raw, "unknown-config", configs={"flush.ms": "5"}) == ErrorCode.invalid_config
    assert _create(raw, "too-many", partitions=100_000) == ErrorCode.invalid_partitions
    assert _create(raw, "a/b") == ErrorCode.invalid_topic_exception
    assert _create(raw, "retained", 2, {"retention.ms": "3600000"}) == ErrorCode.none
    assert _create(raw, "retained") == ErrorCode.topic_already_exists


def test_batches_are_checked_before_anything_is_appended(raw: RawKafka) -> None:
    assert _create(raw, "checked") == ErrorCode.none
    broken = bytearray(_batch(3))
    broken[-1] ^= 0xFF  # the CRC no longer matches
    assert _produce(raw, "checked", bytes(broken))[0] == ErrorCode.corrupt_message
    big = encode_batch(0, [(0, None, b"x" * (1100 * 1024), [])])
    assert _produce(raw, "checked", big)[0] == ErrorCode.message_too_large
    assert _produce(raw, "nowhere", _batch(1))[0] == ErrorCode.unknown_topic_or_partition
    assert _produce(raw, "checked", _batch(1), partition=3)[0] == \
        ErrorCode.unknown_topic_or_partition
    assert _end(raw, "checked") == 0
    assert _produce(raw, "checked", _batch(3) + _batch(2)) == (ErrorCode.none, 0)
    assert _end(raw, "checked") == 5


def test_the_idempotent_producer_appends_a_retried_batch_once(raw: RawKafka) -> None:
    assert _create(raw, "idempotent") == ErrorCode.none
    init = raw.request(22, 1, InitProducerIdRequest(transactional_id=None,
                                                    transaction_timeout=SECOND))
    pid = init.producer_id
    assert init.error_code == ErrorCode.none and pid > 0 and init.producer_epoch == 0
    first = _batch(4, producer_id=pid, producer_epoch=0, base_sequence=0)
    assert _produce(raw, "idempotent", first) == (ErrorCode.none, 0)
    assert _produce(raw, "idempotent", first) == (ErrorCode.none, 0)  # a retry: same offset
    assert _end(raw, "idempotent") == 4
    gap = _batch(2, producer_id=pid, producer_epoch=0, base_sequence=9)
    assert _produce(raw, "idempotent", gap)[0] == ErrorCode.out_of_order_sequence_number
    following = _batch(2, producer_id=pid, producer_epoch=0, base_sequence=4)
    assert _produce(raw, "idempotent", following) == (ErrorCode.none, 4)
    bumped = _batch(1, producer_id=pid, producer_epoch=1, base_sequence=0)
    assert _produce(raw, "idempotent", bumped) == (ErrorCode.none, 6)
    fenced = _batch(1, producer_id=pid, producer_epoch=0, base_sequence=6)
    assert _produce(raw, "idempotent", fenced)[0] == ErrorCode.invalid_producer_epoch
    assert _end(raw, "idempotent") == 7
    assert raw.request(22, 1, InitProducerIdRequest(
        transactional_id="tx", transaction_timeout=SECOND)).error_code != ErrorCode.none


def test_a_fetch_at_the_end_waits_for_the_next_record(raw: RawKafka,
                                                      server: ServerProcess) -> None:
    assert _create(raw, "long-poll") == ErrorCode.none
    assert _produce(raw, "long-poll", _batch(2))[0] == ErrorCode.none
    other = RawKafka(server.kafka_port)
    later = threading.Timer(0.3, lambda: _produce(other, "long-poll", _batch(1)))
    later.start()
    response = raw.request(1, 11, _fetch(raw, "long-poll", 2, wait_ms=10_000))
    later.join()
    other.close()
    partition = response.responses[0].partitions[0]
    assert partition.error_code == ErrorCode.none and partition.high_watermark == 3
    assert struct.unpack_from(">q", partition.records)[0] == 2  # the batch at offset 2
    out_of_range = raw.request(1, 11, _fetch(raw, "long-poll", 99))
    assert out_of_range.responses[0].partitions[0].error_code == ErrorCode.offset_out_of_range


def test_garbage_never_hurts_the_listener(server: ServerProcess) -> None:
    rng = random.Random(20)
    for _ in range(FUZZ_FRAMES):
        raw = RawKafka(server.kafka_port)
        size = rng.choice([0, 3, 8, 20, 200, 5000])
        payload = os.urandom(size) if rng.random() < 0.5 else \
            struct.pack(">hhi", rng.choice([0, 1, 2, 3, 18, 19, 20, 22, 32]),
                        rng.randrange(0, 12), 7) + os.urandom(size)
        raw.send_frame(payload)
        raw.sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            raw.sock.recv(65536)  # an answer (ApiVersions) or the close
        raw.close()
    alive = RawKafka(server.kafka_port)
    assert alive.request(3, 5, MetadataRequest(topics=None, allow_auto_topic_creation=False)
                         ).brokers
    alive.close()
    assert "Traceback" not in server.log.read_text()


def test_acks_0_gets_no_response_and_is_still_appended(raw: RawKafka) -> None:
    assert _create(raw, "fire-and-forget") == ErrorCode.none
    body = produce.ProduceRequest(acks=0, timeout=SECOND, topic_data=(
        produce.TopicProduceData(name="fire-and-forget", partition_data=(
            produce.PartitionProduceData(index=0, records=_batch(3)),)),))
    raw.send_frame(raw.frame(0, 7, body))
    # the next response on the connection is ListOffsets' own (its correlation id is checked)
    deadline = time.monotonic() + 10
    while _end(raw, "fire-and-forget") != 3:  # visible once fsynced (nobody waits for it)
        assert time.monotonic() < deadline
        time.sleep(0.01)
