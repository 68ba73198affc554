"""The tidings client on NATS JetStream, Redis Streams and Kafka against those engines' own
clients, and every transport on the same workloads.

    python bench/engines.py              # N1/N2, R1/R2, then the table of every transport
    python bench/engines.py --quick      # smaller counts
    python bench/engines.py --only N1,R1

N1 / R1 durable round trip (the workload of bench/transports.py T1): 256 B messages sent in
   windows of 100 whose confirmations are awaited together, one consumer with prefetch 100
   acknowledging each message. Raw nats-py: a work-queue stream, a durable pull consumer
   fetched 100 at a time, publish_async windows with a Nats-Msg-Id per message (as tidings sends,
   which makes a retried send safe). Raw redis-py: XADD windows in one pipeline,
   XREADGROUP 100 at a time, XACK + XDEL per message (what a work queue needs).
N2 / R2 fan-out to four groups: events in confirmed windows of 100, four groups each with one
   consumer; deliveries/s until all four have everything. Raw nats-py: one interest stream,
   four durable pull consumers. Raw redis-py: one stream read by four consumer groups (the
   Redis way; tidings copies each event to four queues, which is what lets every group have
   its own delivery limit, dead letters and purge).
K1 / K2 the same on Kafka (the Kafka face of a tidings serve started here, or --kafka): raw
   aiokafka produces with the idempotent producer (acks=all) and consumes as a group member
   that commits after each fetched batch (the Kafka way; four groups for K2); tidings
   acknowledges each message, committing the lowest unacknowledged offset.
ALL: the tidings client's N1 and N2 on every transport: memory://, a data directory,
   amqp:// to tidings serve started here and to RabbitMQ, nats://, redis:// and kafka://.

Best of --repeats runs each; ratios are within this run. The engines are the ones at --nats
and --redis (this machine's Redis keeps nothing on disk, so R1 measures no fsync).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transports import (  # the sibling benchmark's workloads, reused as they are
    BODY,
    PREFETCH,
    WINDOW,
    _reachable,
    best,
    start_tidings,
    tidings_fanout,
    tidings_round_trip,
)


async def _nats_produce(js: object, subject: str, n: int) -> None:
    """Windows of publishes, each with a ``Nats-Msg-Id`` as tidings sends (what makes a send
    retried after a lost acknowledgement safe)."""
    prefix = uuid.uuid4().hex
    for w in range(n // WINDOW):
        futures = [await js.publish_async(  # type: ignore[attr-defined]
            subject, BODY, headers={"Nats-Msg-Id": f"{prefix}-{w}-{i}"}) for i in range(WINDOW)]
        await asyncio.gather(*futures)


async def _nats_consume(sub: object, n: int) -> None:
    import nats

    got = 0
    while got < n:
        try:
            batch = await sub.fetch(PREFETCH, timeout=1)  # type: ignore[attr-defined]
        except nats.errors.TimeoutError:
            continue
        for msg in batch:
            await msg.ack()
        got += len(batch)


async def _redis_produce(r: object, key: str, n: int) -> None:
    for _ in range(n // WINDOW):
        async with r.pipeline(transaction=False) as pipe:  # type: ignore[attr-defined]
            for _ in range(WINDOW):
                pipe.xadd(key, {"b": BODY})
            await pipe.execute()


async def nats_round_trip(url: str, n: int) -> float:
    import nats
    from nats.js import api

    name = f"BENCH_{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[f"{name}.q"], retention="workqueue",
                        storage="file")
    await js.add_consumer(name, config=api.ConsumerConfig(
        durable_name="c", ack_policy="explicit", max_ack_pending=100_000))
    sub = await js.pull_subscribe_bind("c", name)
    start = time.perf_counter()
    await asyncio.gather(_nats_produce(js, f"{name}.q", n), _nats_consume(sub, n))
    rate = n / (time.perf_counter() - start)
    await js.delete_stream(name)
    await nc.close()
    return rate


async def nats_fanout(url: str, n: int) -> float:
    import nats
    from nats.js import api

    name = f"BENCHEV_{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[f"{name}.>"], retention="interest",
                        storage="file")
    subs = []
    for group in range(4):
        await js.add_consumer(name, config=api.ConsumerConfig(
            durable_name=f"g{group}", ack_policy="explicit", filter_subject=f"{name}.*",
            max_ack_pending=100_000))
        subs.append(await js.pull_subscribe_bind(f"g{group}", name))
    start = time.perf_counter()
    await asyncio.gather(_nats_produce(js, f"{name}.created", n),
                         *(_nats_consume(sub, n) for sub in subs))
    rate = 4 * n / (time.perf_counter() - start)
    await js.delete_stream(name)
    await nc.close()
    return rate


async def redis_round_trip(url: str, n: int) -> float:
    import redis.asyncio as aioredis

    key = f"bench:{uuid.uuid4().hex[:8]}"
    r = aioredis.from_url(url)
    await r.xgroup_create(key, "g", id="0", mkstream=True)
    start = time.perf_counter()

    async def consume() -> None:
        got = 0
        while got < n:
            reply = await r.xreadgroup("g", "c", {key: ">"}, count=PREFETCH, block=1000)
            for _, entries in reply or []:
                for entry_id, _fields in entries:
                    async with r.pipeline(transaction=True) as pipe:
                        pipe.xack(key, "g", entry_id)
                        pipe.xdel(key, entry_id)
                        await pipe.execute()
                    got += 1

    await asyncio.gather(_redis_produce(r, key, n), consume())
    rate = n / (time.perf_counter() - start)
    await r.delete(key)
    await r.aclose()
    return rate


async def redis_fanout(url: str, n: int) -> float:
    import redis.asyncio as aioredis

    key = f"bench:ev:{uuid.uuid4().hex[:8]}"
    r = aioredis.from_url(url)
    for group in range(4):
        await r.xgroup_create(key, f"g{group}", id="0", mkstream=True)
    start = time.perf_counter()

    async def consume(group: str) -> None:
        got = 0
        while got < n:
            reply = await r.xreadgroup(group, "c", {key: ">"}, count=PREFETCH, block=1000)
            for _, entries in reply or []:
                for entry_id, _fields in entries:
                    await r.xack(key, group, entry_id)
                    got += 1

    await asyncio.gather(_redis_produce(r, key, n), *(consume(f"g{g}") for g in range(4)))
    rate = 4 * n / (time.perf_counter() - start)
    await r.delete(key)
    await r.aclose()
    return rate


async def _kafka_produce(producer: object, topic: str, n: int) -> None:
    for _ in range(n // WINDOW):
        sent = [await producer.send(topic, BODY) for _ in range(WINDOW)]  # type: ignore[attr-defined]
        await asyncio.gather(*sent)


async def _kafka_consume(bootstrap: str, topic: str, group: str, n: int) -> None:
    """A group member that commits after each batch it fetched (the Kafka way)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    got = 0
    try:
        while got < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=PREFETCH)
            got += sum(len(records) for records in batches.values())
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()


