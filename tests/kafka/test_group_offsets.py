"""A Kafka group's committed offsets are the streams' named readers: what a Kafka consumer
commits, ``client.read(stream, reader=group)`` resumes after, and the other way round; the
HTTP API shows the group's lag; and both survive a restart of ``tidings serve``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from kio.schema.errors import ErrorCode

import tidings

from ..serverproc import ServerProcess
from .conftest import client_library
from .raw import RawKafka
from .test_protocol import _create


def _consume(bootstrap: str, group: str, count: int) -> list[bytes]:
    """``count`` records read by a Kafka consumer of ``group``, committed."""
    confluent = client_library("confluent_kafka")
    consumer = confluent.Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                   "auto.offset.reset": "earliest",
                                   "enable.auto.commit": False})
    consumer.subscribe(["ledger"])
    got: list[bytes] = []
    last = None
    for _ in range(300):
        m = consumer.poll(0.2)
        if m is not None and not m.error():
            got.append(m.value())
            last = m
        if len(got) == count:
            break
    assert last is not None
    consumer.commit(message=last, asynchronous=False)
    consumer.close()
    return got


def test_kafka_commits_and_named_readers_are_one_thing(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", "--kafka-port", "0",
                           "--kafka-group-initial-rebalance-delay-ms", "0").start()
    try:
        bootstrap = f"127.0.0.1:{server.kafka_port}"
        raw = RawKafka(server.kafka_port)
        assert _create(raw, "ledger") == ErrorCode.none
        raw.close()
        producer = client_library("confluent_kafka").Producer({"bootstrap.servers": bootstrap})
        for i in range(12):
            producer.produce("ledger", value=f"r{i}".encode())
        assert producer.flush(30) == 0

        assert _consume(bootstrap, "billing", 4) == [f"r{i}".encode() for i in range(4)]
        streams = httpx.get(f"http://127.0.0.1:{server.http_port}/api/streams",
                            auth=("guest", "guest")).json()
        ledger = next(s for s in streams if s["name"] == "ledger")
        billing = next(r for r in ledger["readers"] if r["name"] == "billing")
        assert billing["lag"] == 8  # committed 4 of 12

        async def tidings_reader() -> list[str]:
            client = await tidings.connect(f"amqp://guest:guest@127.0.0.1:{server.port}/")
            try:
                seen = []
                async with client.read("ledger", reader="billing") as records:
                    async for record in records:
                        seen.append(record.body.decode())
                        if len(seen) == 3:
                            await records.commit(record)  # processed r4..r6
                            break
                return seen
            finally:
                await client.close()
        assert asyncio.run(tidings_reader()) == ["r4", "r5", "r6"]

        server.stop()
        server.start()
        bootstrap = f"127.0.0.1:{server.kafka_port}"
        # the Kafka group resumes after what the tidings reader committed, across a restart
        assert _consume(bootstrap, "billing", 5) == [f"r{i}".encode() for i in range(7, 12)]
    finally:
        server.stop()
