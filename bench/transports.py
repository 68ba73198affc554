"""The tidings client across processes: what its abstraction costs, and how it scales.

    python bench/transports.py            # T1-T4
    python bench/transports.py --quick    # smaller counts
    python bench/transports.py --only T1,T4

T1 durable round trip: 256 B persistent messages, sends confirmed in windows of 100 (the
   confirms of a window pipelined), one consumer with prefetch 100 acking each message. The
   tidings client over amqp:// against raw aio-pika and FastStream's RabbitBroker doing the same
   work, on a tidings serve started here and on the RabbitMQ at --rabbitmq. On RabbitMQ every
   side uses quorum queues (what the tidings client declares for a durable queue there).
T2 fan-out to four groups: events published to a topic exchange in confirmed windows of 100,
   four queues bound, one consumer on each; deliveries/s until all four have everything.
T3 shared data directory: the same round trip as T1 through tidings.connect("DIR") in the
   process that owns DIR, and in a process that reaches DIR through its owner's socket.
T4 tidings worker with 1 and 2 processes on an I/O-bound task (5 ms sleep), against
   tidings serve: tasks/s from the first call enqueued to the last one finished.

Peers and tidings run in the same run; ratios are printed beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BODY = b"x" * 256
WINDOW = 100
PREFETCH = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_tidings(tmp: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tidings", "--data-dir", f"{tmp}/serve",
                             "serve", "--host", "127.0.0.1", "--amqp-port", str(port),
                             "--http-port", "-1", "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc, f"amqp://guest:guest@127.0.0.1:{port}/"


def queue_arguments(url: str, rabbitmq: str | None) -> dict[str, Any]:
    return {"x-queue-type": "quorum"} if url == rabbitmq else {}


# -- T1: durable round trip ---------------------------------------------------------------------


async def tidings_round_trip(url: str, n: int) -> float:
    import tidings

    q = f"bench-{uuid.uuid4().hex[:8]}"
    async with tidings.connect(url) as client:
        await client.declare_queue(q, delivery_limit=None, dead_letters=False)
        start = time.perf_counter()

        async def produce() -> None:
            for _ in range(n // WINDOW):
                await asyncio.gather(*(client.send(q, BODY) for _ in range(WINDOW)))

        async def consume() -> None:
            got = 0
            async with client.receive(q, prefetch=PREFETCH) as messages:
                async for message in messages:
                    await message.ack()
                    got += 1
                    if got == n:
                        break

        await asyncio.gather(produce(), consume())
        rate = n / (time.perf_counter() - start)
        await client.purge(q)
        return rate


async def aio_pika_round_trip(url: str, n: int, args: dict[str, Any]) -> float:
    import aio_pika

    q = f"bench-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        consumer_channel = await connection.channel()
        await consumer_channel.set_qos(prefetch_count=PREFETCH)
        queue = await consumer_channel.declare_queue(q, durable=True, arguments=args)
        done = asyncio.Event()
        got = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal got
            await message.ack()
            got += 1
            if got == n:
                done.set()

        start = time.perf_counter()
        tag = await queue.consume(on_message)
        for _ in range(n // WINDOW):
            await asyncio.gather(*(channel.default_exchange.publish(
                aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=q) for _ in range(WINDOW)))
        await done.wait()
        rate = n / (time.perf_counter() - start)
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        return rate


async def faststream_round_trip(url: str, n: int, args: dict[str, Any]) -> float:
    from faststream.rabbit import RabbitBroker, RabbitQueue

    q = RabbitQueue(f"bench-{uuid.uuid4().hex[:8]}", durable=True, arguments=args)
    broker = RabbitBroker(url, logger=None)
    done = asyncio.Event()
    got = 0

    @broker.subscriber(q)  # type: ignore[misc]
    async def handle(body: bytes) -> None:
        nonlocal got
        got += 1
        if got == n:
            done.set()

    async with broker:
        await broker.start()
        start = time.perf_counter()
        for _ in range(n // WINDOW):
            await asyncio.gather(*(broker.publish(BODY, queue=q, persist=True)
                                   for _ in range(WINDOW)))
        await done.wait()
        return n / (time.perf_counter() - start)


# -- T2: fan-out to four groups --------------------------------------------------------------------


async def tidings_fanout(url: str, n: int) -> float:
    import tidings

    topic, got, done = uuid.uuid4().hex[:8], [0], asyncio.Event()
    async with tidings.connect(url) as client:
        for group in range(4):
            @client.subscribe(f"{topic}.*", group=f"g{group}-{topic}", prefetch=PREFETCH)
            async def handle(event: Any) -> None:
                got[0] += 1
                if got[0] == 4 * n:
                    done.set()

        await client.start()
        start = time.perf_counter()
        for _ in range(n // WINDOW):
            await asyncio.gather(*(client.publish(f"{topic}.created", BODY)
                                   for _ in range(WINDOW)))
        await done.wait()
        return 4 * n / (time.perf_counter() - start)


async def aio_pika_fanout(url: str, n: int, args: dict[str, Any]) -> float:
    import aio_pika

    topic, got, done = uuid.uuid4().hex[:8], [0], asyncio.Event()
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(f"bench-{topic}", "topic", durable=True)
        queues = []
        for group in range(4):
            consumer = await connection.channel()
            await consumer.set_qos(prefetch_count=PREFETCH)
            queue = await consumer.declare_queue(f"g{group}-{topic}", durable=True,
                                                 arguments=args)
            await queue.bind(f"bench-{topic}", f"{topic}.*")

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                await message.ack()
                got[0] += 1
                if got[0] == 4 * n:
                    done.set()

            queues.append((queue, await queue.consume(on_message)))
        start = time.perf_counter()
        for _ in range(n // WINDOW):
            await asyncio.gather(*(exchange.publish(
                aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=f"{topic}.created") for _ in range(WINDOW)))
        await done.wait()
        rate = 4 * n / (time.perf_counter() - start)
        for queue, tag in queues:
            await queue.cancel(tag)
            await queue.delete(if_unused=False, if_empty=False)
        return rate


async def faststream_fanout(url: str, n: int, args: dict[str, Any]) -> float:
    from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

    topic, got, done = uuid.uuid4().hex[:8], [0], asyncio.Event()
    exchange = RabbitExchange(f"bench-{topic}", type=ExchangeType.TOPIC, durable=True)
    broker = RabbitBroker(url, logger=None)
    for group in range(4):
        @broker.subscriber(RabbitQueue(f"g{group}-{topic}", durable=True, arguments=args,  # type: ignore[misc]
                                       routing_key=f"{topic}.*"), exchange)
        async def handle(body: bytes) -> None:
            got[0] += 1
            if got[0] == 4 * n:
                done.set()

    async with broker:
        await broker.start()
        start = time.perf_counter()
        for _ in range(n // WINDOW):
            await asyncio.gather(*(broker.publish(BODY, exchange=exchange,
                                                  routing_key=f"{topic}.created", persist=True)
                                   for _ in range(WINDOW)))
        await done.wait()
        return 4 * n / (time.perf_counter() - start)


# -- T3: shared directory ------------------------------------------------------------------------

HOLD = """
import asyncio, sys, tidings
async def main():
    async with tidings.connect(sys.argv[1]):
        print("owner", flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""


async def shared_directory(tmp: str, n: int) -> tuple[float, float]:
    owned = await tidings_round_trip(f"{tmp}/owned", n)
    owner = subprocess.Popen([sys.executable, "-c", HOLD, f"{tmp}/shared"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        owner.stdout.readline()
        joined = await tidings_round_trip(f"{tmp}/shared", n)
    finally:
        owner.send_signal(signal.SIGTERM)
        owner.wait()
    return owned, joined


# -- T4: tidings worker ------------------------------------------------------------------------

WORKER_APP = """
import asyncio, os, tidings
client = tidings.connect(os.environ["BENCH_URL"])

@client.task(queue=os.environ["BENCH_QUEUE"])
async def io_bound(i: int) -> None:
    await asyncio.sleep(0.005)
"""


async def worker_rate(url: str, tmp: str, n: int, processes: int) -> float:
    import tidings

    queue = f"io-{uuid.uuid4().hex[:8]}"
    app = Path(tmp) / "bench_worker_app.py"
    app.write_text(WORKER_APP)
    env = {**os.environ, "BENCH_URL": url, "BENCH_QUEUE": queue, "PYTHONPATH": tmp}
    async with tidings.connect(url) as client:
        await client.declare_queue(queue)
        worker = subprocess.Popen([sys.executable, "-m", "tidings", "worker",
                                   "bench_worker_app:client", "--processes", str(processes),
                                   "--log-level", "WARNING"], env=env, cwd=tmp)
        try:
            await asyncio.sleep(3)  # the processes are up and consuming
            call = {"task": "bench_worker_app.io_bound", "args": [0], "kwargs": {}}
            start = time.perf_counter()
            for _ in range(n // WINDOW):
                await client.send_many(queue, [call] * WINDOW,
                                       headers={"task": "bench_worker_app.io_bound"})
            while True:
                q = (await client.statistics()).queue(queue)
                if q.ready == 0 and q.consumers and await _idle(client, queue):
                    break
                await asyncio.sleep(0.02)
            return n / (time.perf_counter() - start)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait()


async def _idle(client: Any, queue: str) -> bool:
    """Nothing ready; over AMQP unacked calls are not counted, so wait out one task's time."""
    await asyncio.sleep(0.01)
    return (await client.statistics()).queue(queue).ready == 0


# -- driver -----------------------------------------------------------------------------------


def best(run: Callable[[], Awaitable[float]], repeats: int) -> float:
    return max(asyncio.run(run()) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="T1,T2,T3,T4")
    parser.add_argument("--quick", action="store_true", help="smaller counts, one repeat")
    parser.add_argument("--rabbitmq", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()
    groups = set(args.only.split(","))
    n = 2_000 if args.quick else 10_000
    repeats = 1 if args.quick else 3
    print(f"tidings client benchmarks on {os.cpu_count()} cores, Python "
          f"{sys.version.split()[0]} (best of {repeats})")
    with tempfile.TemporaryDirectory() as tmp:
        server, serve_url = start_tidings(tmp)
        try:
            brokers = [("tidings serve", serve_url)]
            if _reachable(args.rabbitmq):
                brokers.append(("RabbitMQ", args.rabbitmq))
            for label, work in (("T1 round trip", "round_trip"), ("T2 fan-out x4", "fanout")):
                if label[:2] not in groups:
                    continue
                for broker, url in brokers:
                    qargs = queue_arguments(url, args.rabbitmq)
                    ours = best(lambda u=url, w=work: globals()[f"tidings_{w}"](u, n), repeats)
                    pika = best(lambda u=url, w=work, a=qargs:
                                globals()[f"aio_pika_{w}"](u, n, a), repeats)
                    fast = best(lambda u=url, w=work, a=qargs:
                                globals()[f"faststream_{w}"](u, n, a), repeats)
                    print(f"{label} on {broker:<14} tidings {ours:>8,.0f}/s  aio-pika "
                          f"{pika:>8,.0f}/s  FastStream {fast:>8,.0f}/s   "
                          f"{ours / pika:.2f}x aio-pika, {ours / fast:.2f}x FastStream")
            if "T3" in groups:
                rates = [asyncio.run(shared_directory(f"{tmp}/t3-{i}", n))
                         for i in range(repeats)]
                owned, joined = max(r[0] for r in rates), max(r[1] for r in rates)
                print(f"T3 shared dir   owner {owned:>8,.0f}/s  through the owner "
                      f"{joined:>8,.0f}/s   {joined / owned:.2f}x the owner's path")
            if "T4" in groups:
                one = best(lambda: worker_rate(serve_url, tmp, n, 1), 1)
                two = best(lambda: worker_rate(serve_url, tmp, n, 2), 1)
                print(f"T4 worker       1 process {one:>8,.0f}/s  2 processes {two:>8,.0f}/s  "
                      f"{two / one:.2f}x")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait()


def _reachable(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 5672), timeout=2).close()
    except OSError:
        print(f"RabbitMQ not reachable at {parts.hostname}:{parts.port}: tidings serve only")
        return False
    return True


if __name__ == "__main__":
    main()
