"""kill -9 a real ``tidings serve`` while librdkafka's idempotent producer (acks=all) writes
to a topic, at random points, restarting it on the same Kafka port each time. Then read the
topic from the start: every acknowledged record is there exactly once, at the offset its
acknowledgement named, and the offsets are dense."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from ..serverproc import ServerProcess
from .conftest import client_library

#: Kill cycles (``TIDINGS_KAFKA_KILLS=50`` for a long run).
CYCLES = int(os.environ.get("TIDINGS_KAFKA_KILLS", "4"))
TOPIC = "crash-topic"


@pytest.mark.crash
def test_acknowledged_records_survive_kill_9_exactly_once(tmp_path: Path) -> None:
    kafka = client_library("confluent_kafka")
    data = tmp_path / "data"
    server = ServerProcess(data, "--kafka-port", "0", "--http-port", "-1").start()
    port = server.kafka_port
    bootstrap = f"127.0.0.1:{port}"
    acked: dict[int, int] = {}  # record number -> offset
    failed: list[str] = []

    def delivered(err: object, message: object) -> None:
        if err is not None:
            failed.append(str(err))
        else:
            acked[int(message.value().split(b"-")[1])] = message.offset()  # type: ignore[attr-defined]

    producer = kafka.Producer({
        "bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
        "linger.ms": 2, "message.timeout.ms": 120_000, "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 500, "topic.metadata.refresh.interval.ms": 1000})
    stop = threading.Event()

    def produce() -> None:
        n = 0
        while not stop.is_set():
            try:
                producer.produce(TOPIC, f"record-{n:08d}-".encode() + bytes(n % 300),
                                 on_delivery=delivered)
                n += 1
            except BufferError:
                producer.poll(0.05)
                continue
            if n % 100 == 0:
                producer.poll(0)
                time.sleep(0.001)

    writer = threading.Thread(target=produce)
    writer.start()
    rng = random.Random(9)
    try:
        for _ in range(CYCLES):
            time.sleep(rng.uniform(0.3, 1.2))
            server.kill()
            server = ServerProcess(data, "--kafka-port", str(port), "--http-port", "-1").start()
        time.sleep(0.5)
    finally:
        stop.set()
        writer.join()
    assert producer.flush(120) == 0
    assert failed == []
    assert len(acked) > 500
    print(f"acknowledged {len(acked)} records over {CYCLES} kills")

    server.kill()  # once more, idle: what was acknowledged stays where it was
    server = ServerProcess(data, "--kafka-port", str(port), "--http-port", "-1").start()
    try:
        consumer = kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                                   "enable.auto.commit": False})
        consumer.assign([kafka.TopicPartition(TOPIC, 0, kafka.OFFSET_BEGINNING)])
        seen: dict[int, int] = {}
        offsets: list[int] = []
        quiet = time.monotonic() + 10
        while time.monotonic() < quiet:
            for m in consumer.consume(1000, timeout=0.5):
                assert m.error() is None, m.error()
                number = int(m.value().split(b"-")[1])
                assert number not in seen, f"record {number} appended twice"
                seen[number] = m.offset()
                offsets.append(m.offset())
                quiet = time.monotonic() + 2
        consumer.close()
    finally:
        server.stop()
    assert offsets == list(range(len(offsets)))  # dense from 0
    missing = sorted(set(acked) - set(seen))
    assert not missing, f"{len(missing)} acknowledged records lost: {missing[:5]}"
    moved = {n: (o, seen[n]) for n, o in acked.items() if seen[n] != o}
    assert not moved, f"offsets changed: {list(moved.items())[:5]}"


@pytest.mark.crash
def test_acknowledged_group_commits_survive_kill_9(tmp_path: Path) -> None:
    """Offsets committed in a loop while the server is killed at random points: after each
    restart the group's committed offset is at least the last one acknowledged."""
    from kio.schema.errors import ErrorCode

    from .raw import RawKafka
    from .test_groups_protocol import _commit, _committed
    from .test_protocol import _create, _produce

    data = tmp_path / "data"
    server = ServerProcess(data, "--kafka-port", "0", "--http-port", "-1").start()
    port = server.kafka_port
    raw = RawKafka(port)
    assert _create(raw, "committed-crash") == ErrorCode.none
    from tidings.record_batch import encode_batch
    batch = encode_batch(0, [(0, None, b"r", [])] * 500)
    for _ in range(20):
        assert _produce(raw, "committed-crash", batch)[0] == ErrorCode.none
    raw.close()
    rng = random.Random(11)
    offset = acked = 0
    try:
        for _ in range(CYCLES):
            deadline = time.monotonic() + rng.uniform(0.2, 1.0)
            killer = threading.Timer(deadline - time.monotonic(), server.kill)
            killer.start()
            try:
                raw = RawKafka(port)
                while offset < 10_000:
                    offset += 1
                    if _commit(raw, "crash-group", "committed-crash", offset) == ErrorCode.none:
                        acked = offset
            except (OSError, AssertionError):
                pass  # killed mid-commit
            finally:
                killer.join()
                raw.close()
            server = ServerProcess(data, "--kafka-port", str(port), "--http-port", "-1").start()
            raw = RawKafka(port)
            committed = _committed(raw, "crash-group", "committed-crash")[0]
            raw.close()
            assert acked <= committed <= offset, (acked, committed, offset)
            offset = committed
    finally:
        server.stop()
    assert acked > 0
