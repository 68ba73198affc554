"""kill -9 a real ``tidings serve`` while a pika client appends to a stream with publisher
confirms, at random points, then restart it and read the stream from the start: every
confirmed record is there, offsets are dense and never change between restarts, and nothing
half-written is ever delivered."""

from __future__ import annotations

import base64
import os
import random
import threading
import time
from pathlib import Path

import pika
import pytest

from ..serverproc import ServerProcess

#: Kill cycles (``TIDINGS_STREAM_KILLS=100`` for a long run).
CYCLES = int(os.environ.get("TIDINGS_STREAM_KILLS", "4"))
STREAM = "crash-stream"


def append_until_killed(port: int, start: int, confirmed: list[int],
                        stop: threading.Event) -> None:
    """Publish bodies ``start``, ``start+1``, ...; record each one confirmed."""
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        ch = conn.channel()
        ch.confirm_delivery()
        n = start
        while not stop.is_set():
            body = f"record-{n:08d}-".encode() + bytes(200 + n % 300)
            ch.basic_publish("", STREAM, body, pika.BasicProperties(delivery_mode=2))
            confirmed.append(n)  # basic_publish returned: the broker confirmed it
            n += 1
    except (pika.exceptions.AMQPError, OSError):
        return  # the server died under us


def read_all(port: int) -> list[tuple[int, int]]:
    """(x-stream-offset, record number) of the whole stream, read from the first offset."""
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = conn.channel()
    size = ch.queue_declare(STREAM, durable=True,
                            arguments={"x-queue-type": "stream"}).method.message_count
    ch.basic_qos(prefetch_count=500)
    got: list[tuple[int, int]] = []
    for method, props, body in ch.consume(STREAM, arguments={"x-stream-offset": "first"},
                                          inactivity_timeout=5):
        if method is None:
            break
        assert body.startswith(b"record-"), body[:40]
        n = int(body[7:15])
        assert body == f"record-{n:08d}-".encode() + bytes(200 + n % 300)  # whole, never torn
        got.append((props.headers["x-stream-offset"], n))
        ch.basic_ack(method.delivery_tag)
        if len(got) == size:
            break
    conn.close()
    return got


@pytest.mark.crash
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_kill_9_during_appends_keeps_every_confirmed_record(tmp_path: Path,
                                                           encrypted: bool) -> None:
    rng = random.Random(os.environ.get("TIDINGS_CRASH_SEED", "7"))
    extra: list[str] = []
    if encrypted:  # sealed segments recover the same way: their heads are plain
        key_file = tmp_path / "keys"
        key_file.write_text(f"k1:{base64.b64encode(bytes(range(32))).decode()}\n")
        extra = ["--encryption-key-file", str(key_file)]
    server = ServerProcess(tmp_path / "data", *extra).start()
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
    conn.channel().queue_declare(STREAM, durable=True, arguments={"x-queue-type": "stream"})
    conn.close()
    confirmed: list[int] = []
    before: list[tuple[int, int]] = []
    next_number = 0
    try:
        for _ in range(CYCLES):
            stop = threading.Event()
            writer = threading.Thread(target=append_until_killed,
                                      args=(server.port, next_number, confirmed, stop))
            writer.start()
            time.sleep(rng.uniform(0.3, 1.5))
            server.kill()
            stop.set()
            writer.join(10)
            server.start(server.port)
            after = read_all(server.port)
            assert [o for o, _ in after] == list(range(len(after)))  # dense from 0
            assert after[:len(before)] == before  # offsets never change
            numbers = {n for _, n in after}
            lost = [n for n in confirmed if n not in numbers]
            assert not lost, f"{len(lost)} confirmed records lost: {lost[:5]}"
            assert len(numbers) == len(after)  # each record once
            before = after
            next_number = max(numbers, default=-1) + 1_000  # a fresh range each cycle
        assert len(confirmed) > 100
        if encrypted:
            segments = list((tmp_path / "data" / "streams").rglob("*.seg"))
            assert segments and all(s.with_suffix(".key").exists() for s in segments)
            assert not any(b"record-" in s.read_bytes() for s in segments)
        print(f"{CYCLES} kills: {len(confirmed)} confirmed records, {len(before)} in the "
              f"stream, 0 lost, offsets dense and unchanged")
    finally:
        server.stop()
