"""Hostile input on the Kafka face, as on AMQP's: size fields that lie, requests recorded
from real traffic then truncated and mutated (group, offset and SASL requests among them),
a frame announcing 2^31 bytes, and thousands of idle connections. The listener answers or
closes the one connection, never logs a traceback, keeps serving, and its memory stays
bounded. ``TIDINGS_KAFKA_FUZZ`` sets the number of mutated requests for long runs."""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import socket
import struct

from kio.schema.find_coordinator.v2.request import FindCoordinatorRequest
from kio.schema.heartbeat.v3.request import HeartbeatRequest
from kio.schema.metadata.v5.request import MetadataRequest, MetadataRequestTopic
from kio.schema.offset_commit.v7 import request as commit
from kio.schema.offset_fetch.v5 import request as offset_fetch
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest
from kio.schema.sync_group.v3 import request as sync

from tidings.resources import rss_mb

from ..serverproc import ServerProcess
from .raw import RawKafka
from .test_groups_protocol import _join_body

MUTATIONS = int(os.environ.get("TIDINGS_KAFKA_FUZZ", "300"))


def _recorded(raw: RawKafka) -> list[bytes]:
    """Whole, valid requests of many kinds (what real clients send)."""
    return [
        raw.frame(3, 5, MetadataRequest(topics=(MetadataRequestTopic(name="fuzzed"),),
                                        allow_auto_topic_creation=True)),
        raw.frame(10, 2, FindCoordinatorRequest(key="fuzz-group", key_type=0)),
        raw.frame(11, 5, _join_body("fuzz-group")),
        raw.frame(14, 3, sync.SyncGroupRequest(
            group_id="fuzz-group", generation_id=1, member_id="m", group_instance_id=None,
            assignments=(sync.SyncGroupRequestAssignment(member_id="m", assignment=b"a"),))),
        raw.frame(12, 3, HeartbeatRequest(group_id="fuzz-group", generation_id=1,
                                          member_id="m", group_instance_id=None)),
        raw.frame(8, 7, commit.OffsetCommitRequest(
            group_id="fuzz-group", generation_id_or_member_epoch=-1, member_id="",
            group_instance_id=None, topics=(commit.OffsetCommitRequestTopic(
                name="fuzzed", partitions=(commit.OffsetCommitRequestPartition(
                    partition_index=0, committed_offset=0, committed_metadata="m"),)),))),
        raw.frame(9, 5, offset_fetch.OffsetFetchRequest(group_id="fuzz-group", topics=None)),
        raw.frame(17, 1, SaslHandshakeRequest(mechanism="PLAIN")),
    ]


def _mutated(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    kind = rng.randrange(4)
    if kind == 0:  # truncated
        return bytes(data[:rng.randrange(len(data))])
    if kind == 1:  # bytes flipped
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 2:  # a length or count inside lies
        at = rng.randrange(8, max(9, len(data) - 4))
        data[at:at + 4] = struct.pack(">i", rng.choice([-2, -1, 0x7FFF, 2**31 - 1, 10**6]))
    else:  # junk appended
        data += os.urandom(rng.randrange(1, 40))
    return bytes(data)


def test_mutated_requests_never_hurt_the_listener(server: ServerProcess) -> None:
    assert server.proc is not None
    rng = random.Random(21)
    before = rss_mb(server.proc.pid)
    recorder = RawKafka(server.kafka_port)
    frames = _recorded(recorder)
    recorder.close()
    for i in range(MUTATIONS):
        raw = RawKafka(server.kafka_port)
        payload = _mutated(rng, rng.choice(frames))
        if i % 10 == 0:  # the size field lies too: more announced than sent, then silence
            raw.sock.sendall(struct.pack(">i", len(payload) + rng.randrange(1, 4096)) + payload)
        else:
            raw.send_frame(payload)
        raw.sock.settimeout(0.3 if i % 10 == 0 else 5)
        with contextlib.suppress(ConnectionResetError, TimeoutError, socket.timeout):
            raw.sock.recv(65536)
        raw.close()
    alive = RawKafka(server.kafka_port)
    assert alive.request(3, 5, MetadataRequest(topics=None, allow_auto_topic_creation=False)
                         ).brokers
    alive.close()
    assert "Traceback" not in server.log.read_text()
    assert rss_mb(server.proc.pid) - before < 40


def test_a_frame_announcing_2_to_the_31_bytes_is_refused_before_it_is_read(
        server: ServerProcess) -> None:
    for announced in (struct.pack(">I", 2**31), struct.pack(">i", 2**31 - 1)):
        raw = RawKafka(server.kafka_port)
        raw.sock.sendall(announced + b"\0" * 64)  # nothing like that much follows
        assert raw.closed()
        raw.close()


def test_thousands_of_idle_connections_cost_little(server: ServerProcess) -> None:
    assert server.proc is not None
    before = rss_mb(server.proc.pid)
    idle = [socket.create_connection(("127.0.0.1", server.kafka_port)) for _ in range(2000)]
    try:
        probe = RawKafka(server.kafka_port)  # and everyone else is still served
        assert probe.request(3, 5, MetadataRequest(topics=None,
                                                   allow_auto_topic_creation=False)).brokers
        probe.close()
        grown = rss_mb(server.proc.pid) - before
        assert grown < 40, f"2000 idle Kafka connections took {grown:.1f} MB"
    finally:
        for each in idle:
            each.close()


def test_a_group_flood_from_one_client_is_answered_and_bounded(server: ServerProcess) -> None:
    """Many members joining and leaving through the wire: each gets an answer, the
    listener keeps serving, and the server's memory stays bounded."""
    assert server.proc is not None
    before = rss_mb(server.proc.pid)
    raw = RawKafka(server.kafka_port)
    for i in range(2000):  # member ids handed out and never used: they lapse
        body = _join_body(f"flood-{i % 50}", session=datetime.timedelta(seconds=6))
        assert raw.request(11, 5, body).member_id
    raw.close()
    assert rss_mb(server.proc.pid) - before < 40
