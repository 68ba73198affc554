"""Encryption at rest on a real ``tidings serve``: the master key rotates while pika clients
publish with confirms to a queue and to a stream (``tidings keys rotate`` asks the server,
which reads its key file again), the server is then killed with SIGKILL and restarted with
the old key gone from the file: every confirmed message and record is there, and none of
them is in plain on disk. And the Kafka face serves sealed batches: what confluent-kafka
produced reads back the same, and its values are nowhere on disk in plain."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pytest

from ..kafka.conftest import client_library
from ..serverproc import ServerProcess

SECRET = "pan-5500-0000-0000-0004"
QUEUE, STREAM = "payments", "ledger"
#: Small segments: several roll over during the test, before and after the rotation.
STREAM_ARGUMENTS = {"x-queue-type": "stream", "x-stream-max-segment-size-bytes": 20_000}


def _line(ident: str, fill: int) -> str:
    return f"{ident}:{base64.b64encode(bytes([fill]) * 32).decode()}\n"


def _plain_files(data: Path) -> list[str]:
    return sorted(str(p.relative_to(data)) for p in data.rglob("*")
                  if p.is_file() and SECRET.encode() in p.read_bytes())


def _keys(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_ENCRYPTION")}
    return subprocess.run([sys.executable, "-m", "tidings", "--data-dir", str(data), "keys",
                           *args], capture_output=True, text=True, timeout=60, env=env)


def _publish(port: int, confirmed: list[tuple[str, int]], stop: threading.Event) -> None:
    """Publish to the queue and the stream in turn until stopped or the server dies;
    record each confirmed one."""
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        ch = conn.channel()
        ch.confirm_delivery()
        n = 0
        while not stop.is_set():
            target = (QUEUE, STREAM)[n % 2]
            body = json.dumps({"card": SECRET, "n": n}).encode()
            ch.basic_publish("", target, body, pika.BasicProperties(
                delivery_mode=2, headers={"holder": SECRET}))
            confirmed.append((target, n))
            n += 1
    except (pika.exceptions.AMQPError, OSError):
        return


def _drain(port: int) -> tuple[set[int], set[int]]:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = conn.channel()
    queued: set[int] = set()
    while True:
        method, _, body = ch.basic_get(QUEUE, auto_ack=True)
        if method is None:
            break
        queued.add(json.loads(body)["n"])
    size = ch.queue_declare(STREAM, durable=True,
                            arguments=STREAM_ARGUMENTS).method.message_count
    ch.basic_qos(prefetch_count=500)
    streamed: set[int] = set()
    for method, props, body in ch.consume(STREAM, arguments={"x-stream-offset": "first"},
                                          inactivity_timeout=5):
        if method is None:
            break
        assert props.headers["holder"] == SECRET
        streamed.add(json.loads(body)["n"])
        ch.basic_ack(method.delivery_tag)
        if len(streamed) == size:
            break
    conn.close()
    return queued, streamed


@pytest.mark.crash
def test_the_master_key_rotates_under_load_and_the_old_one_can_go(tmp_path: Path) -> None:
    data, key_file = tmp_path / "data", tmp_path / "keys"
    key_file.write_text(_line("k1", 1))
    server = ServerProcess(data, "--encryption-key-file", str(key_file)).start()
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        ch = conn.channel()
        ch.queue_declare(QUEUE, durable=True)
        ch.queue_declare(STREAM, durable=True, arguments=STREAM_ARGUMENTS)
        conn.close()
        confirmed: list[tuple[str, int]] = []
        stop = threading.Event()
        writer = threading.Thread(target=_publish, args=(server.port, confirmed, stop))
        writer.start()
        time.sleep(1.0)
        key_file.write_text(_line("k2", 2) + _line("k1", 1))  # k2 first: the new active key
        out = _keys(data, "rotate")  # no keyring here: the running server rotates
        assert out.returncode == 0, out.stderr
        assert "rewrapped by master key 'k2'" in out.stdout
        before = len(confirmed)
        time.sleep(1.0)
        assert len(confirmed) > before, "publishing went on during the rotation"
        status = json.loads(_keys(data, "status", "--json").stdout)
        assert set(status["data_keys"].values()) == {"k2"}
        assert set(status["stream_segments"]) == {"master key k2"}
        server.kill()
        stop.set()
        writer.join(10)
        key_file.write_text(_line("k2", 2))  # the old key is gone
        server.start(server.port)
        queued, streamed = _drain(server.port)
        lost = [(t, n) for t, n in confirmed if n not in (queued if t == QUEUE else streamed)]
        assert not lost, f"{len(lost)} confirmed lost: {lost[:5]}"
        assert len(confirmed) > 200
        assert _plain_files(data) == []
    finally:
        server.stop()


def test_the_kafka_face_serves_sealed_batches(tmp_path: Path) -> None:
    kafka = client_library("confluent_kafka")
    data, key_file = tmp_path / "data", tmp_path / "keys"
    key_file.write_text(_line("k1", 1))
    server = ServerProcess(data, "--encryption-key-file", str(key_file), "--kafka-port", "0",
                           "--http-port", "-1").start()
    try:
        bootstrap = f"127.0.0.1:{server.kafka_port}"
        producer = kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                   "linger.ms": 5})
        for i in range(2_000):
            producer.produce("cards", value=f"{SECRET}-{i}".encode(), key=f"k{i % 3}".encode())
        assert producer.flush(30) == 0
        consumer = kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "audit",
                                   "auto.offset.reset": "earliest"})
        consumer.subscribe(["cards"])
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < 2_000 and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                got.append(message.value())
        consumer.close()
        assert got == [f"{SECRET}-{i}".encode() for i in range(2_000)]
        assert _plain_files(data) == []
        assert list((data / "streams").rglob("*.key")), "the topic's segments have keys"
    finally:
        server.stop()
