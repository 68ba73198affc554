"""kill -9 a real ``tidings serve`` under load from real pika clients, restart it, and check:
every confirmed message is delivered, and no committed ack is undone.

The producer publishes persistent messages with publisher confirms; a message counts as
confirmed once pika's ``basic_publish`` returned in confirm mode. The consumer acks inside
AMQP transactions; an ack counts as committed once ``tx_commit`` returned (tidings answers
commit-ok only after the acks are durable).
"""

from __future__ import annotations

import random
import socket
import threading
import time
from pathlib import Path

import pika
import pytest

from ..serverproc import ServerProcess

KILLS = 5
QUEUE = "crash-amqp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Load:
    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.confirmed: list[str] = []
        self.received: dict[str, float] = {}
        self.committed: dict[str, float] = {}
        self.redelivered_after_commit: list[str] = []
        self.errors = 0

    def connect(self) -> pika.BlockingConnection:
        params = pika.ConnectionParameters("127.0.0.1", self.port, connection_attempts=1,
                                           socket_timeout=2, blocked_connection_timeout=5)
        return pika.BlockingConnection(params)

    def produce(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                with self.connect() as conn:
                    ch = conn.channel()
                    ch.confirm_delivery()
                    ch.queue_declare(QUEUE, durable=True)
                    while not self.stop.is_set():
                        mid = f"m{n}"
                        ch.basic_publish("", QUEUE, b"x" * 200,
                                         pika.BasicProperties(delivery_mode=2, message_id=mid))
                        self.confirmed.append(mid)
                        n += 1
            except pika.exceptions.AMQPError:
                self.errors += 1
                n += 1  # the id in flight may or may not have landed: never reuse it
                time.sleep(0.05)

    def consume(self) -> None:
        while not self.stop.is_set():
            try:
                with self.connect() as conn:
                    ch = conn.channel()
                    ch.queue_declare(QUEUE, durable=True)
                    ch.tx_select()
                    while not self.stop.is_set():
                        batch = []
                        for _ in range(random.randint(1, 20)):
                            method, props, _ = ch.basic_get(QUEUE)
                            if method is None:
                                break
                            mid = props.message_id
                            if mid in self.committed:
                                self.redelivered_after_commit.append(mid)
                            self.received[mid] = time.monotonic()
                            batch.append(mid)
                            ch.basic_ack(method.delivery_tag)
                        ch.tx_commit()
                        for mid in batch:
                            self.committed[mid] = time.monotonic()
                        if not batch:
                            time.sleep(0.01)
            except pika.exceptions.AMQPError:
                self.errors += 1
                time.sleep(0.05)


@pytest.mark.crash
def test_kill_9_under_load_keeps_confirmed_messages_and_committed_acks(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    server = ServerProcess(data).start(port)
    load = Load(port)
    threads = [threading.Thread(target=load.produce), threading.Thread(target=load.consume)]
    for t in threads:
        t.start()
    try:
        for _ in range(KILLS):
            time.sleep(random.uniform(0.3, 1.0))
            server.kill()
            time.sleep(random.uniform(0.0, 0.3))
            server = ServerProcess(data).start(port)
        time.sleep(0.5)
    finally:
        load.stop.set()
        for t in threads:
            t.join(30)
    try:
        remaining = []
        with load.connect() as conn:
            ch = conn.channel()
            while True:
                method, props, _ = ch.basic_get(QUEUE, auto_ack=True)
                if method is None:
                    break
                remaining.append(props.message_id)
    finally:
        server.stop()
    assert len(load.confirmed) > 100 and load.errors >= KILLS
    lost = [m for m in load.confirmed if m not in load.received and m not in remaining]
    assert not lost, f"{len(lost)} confirmed messages lost: {lost[:5]}"
    assert not load.redelivered_after_commit, load.redelivered_after_commit[:5]
    undone = [m for m in remaining if m in load.committed]
    assert not undone, f"committed acks undone: {undone[:5]}"
