"""The Kafka listener's fuzz loop, shared by the test suite (a short run) and
``bench/reliability.py kafka`` (the long form): requests recorded from real client traffic
(metadata, groups, offsets, SASL tokens, KIP-848's heartbeat), truncated, with bytes
flipped, with a length or count inside that lies, with junk appended, and every tenth with a
size prefix announcing more than is sent. Each goes on a connection of its own; every
``check_every`` a health check (a Metadata request) must be answered, and the server must
stay up without a traceback."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct

from kio.schema.consumer_group_heartbeat.v0.request import ConsumerGroupHeartbeatRequest
from kio.schema.find_coordinator.v2.request import FindCoordinatorRequest
from kio.schema.heartbeat.v3.request import HeartbeatRequest
from kio.schema.metadata.v5.request import MetadataRequest, MetadataRequestTopic
from kio.schema.offset_commit.v7 import request as commit
from kio.schema.offset_fetch.v5 import request as offset_fetch
from kio.schema.sasl_authenticate.v1.request import SaslAuthenticateRequest
from kio.schema.sasl_handshake.v0.request import SaslHandshakeRequest as SaslHandshakeV0
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest
from kio.schema.sync_group.v3 import request as sync

from tidings.resources import rss_mb

from ..reliability import FuzzReport
from ..serverproc import ServerProcess
from .groups_wire import join_body
from .raw import RawKafka


def recorded(raw: RawKafka) -> list[bytes]:
    """Whole, valid requests of many kinds (what real clients send)."""
    return [
        raw.frame(3, 5, MetadataRequest(topics=(MetadataRequestTopic(name="fuzzed"),),
                                        allow_auto_topic_creation=True)),
        raw.frame(10, 2, FindCoordinatorRequest(key="fuzz-group", key_type=0)),
        raw.frame(11, 5, join_body("fuzz-group")),
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
        raw.frame(17, 0, SaslHandshakeV0(mechanism="SCRAM-SHA-256")),
        raw.frame(36, 1, SaslAuthenticateRequest(auth_bytes=b"\0guest\0guest")),
        raw.frame(36, 1, SaslAuthenticateRequest(auth_bytes=b"n,,n=guest,r=fuzznonce")),
        raw.frame(68, 0, ConsumerGroupHeartbeatRequest(
            group_id="fuzz-group", member_id="", member_epoch=0,
            subscribed_topic_names=("fuzzed",), topic_partitions=())),
    ]


def mutated(rng: random.Random, frame: bytes) -> bytes:
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


def _healthy(port: int) -> bool:
    try:
        raw = RawKafka(port)
        raw.sock.settimeout(5)
        try:
            return bool(raw.request(3, 5, MetadataRequest(
                topics=None, allow_auto_topic_creation=False)).brokers)
        finally:
            raw.close()
    except (OSError, AssertionError):
        return False


def _ending(sock: socket.socket) -> str:
    try:
        got = sock.recv(65536)
    except TimeoutError:
        return "still open"
    except OSError:
        return "reset"
    return "answered" if got else "closed"


def kafka_fuzz(server: ServerProcess, requests: int, seed: int = 1,
               check_every: int = 50) -> FuzzReport:
    """Fuzz ``server``'s Kafka listener (restarting it should it die)."""
    rng = random.Random(seed)
    report = FuzzReport(requests, unit="requests")
    recorder = RawKafka(server.kafka_port)
    frames = recorded(recorder)
    recorder.close()
    log_before = server.log.read_text().count("Traceback")
    for i in range(requests):
        payload = mutated(rng, rng.choice(frames))
        lying = i % 10 == 0
        prefix = struct.pack(">i", len(payload) + (rng.randrange(1, 4096) if lying else 0))
        try:
            with socket.create_connection(("127.0.0.1", server.kafka_port),
                                          timeout=0.3 if lying else 5) as sock:
                sock.sendall(prefix + payload)
                ending = _ending(sock)
        except OSError:
            ending = "refused"
        report.closes[ending] = report.closes.get(ending, 0) + 1
        assert server.proc is not None
        if i % 10 == 0:
            report.peak_rss_mb = max(report.peak_rss_mb, rss_mb(server.proc.pid))
        if server.proc.poll() is not None:
            report.server_deaths += 1
            server.start()
        elif i % check_every == check_every - 1 and not _healthy(server.kafka_port):
            report.unanswered_health_checks += 1
    with contextlib.suppress(OSError):
        report.tracebacks = server.log.read_text().count("Traceback") - log_before
    return report
