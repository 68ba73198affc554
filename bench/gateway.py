"""HTTP gateway benchmarks: POST /events with wrk against tidings serve and against RabbitMQ's
management API (``POST /api/exchanges/{vhost}/{exchange}/publish``), and SSE fan-out.

    python bench/gateway.py             # 1, 16 and 64 connections, 10 s each; SSE to 100 streams
    python bench/gateway.py --quick     # 3 s each

Both brokers store what they are sent: tidings routes events to a durable queue bound to
``tidings.events`` and answers 202 only once the event is durable; RabbitMQ routes persistent
messages to a durable queue bound to ``amq.topic``. The RabbitMQ management plugin is enabled
here if it is not (``rabbitmq-plugins enable rabbitmq_management``). wrk comes from Debian's
packages (``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = "x" * 256
AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: Any = None) -> int:
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": AUTH, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except OSError as e:
        return int(getattr(e, "code", 0))


def ensure_rabbitmq_management() -> str:
    url = "http://127.0.0.1:15672"
    if http("GET", f"{url}/api/overview") != 200:
        subprocess.run(["rabbitmq-plugins", "enable", "rabbitmq_management"],
                       capture_output=True, check=False)
        for _ in range(60):
            if http("GET", f"{url}/api/overview") == 200:
                break
            time.sleep(1)
    return url


def wrk(url: str, body: str, connections: int, seconds: int) -> dict[str, float]:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "{AUTH}"\n')
    out = subprocess.run(["wrk", f"-t{min(2, connections)}", f"-c{connections}",
                          f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=False).stdout
    script.unlink()

    def latency(pct: str) -> float:
        found = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if not found:
            return float("nan")
        value, unit = float(found.group(1)), found.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rate": float(rate.group(1)) if rate else 0.0, "p50_ms": latency("50"),
            "p99_ms": latency("99"), "errors": float(non2xx.group(1)) if non2xx else 0.0}


async def sse_fanout(http_port: int, amqp_port: int, streams: int, events: int) -> float:
    import httpx
    import pika

    received = 0
    done = asyncio.Event()
    ready = 0

    async def listen(client: httpx.AsyncClient) -> None:
        nonlocal received, ready
        async with client.stream("GET", "/events/stream", params={"topic": "fan.#"}) as r:
            ready += 1
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    received += 1
                    if received == streams * events:
                        done.set()

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}",
                                 auth=("guest", "guest"), timeout=60,
                                 limits=httpx.Limits(max_connections=streams + 10)) as client:
        tasks = [asyncio.create_task(listen(client)) for _ in range(streams)]
        while ready < streams:
            await asyncio.sleep(0.05)
        start = time.perf_counter()

        def publish() -> None:
            with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1",
                                                                   amqp_port)) as conn:
                ch = conn.channel()
                for _ in range(events):
                    ch.basic_publish("tidings.events", "fan.out", PAYLOAD.encode())

        await asyncio.get_running_loop().run_in_executor(None, publish)
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - start
        for t in tasks:
            t.cancel()
    return streams * events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/gateway.py needs wrk: apt-get install wrk")
    seconds = 3 if args.quick else 10
    with tempfile.TemporaryDirectory(prefix="tidings-http-bench-") as tmp:
        amqp_port, http_port = free_port(), free_port()
        proc = subprocess.Popen([sys.executable, "-m", "tidings", "--data-dir", f"{tmp}/data",
                                 "serve", "--host", "127.0.0.1", "--amqp-port", str(amqp_port),
                                 "--http-port", str(http_port), "--log-level", "WARNING"],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert proc.stdout is not None
        proc.stdout.readline()
        proc.stdout.readline()
        try:
            t_url = f"http://127.0.0.1:{http_port}"
            http("PUT", f"{t_url}/api/queues/%2F/bench-events", {"durable": True})
            http("POST", f"{t_url}/events/bench.warmup", {"warm": True})
            http("POST", f"{t_url}/api/bindings/%2F", {"source": "tidings.events",
                                                       "destination": "bench-events",
                                                       "routing_key": "bench.#"})
            r_url = ensure_rabbitmq_management()
            http("PUT", f"{r_url}/api/queues/%2F/bench-events", {"durable": True})
            http("POST", f"{r_url}/api/bindings/%2F/e/amq.topic/q/bench-events",
                 {"routing_key": "bench.#"})
            rabbit_body = json.dumps({"properties": {"delivery_mode": 2},
                                      "routing_key": "bench.created", "payload": PAYLOAD,
                                      "payload_encoding": "string"})
            print(f"{'POST an event, durable':<28}{'tidings':>10}{'rabbitmq':>10}{'ratio':>8}"
                  f"  {'p50 ms':>14}  {'p99 ms':>14}")
            for c in (1, 16, 64):
                t = wrk(f"{t_url}/events/bench.created", json.dumps({"p": PAYLOAD}), c, seconds)
                r = wrk(f"{r_url}/api/exchanges/%2F/amq.topic/publish", rabbit_body, c,
                        seconds)
                print(f"{f'{c} connection(s)':<28}{t['rate']:>10,.0f}{r['rate']:>10,.0f}"
                      f"{t['rate'] / max(r['rate'], 1e-9):>8.2f}  "
                      f"{t['p50_ms']:>6.2f} vs {r['p50_ms']:<6.2f} {t['p99_ms']:>6.2f} vs "
                      f"{r['p99_ms']:<6.2f}"
                      + (f"  (errors {t['errors']:.0f}/{r['errors']:.0f})"
                         if t["errors"] or r["errors"] else ""))
            http("DELETE", f"{r_url}/api/queues/%2F/bench-events")
            rate = asyncio.run(sse_fanout(http_port, amqp_port, 100, 200 if args.quick else 1000))
            print(f"SSE fan-out to 100 streams: {rate:,.0f} events delivered/s")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
