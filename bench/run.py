"""One-command benchmarks of the broker core against its peers, in the same run.

    python bench/run.py            # E1-E4 with the issue's sizes
    python bench/run.py --quick    # smaller sizes, for a smoke run
    python bench/run.py --only E1,E3

E1 durable round trip (256 B, confirms, prefetch, acks) vs persist-queue and litequeue; and
   tidings with encryption at rest on (``-encrypted``: a keyring in TIDINGS_ENCRYPTION_KEY).
E2 the same on memory:// vs asyncio.Queue (the ceiling).
E3 event fan-out to four subscriber groups vs pyee and blinker.
E4 deep queue: 2,000,000 x 1 KB enqueued then drained; rates and peak RSS.

Each scenario runs in a fresh process and a fresh temporary directory; peers use their own
crash-safe defaults. Ratios are printed against the peers measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

BODY_256 = b"x" * 256
BODY_1K = b"y" * 1024

# -- E1 / E2: round trips ---------------------------------------------------------------------


async def tidings_round_trip(url: str, n: int, *, batch: bool, window: int = 1000,
                             prefetch: int = 1000) -> float:
    import tidings

    async with tidings.connect(url) as client:
        await client.declare_queue("bench", delivery_limit=None, dead_letters=False)
        done = asyncio.Event()
        start = time.perf_counter()

        async def produce() -> None:
            sent = 0
            while sent < n:
                k = min(window, n - sent)
                if batch:
                    await client.send_many("bench", [BODY_256] * k)
                else:
                    await asyncio.gather(*(client.send("bench", BODY_256) for _ in range(k)))
                sent += k

        async def consume() -> None:
            got = 0
            async with client.receive("bench", prefetch=prefetch) as messages:
                if batch:
                    async for received in messages.batches(100):
                        await client.ack(received)
                        got += len(received)
                        if got >= n:
                            break
                else:
                    async for message in messages:
                        await message.ack()
                        got += 1
                        if got == n:
                            break
            await client.sync()
            done.set()

        await asyncio.gather(produce(), consume())
        return n / (time.perf_counter() - start)


async def asyncio_queue_round_trip(n: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)
    start = time.perf_counter()

    async def produce() -> None:
        for _ in range(n):
            await queue.put(BODY_256)

    async def consume() -> None:
        for _ in range(n):
            await queue.get()
            queue.task_done()

    await asyncio.gather(produce(), consume())
    return n / (time.perf_counter() - start)


def threaded_round_trip(put: Callable[[], None], take: Callable[[], None], n: int) -> float:
    start = time.perf_counter()
    producer = threading.Thread(target=lambda: [put() for _ in range(n)])
    producer.start()
    for _ in range(n):
        take()
    producer.join()
    return n / (time.perf_counter() - start)


def persist_queue_round_trip(directory: str, n: int) -> float:
    from persistqueue import SQLiteAckQueue

    queue = SQLiteAckQueue(directory, multithreading=True)

    def take() -> None:
        item = queue.get(block=True)
        queue.ack(item)

    return threaded_round_trip(lambda: queue.put(BODY_256), take, n)


def litequeue_round_trip(directory: str, n: int) -> float:
    from litequeue import LiteQueue

    path = os.path.join(directory, "lq.sqlite3")
    producer_q = LiteQueue(path)
    consumer_q = LiteQueue(path)
    text = BODY_256.decode()

    def take() -> None:
        while (message := consumer_q.pop()) is None:
            time.sleep(0.0005)
        consumer_q.done(message.message_id)

    return threaded_round_trip(lambda: producer_q.put(text), take, n)


# -- E3: fan-out ------------------------------------------------------------------------------


async def tidings_fanout(url: str, n: int, groups: int = 4) -> float:
    import tidings

    async with tidings.connect(url) as client:
        count = 0
        done = asyncio.Event()

        def make(group: int) -> Any:
            async def handler(event: Any) -> None:
                nonlocal count
                count += 1
                if count == n * groups:
                    done.set()

            return handler

        for g in range(groups):
            client.subscribe("orders.*", group=f"g{g}", prefetch=1000)(make(g))
        await client.start()
        start = time.perf_counter()
        sent = 0
        while sent < n:
            k = min(1000, n - sent)
            await client.publish_many("orders.created", [BODY_256] * k)
            sent += k
        await done.wait()
        return n * groups / (time.perf_counter() - start)


def pyee_fanout(n: int, groups: int = 4) -> float:
    from pyee import EventEmitter

    emitter = EventEmitter()
    count = [0]

    def handler(event: bytes) -> None:
        count[0] += 1

    for _ in range(groups):
        emitter.on("orders.created", handler)
    start = time.perf_counter()
    for _ in range(n):
        emitter.emit("orders.created", BODY_256)
    return n * groups / (time.perf_counter() - start)


def blinker_fanout(n: int, groups: int = 4) -> float:
    from blinker import Signal

    signal = Signal("orders.created")
    count = [0]
    receivers = []
    for _ in range(groups):
        def handler(sender: Any, **kw: Any) -> None:
            count[0] += 1

        receivers.append(handler)
        signal.connect(handler, weak=False)
    start = time.perf_counter()
    for _ in range(n):
        signal.send(BODY_256)
    return n * groups / (time.perf_counter() - start)


# -- E4: deep queue ---------------------------------------------------------------------------


async def tidings_deep(directory: str, n: int) -> dict[str, float]:
    import tidings

    async with tidings.connect(directory) as client:
        await client.declare_queue("deep", delivery_limit=None, dead_letters=False)
        start = time.perf_counter()
        for i in range(0, n, 5000):
            await client.send_many("deep", [BODY_1K] * min(5000, n - i))
        enqueue_s = time.perf_counter() - start
        rss_after_enqueue = peak_rss_mb()
        start = time.perf_counter()
        got = 0
        pending: list[Any] = []
        async with client.receive("deep", prefetch=2000) as messages:
            async for message in messages:
                got += 1
                pending.append(message)
                if len(pending) >= 500 or got == n:
                    await client.ack(pending)
                    pending = []
                if got == n:
                    break
        await client.sync()
        drain_s = time.perf_counter() - start
        return {"enqueue_per_s": n / enqueue_s, "drain_per_s": n / drain_s,
                "rss_after_enqueue_mb": rss_after_enqueue, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- driver -----------------------------------------------------------------------------------


def scenario(name: str, n: int) -> dict[str, Any]:
    """Run one measurement in this (fresh) process; returns its numbers."""
    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as tmp:
        if name == "tidings-durable":
            return {"rate": asyncio.run(tidings_round_trip(tmp, n, batch=False))}
        if name == "tidings-durable-batch":
            return {"rate": asyncio.run(tidings_round_trip(tmp, n, batch=True))}
        if name == "persist-queue":
            return {"rate": persist_queue_round_trip(tmp, n)}
        if name == "litequeue":
            return {"rate": litequeue_round_trip(tmp, n)}
        if name == "tidings-memory":
            return {"rate": asyncio.run(tidings_round_trip("memory://", n, batch=False))}
        if name == "tidings-memory-batch":
            return {"rate": asyncio.run(tidings_round_trip("memory://", n, batch=True))}
        if name == "asyncio.Queue":
            return {"rate": asyncio.run(asyncio_queue_round_trip(n))}
        if name == "tidings-fanout-memory":
            return {"rate": asyncio.run(tidings_fanout("memory://", n))}
        if name == "tidings-fanout-durable":
            return {"rate": asyncio.run(tidings_fanout(tmp, n))}
        if name == "pyee":
            return {"rate": pyee_fanout(n)}
        if name == "blinker":
            return {"rate": blinker_fanout(n)}
        if name == "tidings-deep":
            return asyncio.run(tidings_deep(tmp, n))
    raise SystemExit(f"unknown scenario {name!r}")


#: The keyring of the ``-encrypted`` scenarios (a fixed bench key: nothing secret here).
BENCH_KEYRING = "bench:" + "A" * 43 + "="


def run_isolated(name: str, n: int) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("TIDINGS_ENCRYPTION_KEY", None)
    if name.endswith("-encrypted"):
        name, env["TIDINGS_ENCRYPTION_KEY"] = name.removesuffix("-encrypted"), BENCH_KEYRING
    out = subprocess.run([sys.executable, __file__, "--scenario", name, "--n", str(n)],
                         capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def table(title: str, rows: list[tuple[str, int, dict[str, Any]]], base: str) -> None:
    print(f"\n{title}")
    reference = {name: r.get("rate") for name, _, r in rows}
    print(f"  {'system':<26}{'n':>10}{'msg/s':>14}  ratios")
    for name, n, r in rows:
        if "error" in r:
            print(f"  {name:<26}{n:>10}  error: {r['error']}")
            continue
        rate = r["rate"]
        ratios = ", ".join(
            f"{rate / ref:.2f}x {peer}" for peer, ref in reference.items()
            if peer != name and ref and not peer.startswith("tidings") and name.startswith(base)
        )
        print(f"  {name:<26}{n:>10}{rate:>14,.0f}  {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a smoke run")
    parser.add_argument("--only", default="E1,E2,E3,E4", help="comma-separated scenario groups")
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:
        print(json.dumps(scenario(args.scenario, args.n)))
        return
    q = 10 if args.quick else 1
    groups = {g.strip().upper() for g in args.only.split(",")}
    print(f"tidings benchmarks on {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    if "E1" in groups:
        rows = [(name, n, run_isolated(name, n)) for name, n in [
            ("tidings-durable", 200_000 // q), ("tidings-durable-encrypted", 200_000 // q),
            ("tidings-durable-batch", 200_000 // q),
            ("tidings-durable-batch-encrypted", 200_000 // q),
            ("litequeue", 20_000 // q), ("persist-queue", 5_000 // q),
        ]]
        table("E1 durable round trip, 256 B, confirms + acks (end-to-end msg/s)", rows, "tidings")
    if "E2" in groups:
        rows = [(name, n, run_isolated(name, n)) for name, n in [
            ("tidings-memory", 300_000 // q), ("tidings-memory-batch", 300_000 // q),
            ("asyncio.Queue", 1_000_000 // q),
        ]]
        table("E2 memory:// round trip, 256 B (end-to-end msg/s)", rows, "tidings")
    if "E3" in groups:
        rows = [(name, n, run_isolated(name, n)) for name, n in [
            ("tidings-fanout-memory", 100_000 // q), ("tidings-fanout-durable", 100_000 // q),
            ("pyee", 1_000_000 // q), ("blinker", 1_000_000 // q),
        ]]
        table("E3 event fan-out to 4 groups (deliveries/s)", rows, "tidings")
    if "E4" in groups:
        n = 2_000_000 // q
        r = run_isolated("tidings-deep", n)
        print(f"\nE4 deep queue, {n:,} x 1 KB, durable")
        if "error" in r:
            print(f"  error: {r['error']}")
        else:
            print(f"  enqueue {r['enqueue_per_s']:,.0f} msg/s, "
                  f"drain {r['drain_per_s']:,.0f} msg/s, "
                  f"RSS after enqueue {r['rss_after_enqueue_mb']:.0f} MB, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
