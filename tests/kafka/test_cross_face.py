"""One stream, every face: what a Kafka producer writes, a pika stream consumer and
``client.read()`` read at the same offsets, and what AMQP or ``client.append`` writes, a Kafka
consumer reads at the same offsets, with keys, headers and timestamps mapped both ways."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pika

import tidings

from ..serverproc import ServerProcess
from .conftest import client_library


def _kafka_read(bootstrap: str, topic: str, n: int) -> list[Any]:
    kafka = client_library("confluent_kafka")
    consumer = kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                               "enable.auto.commit": False})
    consumer.assign([kafka.TopicPartition(topic, 0, kafka.OFFSET_BEGINNING)])
    got: list[Any] = []
    deadline = time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        for m in consumer.consume(n, timeout=0.5):
            assert m.error() is None, m.error()
            got.append(m)
    consumer.close()
    return got


def _pika_read(port: int, stream: str, n: int) -> list[tuple[Any, bytes]]:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=100)
    got: list[tuple[Any, bytes]] = []

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        got.append((properties, body))
        ch.basic_ack(method.delivery_tag)
        if len(got) == n:
            ch.stop_consuming()

    channel.basic_consume(stream, on_message, arguments={"x-stream-offset": "first"})
    connection.call_later(20, channel.stop_consuming)
    channel.start_consuming()
    connection.close()
    return got


def test_kafka_records_read_the_same_over_amqp_and_the_client(server: ServerProcess,
                                                               bootstrap: str) -> None:
    kafka = client_library("confluent_kafka")
    producer = kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all",
                               "compression.type": "lz4", "linger.ms": 5})
    stamp = int(time.time() * 1000) - 5000
    for i in range(20):
        producer.produce("from-kafka", f"value-{i}".encode(),
                         key=None if i == 3 else f"key-{i}".encode(),
                         headers=[("trace", f"t{i}".encode()), ("raw", b"\xff\x00")],
                         timestamp=stamp + i)
    assert producer.flush(10) == 0

    received = _pika_read(server.port, "from-kafka", 20)
    assert [p.headers["x-stream-offset"] for p, _ in received] == list(range(20))
    assert [b for _, b in received] == [f"value-{i}".encode() for i in range(20)]
    assert received[0][0].headers["x-kafka-key"] == "key-0"
    assert "x-kafka-key" not in received[3][0].headers  # no key, no header
    assert received[5][0].headers["trace"] == "t5"
    assert received[5][0].headers["raw"] == b"\xff\x00"  # not UTF-8: bytes
    assert received[5][0].timestamp == (stamp + 5) // 1000

    async def read_with_the_client() -> list[Any]:
        client = await tidings.connect(f"amqp://guest:guest@127.0.0.1:{server.port}/")
        records = []
        async with client.read("from-kafka", start=10) as reader:
            async for record in reader:
                records.append((record.offset, record.body, record.headers["x-kafka-key"]))
                if len(records) == 3:
                    break
        await client.close()
        return records

    assert asyncio.run(read_with_the_client()) == [
        (10, b"value-10", "key-10"), (11, b"value-11", "key-11"), (12, b"value-12", "key-12")]


def test_amqp_and_client_appends_read_the_same_over_kafka(server: ServerProcess,
                                                          bootstrap: str) -> None:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
    channel = connection.channel()
    channel.queue_declare("from-amqp", durable=True, arguments={"x-queue-type": "stream"})
    channel.confirm_delivery()
    for i in range(5):
        channel.basic_publish("", "from-amqp", f"amqp-{i}".encode(), pika.BasicProperties(
            headers={"x-kafka-key": f"k{i}", "n": i, "s": "text", "flag": True}))
    connection.close()

    async def append() -> None:
        client = await tidings.connect(f"amqp://guest:guest@127.0.0.1:{server.port}/")
        await client.append("from-amqp", {"id": 5}, headers={"x-kafka-key": "k5", "s": "c"})
        await client.close()

    before = int(time.time() * 1000)
    asyncio.run(append())
    got = _kafka_read(bootstrap, "from-amqp", 6)
    assert [m.offset() for m in got] == list(range(6))
    assert [m.key() for m in got] == [f"k{i}".encode() for i in range(6)]
    assert [m.value() for m in got[:5]] == [f"amqp-{i}".encode() for i in range(5)]
    assert got[5].value() == b'{"id": 5}' or got[5].value() == b'{"id":5}'
    headers = dict(got[2].headers())
    assert headers == {"n": b"2", "s": b"text", "flag": b"true"}
    assert dict(got[5].headers())["s"] == b"c"
    assert got[5].timestamp()[1] >= before - 1000  # the time it was appended, in ms
