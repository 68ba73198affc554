"""Real Kafka clients against ``tidings serve --kafka-port``: each creates a topic, produces
10,000 records uncompressed and 10,000 compressed, reads them back from the beginning and
from a timestamp taken between the two, and deletes the topic."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .conftest import client_library, kafkajs, kcat

COUNT = 10_000


def _topic(client: str) -> str:
    return f"{client}-{uuid.uuid4().hex[:8]}"


def _expected(n: int = 2 * COUNT) -> list[tuple[bytes, bytes, bytes]]:
    return [(f"k{i % 7}".encode(), f"v{i}".encode(), f"x{i}".encode()) for i in range(n)]


def _middle() -> int:
    time.sleep(0.05)
    middle = int(time.time() * 1000)
    time.sleep(0.05)
    return middle


def test_confluent_kafka(bootstrap: str) -> None:
    kafka = client_library("confluent_kafka")
    admin_module = client_library("confluent_kafka.admin")
    topic = _topic("confluent")
    admin = admin_module.AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([admin_module.NewTopic(topic, num_partitions=1,
                                               replication_factor=1)])[topic].result(10)
    assert topic in admin.list_topics(timeout=10).topics
    failures: list[Any] = []

    def produce(start: int, compression: str) -> None:
        producer = kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                   "linger.ms": 5, "enable.idempotence": True,
                                   "compression.type": compression})
        for i in range(start, start + COUNT):
            producer.produce(topic, value=f"v{i}".encode(), key=f"k{i % 7}".encode(),
                             headers=[("h", f"x{i}".encode())],
                             on_delivery=lambda err, _: err and failures.append(err))
            if i % 1000 == 0:
                producer.poll(0)
        assert producer.flush(30) == 0

    produce(0, "none")
    middle = _middle()
    produce(COUNT, "zstd")
    assert failures == []

    consumer = kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                               "enable.auto.commit": False})
    consumer.assign([kafka.TopicPartition(topic, 0, kafka.OFFSET_BEGINNING)])
    got: list[tuple[int, bytes, bytes, bytes]] = []
    deadline = time.monotonic() + 30
    while len(got) < 2 * COUNT and time.monotonic() < deadline:
        for m in consumer.consume(1000, timeout=1):
            assert m.error() is None, m.error()
            got.append((m.offset(), m.key(), m.value(), dict(m.headers())["h"]))
    assert [g[0] for g in got] == list(range(2 * COUNT))
    assert [g[1:] for g in got] == _expected()
    found = consumer.offsets_for_times([kafka.TopicPartition(topic, 0, middle)], timeout=10)
    assert found[0].offset == COUNT
    consumer.close()

    admin.delete_topics([topic])[topic].result(10)
    assert topic not in admin.list_topics(timeout=10).topics


def test_aiokafka(bootstrap: str) -> None:
    aiokafka = client_library("aiokafka")
    admin_module = client_library("aiokafka.admin")
    topic = _topic("aiokafka")

    async def scenario() -> None:
        admin = admin_module.AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([admin_module.NewTopic(topic, 1, 1)])
        assert topic in await admin.list_topics()

        async def produce(start: int, compression: str | None) -> None:
            producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                                 enable_idempotence=True, linger_ms=5,
                                                 compression_type=compression)
            await producer.start()
            sent = [await producer.send(topic, f"v{i}".encode(), key=f"k{i % 7}".encode(),
                                        headers=[("h", f"x{i}".encode())])
                    for i in range(start, start + COUNT)]
            await asyncio.gather(*sent)
            await producer.stop()

        await produce(0, None)
        middle = _middle()
        await produce(COUNT, "gzip")

        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap,
                                             enable_auto_commit=False)
        await consumer.start()
        partition = aiokafka.TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        got = []
        while len(got) < 2 * COUNT:
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
            got += [(m.offset, m.key, m.value, dict(m.headers)["h"])
                    for records in batches.values() for m in records]
        assert [g[0] for g in got] == list(range(2 * COUNT))
        assert [g[1:] for g in got] == _expected()
        found = await consumer.offsets_for_times({partition: middle})
        assert found[partition].offset == COUNT
        await consumer.stop()
        await admin.delete_topics([topic])
        assert topic not in await admin.list_topics()
        await admin.close()

    asyncio.run(scenario())


def test_kafka_python(bootstrap: str) -> None:
    kafka = client_library("kafka")
    admin_module = client_library("kafka.admin")
    topic = _topic("kafka-python")
    admin = admin_module.KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([admin_module.NewTopic(topic, 1, 1)])
    assert topic in admin.list_topics()

    def produce(start: int, compression: str | None) -> None:
        producer = kafka.KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                       compression_type=compression)
        for i in range(start, start + COUNT):
            producer.send(topic, f"v{i}".encode(), key=f"k{i % 7}".encode(),
                          headers=[("h", f"x{i}".encode())])
        producer.flush(30)
        producer.close()

    produce(0, None)
    middle = _middle()
    produce(COUNT, "gzip")
    consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                   consumer_timeout_ms=3000)
    partition = kafka.TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    got = [(m.offset, m.key, m.value, dict(m.headers)["h"]) for m in consumer]
    assert [g[0] for g in got] == list(range(2 * COUNT))
    assert [g[1:] for g in got] == _expected()
    found = consumer.offsets_for_times({partition: middle})[partition]
    assert found.offset == COUNT
    assert middle < found.timestamp < middle + 60_000  # the found record's own time
    consumer.close()
    admin.delete_topics([topic])
    assert topic not in admin.list_topics()
    admin.close()


def test_kcat(bootstrap: str) -> None:
    program = kcat()
    topic = _topic("kcat")

    def produce(start: int, compression: str) -> None:
        lines = "".join(f"k{i % 7}:v{i}\n" for i in range(start, start + COUNT))
        subprocess.run([program, "-b", bootstrap, "-P", "-t", topic, "-K:", "-z", compression,
                        "-X", "acks=all"], input=lines.encode(), check=True, timeout=60)

    produce(0, "none")  # the topic is created on first use (auto-create)
    middle = _middle()
    produce(COUNT, "snappy")

    def consume(start: str) -> list[str]:
        out = subprocess.run([program, "-b", bootstrap, "-C", "-t", topic, "-o", start, "-e",
                              "-q", "-f", "%o %k %s\\n"], capture_output=True, check=True,
                             timeout=60)
        return out.stdout.decode().splitlines()

    assert consume("beginning") == [f"{i} k{i % 7} v{i}" for i in range(2 * COUNT)]
    assert consume(f"s@{middle}") == [f"{i} k{i % 7} v{i}" for i in range(COUNT, 2 * COUNT)]
    admin_module = client_library("confluent_kafka.admin")  # kcat has no admin commands
    admin = admin_module.AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([topic])[topic].result(10)
    assert topic not in admin.list_topics(timeout=10).topics


def test_kafkajs(bootstrap: str) -> None:
    """kafkajs: create, produce (idempotent, acks=-1; none and gzip), list offsets earliest,
    latest and by timestamp, delete. (Its consumer needs consumer groups: not yet served.)"""
    folder = kafkajs()
    topic = _topic("kafkajs")
    out = subprocess.run(["node", "scenario.js", bootstrap, topic, str(COUNT)], cwd=folder,
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    result = json.loads(out.stdout)
    assert result["created"] is True and result["listed"] is True and result["deleted"] is True
    assert result["offsets"] == [{"partition": 0, "offset": str(2 * COUNT),
                                  "high": str(2 * COUNT), "low": "0"}]
    assert result["byTime"] == [{"partition": 0, "offset": str(COUNT)}]


def test_the_confluent_kafka_quickstart_of_the_docs_runs_as_pasted(bootstrap: str) -> None:
    """docs/kafka.md's Python quickstart, with only the address changed."""
    client_library("confluent_kafka")
    docs = Path(__file__).resolve().parents[2] / "docs" / "kafka.md"
    section = docs.read_text().split("## Quickstart: confluent-kafka", 1)[1].split("\n## ")[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    assert block.count("127.0.0.1:9092") == 3
    out = subprocess.run([sys.executable, "-c", block.replace("127.0.0.1:9092", bootstrap)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 10
    assert sorted(line.split(" b", 2)[-1] for line in lines) == sorted(
        f"'order {n}'" for n in range(10))
