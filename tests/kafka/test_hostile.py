"""Hostile input on the Kafka face, as on AMQP's: size fields that lie, requests recorded
from real traffic then truncated and mutated (group, offset and SASL requests among them),
a frame announcing 2^31 bytes, and thousands of idle connections. The listener answers or
closes the one connection, never logs a traceback, keeps serving, and its memory stays
bounded. ``TIDINGS_KAFKA_FUZZ`` sets the number of mutated requests for long runs."""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import struct
from pathlib import Path

from kio.schema.metadata.v5.request import MetadataRequest

from tidings.resources import rss_mb

from ..serverproc import ServerProcess
from .fuzz import kafka_fuzz
from .groups_wire import join_body
from .raw import RawKafka

MUTATIONS = int(os.environ.get("TIDINGS_KAFKA_FUZZ", "300"))


def test_mutated_requests_never_hurt_the_listener(server: ServerProcess) -> None:
    assert server.proc is not None
    before = rss_mb(server.proc.pid)
    report = kafka_fuzz(server, MUTATIONS, seed=21, check_every=100)
    assert (report.server_deaths, report.unanswered_health_checks, report.tracebacks) == \
        (0, 0, 0), report.figures()
    assert sum(report.closes.values()) == MUTATIONS
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
        body = join_body(f"flood-{i % 50}", session=datetime.timedelta(seconds=6))
        assert raw.request(11, 5, body).member_id
    raw.close()
    assert rss_mb(server.proc.pid) - before < 40


def test_unfinished_requests_are_bounded_over_all_connections(tmp_path: Path) -> None:
    """Connections that each announce a large request and send part of it: past
    --kafka-queued-max-request-bytes in all, the one sending more is closed; whole requests
    go on being answered."""
    server = ServerProcess(tmp_path / "data", "--kafka-port", "0", "--http-port", "-1",
                           "--kafka-queued-max-request-bytes", str(4 * 2**20)).start()
    stalled: list[socket.socket] = []
    try:
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", server.kafka_port), timeout=5)
            sock.sendall(struct.pack(">i", 50 * 2**20))
            with contextlib.suppress(OSError):
                for _ in range(16):
                    sock.sendall(b"\0" * 65536)  # 1 MiB of the 50 announced
            stalled.append(sock)
        ended = 0
        for sock in stalled:
            sock.settimeout(1)
            try:
                ended += sock.recv(1) == b""
            except ConnectionResetError:
                ended += 1
            except TimeoutError:
                pass
        assert 3 <= ended <= 5  # four fit in 4 MiB (more or less one being read)
        probe = RawKafka(server.kafka_port)
        assert probe.request(3, 5, MetadataRequest(topics=None,
                                                   allow_auto_topic_creation=False)).brokers
        probe.close()
    finally:
        for sock in stalled:
            sock.close()
        server.stop()
    assert "Traceback" not in server.log.read_text()


def test_counts_that_lie_close_the_connection_and_never_the_broker(
        server: ServerProcess) -> None:
    """Arrays announcing billions of items in a few bytes (int32 counts, and the unsigned
    varints of flexible versions): refused before kio makes room for them (a ListGroups v4
    with a 2^32 count aborted the whole server)."""
    from kio.schema.list_groups.v4.request import ListGroupsRequest
    from kio.schema.metadata.v5.request import MetadataRequestTopic

    maker = RawKafka(server.kafka_port)
    frame = maker.frame(3, 5, MetadataRequest(topics=(MetadataRequestTopic(name="x"),),
                                              allow_auto_topic_creation=False))
    at = frame.index(b"\x00\x00\x00\x01\x00\x01x")
    lying = [frame[:at] + struct.pack(">i", 2**31 - 1) + frame[at + 4:]]
    frame = maker.frame(16, 4, ListGroupsRequest(states_filter=("Empty",)))
    at = frame.index(b"\x02\x06Empty")
    lying.append(frame[:at] + b"\xff\xff\xff\xff\x0f" + frame[at + 1:])
    frame = maker.frame(11, 5, join_body("lying"))
    at = frame.index(b"\x00\x00\x00\x01\x00\x05range")
    lying.append(frame[:at] + struct.pack(">i", 2**31 - 1) + frame[at + 4:])
    maker.close()
    for each in lying:
        raw = RawKafka(server.kafka_port)
        raw.send_frame(each)
        assert raw.closed()
        raw.close()
    assert server.proc is not None and server.proc.poll() is None
    alive = RawKafka(server.kafka_port)
    assert alive.request(3, 5, MetadataRequest(topics=None, allow_auto_topic_creation=False)
                         ).brokers
    alive.close()


def test_idle_connections_are_closed_and_busy_ones_kept(tmp_path: Path) -> None:
    """--kafka-connections-max-idle-ms (Kafka's connections.max.idle.ms): a connection that
    says nothing is closed; one that keeps asking, or waits on a long poll, is not."""
    import time

    from kio.schema.fetch.v11 import request as fetch

    server = ServerProcess(tmp_path / "data", "--kafka-port", "0", "--http-port", "-1",
                           "--kafka-connections-max-idle-ms", "300").start()
    try:
        idle = RawKafka(server.kafka_port)
        talking = RawKafka(server.kafka_port)
        waiting = RawKafka(server.kafka_port)
        assert waiting.request(3, 5, MetadataRequest(topics=(), allow_auto_topic_creation=False)
                               ).brokers
        from .test_protocol import _create
        assert _create(waiting, "idle-topic") == 0
        waiting.send_frame(waiting.frame(1, 11, fetch.FetchRequest(
            replica_id=-1, max_wait=datetime.timedelta(seconds=2), min_bytes=1,
            max_bytes=1 << 20, isolation_level=0, session_id=0, session_epoch=-1, topics=(
                fetch.FetchTopic(topic="idle-topic", partitions=(fetch.FetchPartition(
                    partition=0, current_leader_epoch=-1, fetch_offset=0,
                    log_start_offset=-1, partition_max_bytes=1 << 20),)),),
            forgotten_topics_data=(), rack_id="")))
        for _ in range(15):  # 1.5 s of questions every 0.1 s
            assert talking.request(3, 5, MetadataRequest(
                topics=(), allow_auto_topic_creation=False)).brokers
            time.sleep(0.1)
        assert idle.closed()
        assert waiting.read_frame()  # the long poll's answer came, after 2 s
        for each in (idle, talking, waiting):
            each.close()
    finally:
        server.stop()
