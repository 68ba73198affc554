"""Which Kafka client the ``kafka://`` transport should be built on: aiokafka against
confluent-kafka's asyncio API (``confluent_kafka.aio``, librdkafka underneath), in one asyncio
program each, as the transport would use them, against tidings serve's Kafka listener and
against Tansu, in the same run.

    python bench/kafka_clients.py                 # 20,000 records of 256 B
    python bench/kafka_clients.py --records 5000

K1 produce: idempotent, acks=all, records sent in windows of 100 whose acknowledgements are
   awaited together (the tidings client's send pattern; bench/transports.py T1).
K2 fetch: one consumer reads the topic from the beginning.
K3 round trip: windows of 100 produced, then consumed by a group member that commits after
   each batch (what a work queue over Kafka does per batch).

Records/s for each, and each library's ratio to the other on the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka import start_tansu, start_tidings  # the sibling benchmark's server starters

SIZE = 256
WINDOW = 100


async def _create(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()


async def aiokafka_run(bootstrap: str, n: int) -> dict[str, float]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    topic = f"k-aio-{time.monotonic_ns()}"
    await _create(bootstrap, topic)
    value = b"x" * SIZE
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=5)
    await producer.start()
    t0 = time.perf_counter()
    for _ in range(n // WINDOW):
        futures = [await producer.send(topic, value) for _ in range(WINDOW)]
        await asyncio.gather(*futures)
    produce_s = time.perf_counter() - t0
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    consumer.assign([TopicPartition(topic, 0)])
    await consumer.seek_to_beginning()
    got, t0 = 0, time.perf_counter()
    while got < n:
        batches = await consumer.getmany(timeout_ms=50, max_records=10_000)
        got += sum(len(b) for b in batches.values())
    fetch_s = time.perf_counter() - t0
    await consumer.stop()
    topic += "-rt"  # a fresh topic: the group starts at its beginning
    await _create(bootstrap, topic)
    group = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"g-{topic}",
                             enable_auto_commit=False, auto_offset_reset="earliest")
    await group.start()
    while not group.assignment():
        await asyncio.sleep(0.05)
    rounds = max(1, n // WINDOW // 4)
    t0 = time.perf_counter()
    for _ in range(rounds):
        futures = [await producer.send(topic, value) for _ in range(WINDOW)]
        await asyncio.gather(*futures)
        seen = 0
        while seen < WINDOW:
            batches = await group.getmany(timeout_ms=1000, max_records=WINDOW - seen)
            seen += sum(len(b) for b in batches.values())
        await group.commit()
    round_s = time.perf_counter() - t0
    await group.stop()
    await producer.stop()
    return {"produce": n / produce_s, "fetch": n / fetch_s,
            "round trip": rounds * WINDOW / round_s}


async def confluent_run(bootstrap: str, n: int) -> dict[str, float]:
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition
    from confluent_kafka.aio import AIOConsumer, AIOProducer

    topic = f"k-cf-{time.monotonic_ns()}"
    await _create(bootstrap, topic)
    value = b"x" * SIZE
    producer = AIOProducer({"bootstrap.servers": bootstrap, "acks": "all",
                            "enable.idempotence": True, "linger.ms": 5})
    t0 = time.perf_counter()
    for _ in range(n // WINDOW):
        futures = [await producer.produce(topic, value) for _ in range(WINDOW)]
        await producer.flush()  # (the aio producer buffers until a batch fills or a flush)
        await asyncio.gather(*futures)
    produce_s = time.perf_counter() - t0
    consumer = AIOConsumer({"bootstrap.servers": bootstrap, "group.id": f"r-{topic}",
                            "enable.auto.commit": False})
    await consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got, t0 = 0, time.perf_counter()
    while got < n:
        # (librdkafka's consume waits for the whole count or the timeout: keep it short)
        got += sum(1 for m in await consumer.consume(10_000, timeout=0.05)
                   if m.error() is None)
    fetch_s = time.perf_counter() - t0
    await consumer.close()
    topic += "-rt"  # a fresh topic: the group starts at its beginning
    await _create(bootstrap, topic)
    group = AIOConsumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    await group.subscribe([topic])
    while not await group.assignment():
        await group.poll(0.1)
    rounds = max(1, n // WINDOW // 4)
    t0 = time.perf_counter()
    for _ in range(rounds):
        futures = [await producer.produce(topic, value) for _ in range(WINDOW)]
        await producer.flush()
        await asyncio.gather(*futures)
        seen = 0
        while seen < WINDOW:
            seen += sum(1 for m in await group.consume(WINDOW - seen, timeout=1)
                        if m.error() is None)
        await group.commit(asynchronous=False)
    round_s = time.perf_counter() - t0
    await group.close()
    await producer.close()
    return {"produce": n / produce_s, "fetch": n / fetch_s,
            "round trip": rounds * WINDOW / round_s}


LIBRARIES: dict[str, Callable[[str, int], Awaitable[dict[str, float]]]] = {
    "aiokafka": aiokafka_run, "confluent-kafka": confluent_run}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    servers = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, kafka, _ = start_tidings(Path(tmp) / "data")
        servers.append(("tidings serve", proc, f"127.0.0.1:{kafka}"))
        try:
            tansu, port = start_tansu("memory://tansu/")
            servers.append(("Tansu", tansu, f"127.0.0.1:{port}"))
        except RuntimeError as e:
            print(f"Tansu unavailable: {e}")
        try:
            for name, _, bootstrap in servers:
                found: dict[str, dict[str, float]] = {}
                for lib, run in LIBRARIES.items():
                    try:
                        found[lib] = asyncio.run(asyncio.wait_for(
                            run(bootstrap, args.records), 300))
                    except Exception as e:  # a library this server does not serve
                        print(f"{name:14s} {lib}: failed: {type(e).__name__}: {e}")
                for what in ("produce", "fetch", "round trip"):
                    a = found.get("aiokafka", {}).get(what, 0.0)
                    c = found.get("confluent-kafka", {}).get(what, 0.0)
                    ratio = f"aiokafka {a / c:.2f}x" if a and c else ""
                    print(f"{name:14s} {what:10s}  aiokafka {a:>9,.0f}/s  "
                          f"confluent-kafka {c:>9,.0f}/s  {ratio}")
        finally:
            for _, p, _ in servers:
                p.terminate()
                p.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
