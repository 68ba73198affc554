"""The reliability harness: a kill -9 loop under real pika load and an AMQP fuzzer, each against
a real ``tidings serve``, returning the figures they measured.

The test suite runs short forms (``tests/e2e/test_amqp_crash.py``,
``tests/amqp/test_fuzz_amqp.py``); ``python bench/reliability.py`` runs the long forms (100 kill
cycles, 2,000 fuzzed streams) and prints the figures that docs/durability.md and
docs/security.md report.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
from pamqp import commands, frame, header

from tidings import message_batches as batches
from tidings.amqp.frames import PROTOCOL_HEADER, any_utf8_names
from tidings.message import Message
from tidings.resources import rss_mb

from .serverproc import ServerProcess

QUEUE = "crash-amqp"
#: Most messages one batch of the batch producer holds.
MAX_BATCH = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- kill -9 under load --------------------------------------------------------------------

class Load:
    """A producer with publisher confirms, one publishing batches, and a consumer acking inside
    transactions (an ack counts as committed once ``tx_commit`` returned: tidings answers
    after it is durable)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.confirmed: list[str] = []
        self.received: dict[str, float] = {}
        self.committed: dict[str, float] = {}
        self.redelivered_after_commit: list[str] = []
        self.errors = 0

    def connect(self) -> pika.BlockingConnection:
        params = pika.ConnectionParameters("127.0.0.1", self.port, connection_attempts=1,
                                           socket_timeout=2, blocked_connection_timeout=5)
        return pika.BlockingConnection(params)

    def _publishing(self, publish: Callable[[Any, int], list[str]]) -> None:
        """Until stopped: connect, and ``publish(channel, n)`` again and again; what it
        returns counts as confirmed. After a failure the ids in flight are skipped (they may
        or may not have landed: never reuse one)."""
        n = 0
        while not self.stop.is_set():
            try:
                with self.connect() as conn:
                    ch = conn.channel()
                    ch.confirm_delivery()
                    ch.queue_declare(QUEUE, durable=True)
                    while not self.stop.is_set():
                        mids = publish(ch, n)
                        self.confirmed.extend(mids)
                        n += len(mids)
            except pika.exceptions.AMQPError:
                self.errors += 1
                n += MAX_BATCH
                time.sleep(0.05)

    def produce(self) -> None:
        def one(ch: Any, n: int) -> list[str]:
            ch.basic_publish("", QUEUE, b"x" * 200,
                             pika.BasicProperties(delivery_mode=2, message_id=f"m{n}"))
            return [f"m{n}"]

        self._publishing(one)

    def produce_batches(self) -> None:
        """Batches of 2-50 persistent messages (the extension the tidings client uses), each
        confirmed once: all its messages count as confirmed when the confirm came back."""
        def batch(ch: Any, n: int) -> list[str]:
            mids = [f"b{n + i}" for i in range(random.randint(2, MAX_BATCH))]
            body = batches.pack_publishes(
                [(QUEUE, Message(b"y" * 200, message_id=mid)) for mid in mids])
            ch.basic_publish("amq.tidings.control", batches.PUBLISH_BATCH, body,
                             pika.BasicProperties(message_id=f"batch-{n}", headers={
                                 batches.EXCHANGE_HEADER: "", batches.MANDATORY_HEADER: True}),
                             mandatory=True)
            return mids

        self._publishing(batch)

    def consume(self) -> None:
        while not self.stop.is_set():
            try:
                with self.connect() as conn:
                    ch = conn.channel()
                    ch.queue_declare(QUEUE, durable=True)
                    ch.tx_select()
                    while not self.stop.is_set():
                        batch = []
                        for _ in range(random.randint(1, 20)):
                            method, props, _ = ch.basic_get(QUEUE)
                            if method is None:
                                break
                            mid = props.message_id
                            if mid in self.committed:
                                self.redelivered_after_commit.append(mid)
                            self.received[mid] = time.monotonic()
                            batch.append(mid)
                            ch.basic_ack(method.delivery_tag)
                        ch.tx_commit()
                        for mid in batch:
                            self.committed[mid] = time.monotonic()
                        if not batch:
                            time.sleep(0.01)
            except pika.exceptions.AMQPError:
                self.errors += 1
                time.sleep(0.05)


