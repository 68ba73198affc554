"""The reliability harness, long form: kill -9 cycles, fuzzed AMQP streams, an HTTP type fuzz,
fuzzed Kafka requests, worker faults, resource bounds.

    python bench/reliability.py              # all: 100 kill cycles, 2,000 streams, ...
    python bench/reliability.py kill --cycles 20
    python bench/reliability.py fuzz --streams 5000 --seed 3
    python bench/reliability.py http --requests 20000 --seed 2
    python bench/reliability.py worker --rounds 5
    python bench/reliability.py resources
    python bench/reliability.py kafka --kafka-requests 20000

Prints each run's figures (confirmed lost, acked redelivered, crashes, tracebacks, peak RSS)
as JSON. The short forms run in the test suite; the loops themselves are in
``tests/reliability.py`` so both run the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import pika  # noqa: E402
from pamqp import commands, header  # noqa: E402
from tests.amqp.raw import RawClient  # noqa: E402
from tests.http_fuzz import http_fuzz  # noqa: E402
from tests.kafka.fuzz import kafka_fuzz  # noqa: E402
from tests.reliability import fuzz, kill_loop  # noqa: E402
from tests.serverproc import ServerProcess  # noqa: E402
from tests.worker_faults import worker_faults  # noqa: E402

from tidings.resources import rss_mb  # noqa: E402

B = commands.Basic


def resources(work: Path) -> dict[str, object]:
    """The inputs that once grew the server without bound, each with its server's RSS."""
    out: dict[str, object] = {}
    server = ServerProcess(work / "data").start()
    assert server.proc is not None
    pid = server.proc.pid
    try:
        base = rss_mb(pid)
        raw = RawClient(server.port, 0)
        raw.open_channel(1)
        raw.send(1, B.Publish(exchange="", routing_key="big"))
        raw.send(1, header.ContentHeader(0, 2**62, B.Properties()))
        refused = ""
        try:
            for _ in range(800):  # 100 MB of body frames
                raw.send_body(1, b"x" * 131_000)
        except OSError:
            pass
        raw.sock.settimeout(5)
        refused = str(getattr(raw.expect(commands.Channel.Close), "reply_code", ""))
        raw.sock.close()
        out["header announcing 2^62 bytes + 100 MB of body"] = {
            "answer": refused, "rss_growth_mb": round(rss_mb(pid) - base, 1)}

        with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port)) as c:
            ch = c.channel()
            ch.queue_declare("deep")
            for _ in range(100_000):
                ch.basic_publish("", "deep", b"m" * 1024)
            ch.queue_declare("deep", passive=True)
        before = rss_mb(pid)
        reader = RawClient(server.port, 0)
        reader.open_channel(1)
        reader.send(1, B.Consume(queue="deep"))
        time.sleep(2)
        started = time.monotonic()
        health = httpx.get(f"http://127.0.0.1:{server.http_port}/healthz", timeout=30)
        out["prefetch-0 consumer that reads nothing, 100k x 1 KB queued"] = {
            "rss_growth_mb": round(rss_mb(pid) - before, 1),
            "healthz_ms": round((time.monotonic() - started) * 1000, 1),
            "healthz": health.status_code}
        reader.sock.close()

        before = rss_mb(pid)
        with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}",
                          auth=("guest", "guest"), timeout=30) as http:
            for i in range(1500):
                http.post(f"/events/big.{i}", content=b"e" * 2**20,
                          headers={"content-type": "application/octet-stream"})
        out["1,500 events of 1 MB, no reader"] = {
            "rss_growth_mb": round(rss_mb(pid) - before, 1)}

        before = rss_mb(pid)
        for _ in range(300):
            try:
                params = pika.ConnectionParameters(
                    "127.0.0.1", server.port, connection_attempts=1,
                    credentials=pika.PlainCredentials("guest", "x" * 120_000))
                pika.BlockingConnection(params).close()
            except pika.exceptions.AMQPError:
                pass
        out["300 failed logins with 120 KB passwords"] = {
            "rss_growth_mb": round(rss_mb(pid) - before, 1)}
        out["server peak RSS MB"] = round(rss_mb(pid), 1)
    finally:
        server.stop()
    out["tracebacks in server log"] = server.log.read_text().count("Traceback")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all",
                        choices=["all", "kill", "fuzz", "http", "kafka", "worker",
                                 "resources"])
    parser.add_argument("--cycles", type=int, default=100, help="kill -9 cycles")
    parser.add_argument("--streams", type=int, default=2000, help="fuzzed AMQP streams")
    parser.add_argument("--requests", type=int, default=5000, help="HTTP type-fuzz requests")
    parser.add_argument("--kafka-requests", type=int, default=5000,
                        help="fuzzed Kafka requests")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of worker faults")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.what in ("all", "fuzz"):
            report["fuzz"] = fuzz(work / "fuzz", args.streams, seed=args.seed).figures()
            print(json.dumps({"fuzz": report["fuzz"]}, indent=2), flush=True)
        if args.what in ("all", "http"):
            server = ServerProcess(work / "http" / "data").start()
            try:
                found = http_fuzz(f"http://127.0.0.1:{server.http_port}", server.log,
                                  args.requests, seed=args.seed)
            finally:
                server.stop()
            found.tracebacks = server.log.read_text().count("Traceback")
            report["http"] = found.figures()
            print(json.dumps({"http": report["http"]}, indent=2), flush=True)
        if args.what in ("all", "kafka"):
            server = ServerProcess(work / "kafka" / "data", "--kafka-port", "0",
                                   "--http-port", "-1").start()
            try:
                report["kafka"] = kafka_fuzz(server, args.kafka_requests,
                                             seed=args.seed).figures()
            finally:
                server.stop()
            print(json.dumps({"kafka": report["kafka"]}, indent=2), flush=True)
        if args.what in ("all", "worker"):
            (work / "worker").mkdir()
            report["worker"] = asyncio.run(worker_faults(work / "worker", args.rounds))
            print(json.dumps({"worker": report["worker"]}, indent=2), flush=True)
        if args.what in ("all", "resources"):
            report["resources"] = resources(work / "resources")
            print(json.dumps({"resources": report["resources"]}, indent=2), flush=True)
        if args.what in ("all", "kill"):
            report["kill"] = kill_loop(work / "kill", args.cycles, seed=args.seed).figures()
            print(json.dumps({"kill": report["kill"]}, indent=2), flush=True)


if __name__ == "__main__":
    main()