async def _kafka_run(url: str, n: int, groups: int) -> float:
    """Deliveries/s of ``n`` records produced in windows while ``groups`` groups consume."""
    from aiokafka import AIOKafkaProducer
    from kafka_clients import _create  # the client benchmark's topic maker

    bootstrap = url.removeprefix("kafka://").split("?")[0]
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    await _create(bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=1)
    await producer.start()
    try:
        start = time.perf_counter()
        await asyncio.gather(_kafka_produce(producer, topic, n), *(
            _kafka_consume(bootstrap, topic, f"g{g}-{topic}", n) for g in range(groups)))
        return groups * n / (time.perf_counter() - start)
    finally:
        await producer.stop()


async def kafka_round_trip(url: str, n: int) -> float:
    return await _kafka_run(url, n, 1)


async def kafka_fanout(url: str, n: int) -> float:
    return await _kafka_run(url, n, 4)


def start_kafka_face(tmp: str) -> tuple[object, str]:
    """A tidings serve whose Kafka face the K rows use (groups form at once)."""
    import subprocess

    from kafka import free_port, wait_port  # the Kafka benchmark's helpers

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tidings", "--data-dir", f"{tmp}/kafka",
                             "serve", "--host", "127.0.0.1", "--amqp-port", "0", "--http-port",
                             "-1", "--kafka-port", str(port), "--log-level", "WARNING",
                             "--kafka-group-initial-rebalance-delay-ms", "0"],
                            stdout=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, f"kafka://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="N1,N2,R1,R2,K1,K2,ALL")
    parser.add_argument("--kafka", default="", help="kafka://host:port (default: the Kafka "
                        "face of a tidings serve started here)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rabbitmq", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--json", action="store_true", help="one JSON line of every figure")
    args = parser.parse_args()
    n = 2_000 if args.quick else 10_000
    only = set(args.only.split(","))
    figures: dict[str, float] = {}

    def run(label: str, make: object) -> float:
        rate = best(make, args.repeats)  # type: ignore[arg-type]
        figures[label] = rate
        return rate

    kafka_server = None
    kafka_url = args.kafka
    if not kafka_url and only & {"K1", "K2", "ALL"}:
        kafka_dir = tempfile.TemporaryDirectory()
        kafka_server, kafka_url = start_kafka_face(kafka_dir.name)
    pairs = (("N1", "round trip", args.nats, nats_round_trip, tidings_round_trip),
             ("N2", "fan-out x4", args.nats, nats_fanout, tidings_fanout),
             ("R1", "round trip", args.redis, redis_round_trip, tidings_round_trip),
             ("R2", "fan-out x4", args.redis, redis_fanout, tidings_fanout),
             ("K1", "round trip", kafka_url, kafka_round_trip, tidings_round_trip),
             ("K2", "fan-out x4", kafka_url, kafka_fanout, tidings_fanout))
    for code, what, url, raw, ours in pairs:
        if code not in only:
            continue
        if not _reachable(url):
            print(f"{code}: {url} is not reachable; skipped")
            continue
        peer = {"nats": "nats-py", "redi": "redis-py", "kafk": "aiokafka"}[url[:4]]
        theirs = run(f"{code} {peer}", lambda u=url, f=raw: f(u, n))
        mine = run(f"{code} tidings", lambda u=url, f=ours: f(u, n))
        print(f"{code} {what:11} {peer:9} {theirs:9,.0f} msg/s   tidings {mine:9,.0f} msg/s"
              f"   {mine / theirs:.2f}x")
    if "ALL" in only:
        with tempfile.TemporaryDirectory() as tmp:
            server, serve_url = start_tidings(tmp)
            try:
                urls = [("memory://", "memory://"), ("data directory", f"{tmp}/data"),
                        ("amqp:// tidings serve", serve_url),
                        ("amqp:// RabbitMQ", args.rabbitmq), ("nats://", args.nats),
                        ("redis://", args.redis), ("kafka://", kafka_url)]
                print(f"\n{'transport':24} {'round trip':>12} {'fan-out x4':>12}   (msg/s)")
                for label, url in urls:
                    if "://" in url and not url.startswith("memory") and not _reachable(url):
                        print(f"{label:24} not reachable")
                        continue
                    trip = run(f"ALL {label} round trip", lambda u=url: tidings_round_trip(u, n))
                    fan = run(f"ALL {label} fan-out", lambda u=url: tidings_fanout(u, n))
                    print(f"{label:24} {trip:12,.0f} {fan:12,.0f}")
            finally:
                server.terminate()
                server.wait()
    if kafka_server is not None:
        kafka_server.terminate()  # type: ignore[attr-defined]
        kafka_server.wait()  # type: ignore[attr-defined]
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
