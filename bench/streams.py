"""Stream benchmarks: append with confirms, then read everything from the start, for records of
256 bytes and 4 KB, on tidings and on the peers in the same run.

    python bench/streams.py                # full sizes, every peer, then the 2 GB read
    python bench/streams.py --quick        # smaller counts, a 128 MB read
    python bench/streams.py --big-mb 0     # no big read

Targets:

- tidings serve, a stream queue over AMQP with aio-pika (confirms awaited in windows of 100;
  a consumer with x-stream-offset "first", prefetch 1,000, acks every 500);
- RabbitMQ's stream queues, the same aio-pika code against the RabbitMQ on this machine;
- Redis Streams on a redis-server of its own with appendonly yes and appendfsync always
  (XADD pipelined 100 at a time; XREAD COUNT 1000 from 0);
- NATS JetStream, a file-storage stream on the NATS on this machine (js.publish awaited in
  windows of 100; a pull consumer fetching 1,000 at a time);
- embedded tidings in this process (``client.append_many`` of 100, ``client.read``);
- both tidings again with encryption at rest on (``+enc``: a keyring in
  ``TIDINGS_ENCRYPTION_KEY``; every segment sealed), for the cost of encryption in the same
  run.

Then the big read: the chosen number of megabytes of 4 KB records appended to tidings serve
and read from the start by one consumer while the server's RSS is sampled: it should stay
flat (the stream is read through a bounded read-ahead, never loaded).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from tidings.resources import rss_mb

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("amqp_bench", ROOT / "bench" / "amqp.py")
assert _spec and _spec.loader
amqp_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(amqp_bench)

WINDOW = 100
#: The keyring of the encrypted contenders (a fixed bench key: nothing secret here).
BENCH_KEYRING = "bench:" + "A" * 43 + "="
Result = dict[str, float]


# -- AMQP (tidings serve and RabbitMQ, the same code) -----------------------------------------


async def amqp_append(url: str, stream: str, n: int, size: int) -> Result:
    import aio_pika

    body = b"s" * size
    async with await aio_pika.connect(url) as conn:
        channel = await conn.channel(publisher_confirms=True)
        await channel.declare_queue(stream, durable=True,
                                    arguments={"x-queue-type": "stream"})
        t0 = time.perf_counter()
        for start in range(0, n, WINDOW):
            await asyncio.gather(*[
                channel.default_exchange.publish(aio_pika.Message(body), stream)
                for _ in range(min(WINDOW, n - start))])
        return {"rate": n / (time.perf_counter() - t0)}


async def amqp_read(url: str, stream: str, n: int) -> Result:
    import aio_pika

    async with await aio_pika.connect(url) as conn:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.get_queue(stream, ensure=False)
        done = asyncio.Event()
        seen = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen
            seen += 1
            if seen % 500 == 0 or seen == n:
                await message.ack(multiple=True)
            if seen == n:
                done.set()

        t0 = time.perf_counter()
        tag = await queue.consume(on_message, arguments={"x-stream-offset": "first"})
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - t0
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        return {"rate": n / elapsed}


# -- Redis Streams, AOF always ---------------------------------------------------------------


def start_redis(tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    port = amqp_bench.free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--dir", tmp,
                             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    import redis

    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


async def redis_append(url: str, stream: str, n: int, size: int) -> Result:
    import redis.asyncio as aredis

    r = aredis.from_url(url)
    body = b"s" * size
    t0 = time.perf_counter()
    for start in range(0, n, WINDOW):
        pipe = r.pipeline(transaction=False)
        for _ in range(min(WINDOW, n - start)):
            pipe.xadd(stream, {"b": body})
        await pipe.execute()
    rate = n / (time.perf_counter() - t0)
    await r.aclose()
    return {"rate": rate}


async def redis_read(url: str, stream: str, n: int) -> Result:
    import redis.asyncio as aredis

    r = aredis.from_url(url)
    seen, last = 0, "0"
    t0 = time.perf_counter()
    while seen < n:
        found = await r.xread({stream: last}, count=1000)
        for _, entries in found:
            seen += len(entries)
            last = entries[-1][0]
    rate = n / (time.perf_counter() - t0)
    await r.delete(stream)
    await r.aclose()
    return {"rate": rate}


# -- NATS JetStream, file storage -------------------------------------------------------------


async def nats_append(url: str, stream: str, n: int, size: int) -> Result:
    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[stream],
                                     storage=StorageType.FILE))
    body = b"s" * size
    t0 = time.perf_counter()
    for start in range(0, n, WINDOW):
        await asyncio.gather(*[js.publish(stream, body)
                               for _ in range(min(WINDOW, n - start))])
    rate = n / (time.perf_counter() - t0)
    await nc.close()
    return {"rate": rate}


async def nats_read(url: str, stream: str, n: int) -> Result:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(stream, stream=stream, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL))
    seen = 0
    t0 = time.perf_counter()
    while seen < n:
        seen += len(await sub.fetch(min(1000, n - seen), timeout=30))
    rate = n / (time.perf_counter() - t0)
    await js.delete_stream(stream)
    await nc.close()
    return {"rate": rate}


# -- embedded tidings ---------------------------------------------------------------------------


async def embedded(directory: str, stream: str, n: int, size: int,
                   keyring: str | None = None) -> tuple[Result, Result]:
    import tidings

    body = b"s" * size
    if keyring:  # the embedded store takes its keyring from the environment
        os.environ["TIDINGS_ENCRYPTION_KEY"] = keyring
    else:
        os.environ.pop("TIDINGS_ENCRYPTION_KEY", None)
    async with tidings.connect(directory) as client:
        await client.stream(stream)
        t0 = time.perf_counter()
        for start in range(0, n, WINDOW):
            await client.append_many(stream, [body] * min(WINDOW, n - start))
        append = {"rate": n / (time.perf_counter() - t0)}
        seen = 0
        t0 = time.perf_counter()
        async with client.read(stream, start="first", prefetch=1000) as records:
            async for _ in records:
                seen += 1
                if seen == n:
                    break
        read = {"rate": n / (time.perf_counter() - t0)}
    return append, read


# -- the big read -------------------------------------------------------------------------------


async def big_read(url: str, pid: int, megabytes: int) -> dict[str, float]:
    stream = f"big-{uuid.uuid4().hex[:6]}"
    n = megabytes * 256  # 4 KB records
    appended = await amqp_append(url, stream, n, 4096)
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss_mb(pid))
            time.sleep(0.25)

    before = rss_mb(pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    read = await amqp_read(url, stream, n)
    stop.set()
    sampler.join()
    return {"megabytes": megabytes, "append_rate": appended["rate"],
            "read_rate": read["rate"], "rss_before_mb": before,
            "rss_peak_mb": max(samples, default=before), "rss_after_mb": rss_mb(pid)}


def nats_pid() -> int | None:
    out = subprocess.run(["pgrep", "-x", "nats-server"], capture_output=True, text=True,
                         check=False)
    pids = [int(p) for p in out.stdout.split()]
    return max(pids, key=rss_mb) if pids else None


def server_cpu(pid: int | None, n: int, work: Awaitable[Result]) -> Result:
    """``work``'s result with the server's CPU microseconds per record (from /proc)."""
    before = amqp_bench.cpu_seconds(pid) if pid else 0.0
    result = asyncio.run(work)  # type: ignore[arg-type]
    if pid:
        result["server_cpu_us"] = (amqp_bench.cpu_seconds(pid) - before) / n * 1e6
    return result


# -- the run ----------------------------------------------------------------------------------


def _ratio(rows: dict[str, dict[str, float]], title: str, a: str, b: str) -> float:
    return rows[f"{title}|{a}"]["rate"] / rows[f"{title}|{b}"]["rate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rabbitmq", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--big-mb", type=int, default=None,
                        help="megabytes for the big read (default 2048, 128 with --quick)")
    args = parser.parse_args()
    q = 4 if args.quick else 1
    big = args.big_mb if args.big_mb is not None else (128 if args.quick else 2048)
    sizes = [(256, 40_000 // q), (4096, 10_000 // q)]
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="tidings-stream-bench-") as tmp:
        serve, serve_url = amqp_bench.start_tidings(tmp)
        sealed, sealed_url = amqp_bench.start_tidings(
            f"{tmp}/sealed", env={"TIDINGS_ENCRYPTION_KEY": BENCH_KEYRING})
        redis_proc, redis_url = start_redis(tmp)
        peers: list[tuple[str, Callable[..., Awaitable[Result]],
                          Callable[..., Awaitable[Result]], str, int | None]] = [
            ("tidings serve", amqp_append, amqp_read, serve_url, serve.pid),
            ("serve +enc", amqp_append, amqp_read, sealed_url, sealed.pid),
            ("rabbitmq", amqp_append, amqp_read, args.rabbitmq, amqp_bench.rabbitmq_pid()),
            ("redis aof", redis_append, redis_read, redis_url, redis_proc.pid),
            ("nats file", nats_append, nats_read, args.nats, nats_pid()),
        ]
        try:
            for size, n in sizes:
                for name, append, read, url, pid in peers:
                    stream = f"bench-{size}-{uuid.uuid4().hex[:6]}"
                    rows[f"append {size} B|{name}"] = server_cpu(
                        pid, n, append(url, stream, n, size))
                    rows[f"read {size} B|{name}"] = server_cpu(pid, n, read(url, stream, n))
                a, r = asyncio.run(embedded(f"{tmp}/embedded", f"e-{size}", n, size))
                rows[f"append {size} B|tidings embedded"] = a
                rows[f"read {size} B|tidings embedded"] = r
                a, r = asyncio.run(embedded(f"{tmp}/embedded-sealed", f"e-{size}", n, size,
                                            BENCH_KEYRING))
                rows[f"append {size} B|embedded +enc"] = a
                rows[f"read {size} B|embedded +enc"] = r
            big_result = asyncio.run(big_read(serve_url, serve.pid, big)) if big else None
        finally:
            for proc in (serve, sealed):
                proc.terminate()
                proc.wait()
            redis_proc.terminate()
            redis_proc.wait()
    print(json.dumps({"rows": rows, "big": big_result}, indent=1), file=sys.stderr)
    names = ["tidings serve", "serve +enc", "tidings embedded", "embedded +enc", "rabbitmq",
             "redis aof", "nats file"]
    print(f"{'records/s':<18}" + "".join(f"{n:>17}" for n in names)
          + "   serve vs rabbitmq / redis / nats")
    for title in dict.fromkeys(k.split("|")[0] for k in rows):
        rates = {n: rows[f"{title}|{n}"]["rate"] for n in names}
        ratios = " / ".join(f"{rates['tidings serve'] / rates[p]:.2f}x"
                            for p in ("rabbitmq", "redis aof", "nats file"))
        print(f"{title:<18}" + "".join(f"{rates[n]:>17,.0f}" for n in names) + f"   {ratios}")
    print("embedded vs rabbitmq / redis / nats: " + "; ".join(
        f"{title} " + " / ".join(
            f"{rows[f'{title}|tidings embedded']['rate'] / rows[f'{title}|{p}']['rate']:.2f}x"
            for p in ("rabbitmq", "redis aof", "nats file"))
        for title in dict.fromkeys(k.split("|")[0] for k in rows)))
    print("server CPU µs per record, tidings serve / rabbitmq / redis / nats: " + "; ".join(
        f"{title} " + " / ".join(
            f"{rows[f'{title}|{p}'].get('server_cpu_us', float('nan')):.0f}"
            for p in ("tidings serve", "rabbitmq", "redis aof", "nats file"))
        for title in dict.fromkeys(k.split("|")[0] for k in rows)))
    print("encryption at rest, throughput with it / without it (serve; embedded): " + "; ".join(
        f"{title} {_ratio(rows, title, 'serve +enc', 'tidings serve'):.2f} / "
        f"{_ratio(rows, title, 'embedded +enc', 'tidings embedded'):.2f}"
        for title in dict.fromkeys(k.split("|")[0] for k in rows)))
    if big_result:
        b = big_result
        print(f"big read: {b['megabytes']} MB of 4 KB records read at {b['read_rate']:,.0f}/s; "
              f"tidings serve RSS {b['rss_before_mb']:.0f} MB before, peak "
              f"{b['rss_peak_mb']:.0f} MB, {b['rss_after_mb']:.0f} MB after")


if __name__ == "__main__":
    main()