@dataclass
class KillReport:
    cycles: int
    confirmed: int
    lost: list[str]
    #: Acked messages delivered again: after a committed ack (a bug) ...
    redelivered_after_commit: list[str]
    #: ... or still in the queue after their ack was committed (an ack undone).
    acks_undone: list[str]
    client_errors: int
    peak_rss_mb: float
    tracebacks: int

    def figures(self) -> dict[str, object]:
        return {"kill cycles": self.cycles, "confirmed": self.confirmed,
                "confirmed lost": len(self.lost),
                "acked redelivered (after a committed ack)": len(self.redelivered_after_commit),
                "committed acks undone": len(self.acks_undone),
                "client reconnects": self.client_errors,
                "server peak RSS MB": round(self.peak_rss_mb, 1),
                "tracebacks in server log": self.tracebacks}


def restart(data: Path, port: int, attempts: int = 5) -> ServerProcess:
    """Start the server again on ``port``. A client retrying its connection meanwhile can,
    rarely, be given that very port as its own (a TCP self-connect to a port nobody
    listens on): it is free again once that client gives up, so wait and try again."""
    for attempt in range(attempts):
        try:
            return ServerProcess(data).start(port)
        except RuntimeError as e:
            if "is not available" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def kill_loop(data: Path, cycles: int, seed: int = 1) -> KillReport:
    """``cycles`` times: let the load run 0.3-1 s, kill -9 the server, restart it."""
    rng = random.Random(seed)
    port = free_port()
    server = ServerProcess(data).start(port)
    load = Load(port)
    threads = [threading.Thread(target=work) for work in (load.produce, load.produce_batches,
                                                            load.consume)]
    for t in threads:
        t.start()
    peak = 0.0
    try:
        for _ in range(cycles):
            deadline = time.monotonic() + rng.uniform(0.3, 1.0)
            while time.monotonic() < deadline:
                assert server.proc is not None
                peak = max(peak, rss_mb(server.proc.pid))
                time.sleep(0.05)
            server.kill()
            time.sleep(rng.uniform(0.0, 0.3))
            server = restart(data, port)
        time.sleep(0.5)
    finally:
        load.stop.set()
        for t in threads:
            t.join(30)
    remaining = []
    try:
        with load.connect() as conn:
            ch = conn.channel()
            while True:
                method, props, _ = ch.basic_get(QUEUE, auto_ack=True)
                if method is None:
                    break
                remaining.append(props.message_id)
    finally:
        server.stop()
    left = set(remaining)
    return KillReport(
        cycles=cycles, confirmed=len(load.confirmed),
        lost=[m for m in load.confirmed if m not in load.received and m not in left],
        redelivered_after_commit=load.redelivered_after_commit,
        acks_undone=[m for m in remaining if m in load.committed],
        client_errors=load.errors, peak_rss_mb=peak,
        tracebacks=server.log.read_text().count("Traceback"),
    )


# -- the AMQP fuzzer -----------------------------------------------------------------------

C, Ch, B, Q, E = (commands.Connection, commands.Channel, commands.Basic, commands.Queue,
                  commands.Exchange)
# the methods a fuzzed client sends with any UTF-8 names (pamqp alone allows only ASCII)
Declare, Bind, Consume, Get, Purge, Delete, Publish = (
    any_utf8_names(m) for m in (Q.Declare, Q.Bind, B.Consume, B.Get, Q.Purge, Q.Delete,
                                 B.Publish))


def _handshake() -> bytes:
    return (PROTOCOL_HEADER + frame.marshal(C.StartOk({}, "PLAIN", "\x00guest\x00guest"), 0)
            + frame.marshal(C.TuneOk(2047, 131072, 0), 0) + frame.marshal(C.Open("/"), 0))


