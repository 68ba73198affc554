"""AMQP benchmarks: the same client library against tidings serve and against RabbitMQ.

    python bench/amqp.py                 # A1-A5
    python bench/amqp.py --only A1,A4    # some of them
    python bench/amqp.py --rabbitmq amqp://guest:guest@127.0.0.1:5672/

A1 pika BlockingConnection: persistent messages, publisher confirms; consumer with manual ack
   and prefetch 200 (producer and consumer in separate processes).
A2 aio-pika: confirms awaited in windows of 100; and a transient variant without confirms.
A3 fan-out: one publisher, a fanout exchange, four consumers (deliveries/s).
A4 latency: 2,000 messages/s for 10 s, publish -> deliver p50 / p99 / p99.9.
A5 idle connections plus one busy pair: server RSS and the pair's rate. The issue asks for
   1,000; the RabbitMQ on this machine runs with a 1,024 file-descriptor limit and raises its
   fd alarm (blocking every publisher) near 1,000 connections, so the default is 800 for
   both (``--idle`` changes it).

tidings runs as a real ``tidings serve`` on a free port with a fresh data directory; RabbitMQ
is the one already running. Server CPU time per message is read from /proc for both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tidings.resources import rss_mb

BODY = b"x" * 256
ROOT = Path(__file__).resolve().parent.parent


# -- workers (run in their own processes) -----------------------------------------------------


def a1_produce(url: str, queue: str, n: int) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    for _ in range(n):
        ch.basic_publish("", queue, BODY, props)
    conn.close()


def a1_consume(url: str, queue: str, n: int) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=200)
    got = 0

    def on_message(c: Any, method: Any, props: Any, body: bytes) -> None:
        nonlocal got
        got += 1
        ch.basic_ack(method.delivery_tag)
        if got == n:
            ch.stop_consuming()

    ch.basic_consume(queue, on_message)
    ch.start_consuming()
    conn.close()


WORKERS = {"a1-produce": a1_produce, "a1-consume": a1_consume}


# -- helpers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rabbitmq_pid() -> int | None:
    out = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True,
                         check=False)
    pids = [int(p) for p in out.stdout.split()]
    return max(pids, key=rss_mb) if pids else None


async def declare(url: str, queue: str, durable: bool = True) -> None:
    import aio_pika

    async with await aio_pika.connect(url) as conn:
        channel = await conn.channel()
        await channel.declare_queue(queue, durable=durable)


async def delete(url: str, *queues: str) -> None:
    import aio_pika

    async with await aio_pika.connect(url) as conn:
        channel = await conn.channel()
        for q in queues:
            await channel.queue_delete(q)


# -- workloads --------------------------------------------------------------------------------


def run_a1(url: str, n: int) -> dict[str, float]:
    queue = f"bench-a1-{uuid.uuid4().hex[:6]}"
    asyncio.run(declare(url, queue))
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", w, "--url", url,
                               "--queue", queue, "--n", str(n)])
             for w in ("a1-consume", "a1-produce")]
    for p in procs:
        p.wait()
    elapsed = time.perf_counter() - start
    asyncio.run(delete(url, queue))
    return {"rate": n / elapsed}


async def run_a2(url: str, n: int, confirms: bool) -> dict[str, float]:
    import aio_pika

    queue_name = f"bench-a2-{uuid.uuid4().hex[:6]}"
    producer = await aio_pika.connect(url)
    consumer = await aio_pika.connect(url)
    pch = await producer.channel(publisher_confirms=confirms)
    cch = await consumer.channel()
    await cch.set_qos(prefetch_count=200)
    queue = await cch.declare_queue(queue_name, durable=True)
    mode = aio_pika.DeliveryMode.PERSISTENT if confirms else aio_pika.DeliveryMode.NOT_PERSISTENT
    done = asyncio.Event()
    got = 0

    async def on_message(message: Any) -> None:
        nonlocal got
        await message.ack()
        got += 1
        if got == n:
            done.set()

    await queue.consume(on_message)
    start = time.perf_counter()
    for i in range(0, n, 100):
        batch = [pch.default_exchange.publish(aio_pika.Message(BODY, delivery_mode=mode),
                                              queue_name) for _ in range(min(100, n - i))]
        await asyncio.gather(*batch)
    await done.wait()
    elapsed = time.perf_counter() - start
    await queue.delete(if_unused=False, if_empty=False)
    await producer.close()
    await consumer.close()
    return {"rate": n / elapsed}


async def run_a3(url: str, n: int) -> dict[str, float]:
    import aio_pika

    exchange_name = f"bench-a3-{uuid.uuid4().hex[:6]}"
    publisher = await aio_pika.connect(url)
    pch = await publisher.channel()
    exchange = await pch.declare_exchange(exchange_name, aio_pika.ExchangeType.FANOUT,
                                          auto_delete=True)
    conns, total, done = [], 0, asyncio.Event()

    async def on_message(message: Any) -> None:
        nonlocal total
        await message.ack()
        total += 1
        if total == 4 * n:
            done.set()

    for _ in range(4):
        conn = await aio_pika.connect(url)
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=200)
        queue = await ch.declare_queue(exclusive=True)
        await queue.bind(exchange)
        await queue.consume(on_message)
        conns.append(conn)
    start = time.perf_counter()
    for i in range(0, n, 100):
        await asyncio.gather(*(exchange.publish(aio_pika.Message(BODY), "")
                               for _ in range(min(100, n - i))))
        await asyncio.sleep(0)
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - start
    for conn in [*conns, publisher]:
        await conn.close()
    return {"rate": 4 * n / elapsed}


async def run_a4(url: str, rate: int = 2000, seconds: float = 10.0) -> dict[str, float]:
    import aio_pika

    queue_name = f"bench-a4-{uuid.uuid4().hex[:6]}"
    conn = await aio_pika.connect(url)
    cconn = await aio_pika.connect(url)
    pch = await conn.channel()
    cch = await cconn.channel()
    await cch.set_qos(prefetch_count=200)
    queue = await cch.declare_queue(queue_name, durable=True)
    latencies: list[float] = []
    n = int(rate * seconds)
    done = asyncio.Event()

    async def on_message(message: Any) -> None:
        latencies.append(time.perf_counter() - float(message.body))
        await message.ack()
        if len(latencies) == n:
            done.set()

    await queue.consume(on_message)
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await pch.default_exchange.publish(
            aio_pika.Message(repr(time.perf_counter()).encode()), queue_name)
    await asyncio.wait_for(done.wait(), 60)
    await queue.delete(if_unused=False, if_empty=False)
    await conn.close()
    await cconn.close()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {"rate": n / (time.perf_counter() - start), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "p999_ms": pct(0.999)}


async def idle_connection(host: str, port: int) -> asyncio.StreamWriter:
    from pamqp import commands, frame

    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"AMQP\x00\x00\x09\x01")
    await reader.read(4096)  # connection.start
    writer.write(frame.marshal(commands.Connection.StartOk(
        {}, "PLAIN", "\x00guest\x00guest"), 0))
    await reader.read(4096)  # connection.tune
    writer.write(frame.marshal(commands.Connection.TuneOk(2047, 131072, 0), 0))
    writer.write(frame.marshal(commands.Connection.Open("/"), 0))
    await reader.read(4096)  # connection.open-ok
    return writer


async def run_a5(url: str, pid: int | None, idle: int = 1000, n: int = 20_000
                 ) -> dict[str, float]:
    host, port = url.split("@")[1].split("/")[0].split(":")
    writers = []
    for i in range(0, idle, 100):
        writers += await asyncio.gather(*(idle_connection(host, int(port))
                                          for _ in range(min(100, idle - i))))
    await asyncio.sleep(1)
    rss = rss_mb(pid) if pid else 0.0
    busy = await asyncio.wait_for(run_a2(url, n, confirms=False), 120)
    for w in writers:
        w.close()
    return {"rate": busy["rate"], "rss_mb": rss}


# -- driver -----------------------------------------------------------------------------------


def start_tidings(tmp: str, loop: str = "auto", env: dict[str, str] | None = None
                  ) -> tuple[subprocess.Popen[str], str]:
    """``env``: more environment for the server (a keyring, say)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tidings", "--data-dir", f"{tmp}/data",
                             "serve", "--host", "127.0.0.1", "--amqp-port", str(port),
                             "--http-port", "-1", "--loop", loop,
                             "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc, f"amqp://guest:guest@127.0.0.1:{port}/"


def measure(name: str, url: str, pid: int | None, work: Any, messages: int) -> dict[str, Any]:
    cpu0 = cpu_seconds(pid) if pid else 0.0
    result = work()
    if pid:
        result["cpu_us_per_msg"] = (cpu_seconds(pid) - cpu0) / max(messages, 1) * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="A1,A2,A3,A4,A5")
    parser.add_argument("--rabbitmq", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--idle", type=int, default=800, help="A5 idle connections")
    parser.add_argument("--loop", default="auto", choices=["auto", "uvloop", "asyncio"],
                        help="tidings serve's event loop")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        WORKERS[args.worker](args.url, args.queue, args.n)
        return
    q = 5 if args.quick else 1
    only = {x.strip().upper() for x in args.only.split(",")}
    with tempfile.TemporaryDirectory(prefix="tidings-amqp-bench-") as tmp:
        proc, tidings_url = start_tidings(tmp, args.loop)
        targets = [("tidings", tidings_url, proc.pid), ("rabbitmq", args.rabbitmq, rabbitmq_pid())]
        rows: dict[str, dict[str, dict[str, Any]]] = {}
        plan: list[tuple[str, Any, int]] = []
        if "A1" in only:
            plan.append(("A1 pika durable confirms", lambda u: run_a1(u, 5000 // q), 5000 // q))
        if "A2" in only:
            plan.append(("A2 aio-pika durable confirms",
                         lambda u: asyncio.run(run_a2(u, 20000 // q, True)), 20000 // q))
            plan.append(("A2 aio-pika transient",
                         lambda u: asyncio.run(run_a2(u, 20000 // q, False)), 20000 // q))
        if "A3" in only:
            plan.append(("A3 fanout x4 (deliveries/s)",
                         lambda u: asyncio.run(run_a3(u, 10000 // q)), 40000 // q))
        if "A4" in only:
            plan.append(("A4 latency 2000/s", lambda u: asyncio.run(run_a4(u, 2000, 10 / q)),
                         int(20000 / q)))
        try:
            for title, work, messages in plan:
                rows[title] = {}
                for name, url, pid in targets:
                    rows[title][name] = measure(name, url, pid, lambda w=work, u=url: w(u),
                                                messages)
            if "A5" in only:
                title = f"A5 {args.idle // q} idle conns + busy pair"
                rows[title] = {name: asyncio.run(run_a5(url, pid, args.idle // q, 20000 // q))
                               for name, url, pid in targets}
        finally:
            proc.terminate()
            proc.wait()
    print(json.dumps(rows, indent=1), file=sys.stderr)
    print(f"{'workload':<34}{'tidings':>12}{'rabbitmq':>12}{'ratio':>8}  extra")
    for title, r in rows.items():
        t, m = r["tidings"], r["rabbitmq"]
        extra = ", ".join(f"{k} {t[k]:.2f} vs {m.get(k, float('nan')):.2f}"
                          for k in t if k != "rate")
        print(f"{title:<34}{t['rate']:>12,.0f}{m['rate']:>12,.0f}{t['rate'] / m['rate']:>8.2f}"
              f"  {extra}")


if __name__ == "__main__":
    main()