def _valid_frames(rng: random.Random) -> list[bytes]:
    """Well-formed traffic a client could send, for mutating."""
    ch = rng.choice([1, 1, 2, 65535])
    name = rng.choice(["fuzz", "", "amq.gen-x", "é" * 10, "x" * 255])
    body = rng.randbytes(rng.choice([0, 1, 100, 5000]))
    methods: list[object] = [
        Ch.Open(), Declare(queue=name, arguments={"x-max-length": rng.randint(-5, 5)}),
        E.Declare(exchange="fx", exchange_type=rng.choice(["direct", "topic", "bogus"])),
        Bind(queue=name, exchange="fx", routing_key="#"), B.Qos(prefetch_count=rng.randint(0, 5)),
        Consume(queue=name), Get(queue=name), B.Ack(rng.randint(0, 9), rng.random() < .5),
        B.Nack(rng.randint(0, 9)), B.Reject(rng.randint(0, 9)), commands.Confirm.Select(),
        commands.Tx.Select(), commands.Tx.Commit(), Ch.Flow(rng.random() < 0.5),
        Ch.Close(200, "", 0, 0), Ch.CloseOk(), Purge(queue=name), Delete(queue=name),
    ]
    out = [frame.marshal(Ch.Open(), ch)]
    for method in rng.sample(methods, rng.randint(1, len(methods))):
        out.append(frame.marshal(method, ch))  # type: ignore[arg-type]
    props = B.Properties(headers={"k": rng.choice([1, "v", [1, {"a": None}]])},
                         delivery_mode=2, expiration=rng.choice([None, "0", "100"]))
    out.append(frame.marshal(Publish(exchange="", routing_key=name), ch))
    out.append(frame.marshal(header.ContentHeader(0, len(body), props), ch))
    if body:
        out.append(struct.pack(">BHI", 3, ch, len(body)) + body + b"\xce")
    return out


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if kind < 0.4 and data:  # flip bits
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif kind < 0.6 and data:  # cut
            del data[rng.randrange(len(data)):]
        elif kind < 0.8:  # insert garbage
            i = rng.randrange(len(data) + 1)
            data[i:i] = rng.randbytes(rng.randint(1, 64))
        else:  # a frame header announcing a huge size
            data += struct.pack(">BHI", rng.choice([1, 2, 3, 8, 9]), rng.randint(0, 3),
                                rng.choice([2**31, 2**32 - 1, 131_065]))
    return bytes(data)


def fuzz_stream(rng: random.Random) -> bytes:
    """One hostile stream: a handshake (sometimes mutated), then mutated client traffic."""
    frames = _valid_frames(rng)
    body = b"".join(frames)
    handshake = _handshake()
    if rng.random() < 0.3:
        handshake = _mutate(rng, handshake)
    return handshake + (_mutate(rng, body) if rng.random() < 0.8 else body)


@dataclass
class FuzzReport:
    """What a fuzz run found (AMQP streams here, Kafka requests in tests/kafka/fuzz.py)."""

    streams: int
    server_deaths: int = 0
    unanswered_health_checks: int = 0
    tracebacks: int = 0
    peak_rss_mb: float = 0.0
    closes: dict[str, int] = field(default_factory=dict)
    #: What one fuzzed unit is.
    unit: str = "streams"

    def figures(self) -> dict[str, object]:
        return {f"fuzzed {self.unit}": self.streams, "server crashes": self.server_deaths,
                "health checks unanswered": self.unanswered_health_checks,
                "tracebacks in server log": self.tracebacks,
                "server peak RSS MB": round(self.peak_rss_mb, 1),
                f"how {self.unit} ended": dict(sorted(self.closes.items()))}


def _healthy(port: int) -> bool:
    try:
        params = pika.ConnectionParameters("127.0.0.1", port, socket_timeout=3,
                                           connection_attempts=1)
        with pika.BlockingConnection(params) as conn:
            conn.channel().queue_declare("fuzz-health")
        return True
    except pika.exceptions.AMQPError:
        return False


def _ending(sock: socket.socket) -> str:
    """How the server ended a stream: the reply code of its connection.close, or eof/open."""
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
            if len(got) > 1 << 20:
                break
    except TimeoutError:
        return "still open"
    except OSError:
        return "reset"
    at = got.rfind(b"\x01\x00\x00")  # the last method frame on channel 0
    while at >= 0:
        if got[at + 7: at + 11] == b"\x00\x0a\x00\x32":  # connection.close
            return f"close {struct.unpack_from('>H', got, at + 11)[0]}"
        at = got.rfind(b"\x01\x00\x00", 0, at)
    return "eof"


def fuzz(data: Path, streams: int, seed: int = 1, check_every: int = 50) -> FuzzReport:
    rng = random.Random(seed)
    server = ServerProcess(data, "--handshake-timeout-s", "2").start()
    report = FuzzReport(streams)
    try:
        for i in range(streams):
            payload = fuzz_stream(rng)
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=0.5) as sock:
                    sock.sendall(payload)
                    ending = _ending(sock)
            except OSError:
                ending = "refused" if server.proc and server.proc.poll() is None else "dead"
            report.closes[ending] = report.closes.get(ending, 0) + 1
            assert server.proc is not None
            if i % 10 == 0:
                report.peak_rss_mb = max(report.peak_rss_mb, rss_mb(server.proc.pid))
            if server.proc.poll() is not None:
                report.server_deaths += 1
                server = ServerProcess(data, "--handshake-timeout-s", "2").start()
            elif i % check_every == check_every - 1 and not _healthy(server.port):
                report.unanswered_health_checks += 1
    finally:
        server.stop()
    report.tracebacks = server.log.read_text().count("Traceback")
    return report
