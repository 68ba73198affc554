"""Heartbeats, users and permissions, vhosts, TLS and flow control, over real sockets."""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pika
import pytest
from pamqp import commands, header

from tidings.auth import UserStore
from tidings.errors import AccessRefusedError
from tidings.resources import rss_mb

from ..serverproc import ServerProcess
from .raw import RawClient

C, Ch, B = commands.Connection, commands.Channel, commands.Basic


def tidings_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidings", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def params(server: ServerProcess, **kw: object) -> pika.ConnectionParameters:
    return pika.ConnectionParameters("127.0.0.1", server.port, **kw)  # type: ignore[arg-type]


def test_silent_peer_is_dropped_and_its_unacked_message_requeued(
    server: ServerProcess,
) -> None:
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        ch.queue_declare("hb")
        ch.basic_publish("", "hb", b"held by a silent peer")
    raw = RawClient(server.port, heartbeat_s=1)
    raw.send(1, Ch.Open())
    raw.expect(Ch.OpenOk)
    raw.send(1, B.Get(queue="hb"))
    raw.expect(B.GetOk)
    started = time.monotonic()
    raw.sock.settimeout(10)
    with pytest.raises((ConnectionError, OSError)):  # we stay silent: the server hangs up
        while True:
            if not raw.sock.recv(65536):
                raise ConnectionError("closed by server")
    raw.sock.close()
    assert 1.5 < time.monotonic() - started < 8
    with pika.BlockingConnection(params(server)) as conn:
        method, _, body = conn.channel().basic_get("hb", auto_ack=True)
        assert body == b"held by a silent peer" and method.redelivered


def test_server_sends_heartbeats_to_an_idle_client(server: ServerProcess) -> None:
    with pika.BlockingConnection(params(server, heartbeat=1)) as conn:
        conn.sleep(3.5)  # pika drops the connection if it hears nothing for too long
        assert conn.is_open
        conn.channel().queue_declare("still-here")


def test_users_permissions_and_vhosts(server: ServerProcess) -> None:
    data = server.data_dir
    assert tidings_cli(data, "users", "add", "alice", "wonderland").returncode == 0
    out = tidings_cli(data, "users", "set-permissions", "alice", "^alice-.*",
                      "^alice-.*|amq.direct", "^alice-.*")
    assert out.returncode == 0, out.stderr
    assert "alice" in tidings_cli(data, "users", "list").stdout
    assert "wonderland" not in (data / "users.json").read_text()  # stored hashed

    alice = pika.PlainCredentials("alice", "wonderland")
    with pika.BlockingConnection(params(server, credentials=alice)) as conn:
        ch = conn.channel()
        ch.queue_declare("alice-jobs")
        ch.basic_publish("amq.direct", "k", b"allowed")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare("bob-jobs")
        assert info.value.reply_code == 403
        assert "configure access to queue 'bob-jobs'" in info.value.reply_text
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.basic_publish("amq.fanout", "k", b"forbidden")
            ch.queue_declare("alice-after")
        assert info.value.reply_code == 403 and "write access" in info.value.reply_text
        ch = conn.channel()  # the default exchange is 'amq.default' for permissions
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.basic_publish("", "alice-jobs", b"forbidden too")
            ch.queue_declare("alice-after")
        assert "write access to exchange 'amq.default'" in info.value.reply_text

    assert tidings_cli(data, "vhosts", "add", "/staging").returncode == 0
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as closed:
        pika.BlockingConnection(params(server, virtual_host="/staging"))
    assert "(530) \"NOT_ALLOWED - access to vhost '/staging' refused for user 'guest'\"" \
        in str(closed.value)
    tidings_cli(data, "users", "set-permissions", "guest", ".*", ".*", ".*", "--vhost",
                "/staging")
    with pika.BlockingConnection(params(server, virtual_host="/staging")) as conn:
        conn.channel().queue_declare("staged")
    out = tidings_cli(data, "users", "set-permissions", "nobody", ".*", ".*", ".*")
    assert out.returncode == 1 and out.stderr.strip() == "tidings: error: no user 'nobody'"


def test_guest_is_refused_from_anywhere_but_loopback(tmp_path: Path) -> None:
    users = UserStore(tmp_path)
    assert users.authenticate("guest", "guest", "127.0.0.1") == "guest"
    assert users.authenticate("guest", "guest", "::1") == "guest"
    with pytest.raises(AccessRefusedError, match="only connect via localhost"):
        users.authenticate("guest", "guest", "192.0.2.10")
    with pytest.raises(AccessRefusedError, match="login was refused"):
        users.authenticate("guest", "nope", "127.0.0.1")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_amqps_with_a_certificate_the_test_makes(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    server = ServerProcess(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key),
                           "--amqps-port", "0").start()
    try:
        context = ssl.create_default_context(cafile=str(cert))
        tls = pika.ConnectionParameters("localhost", server.tls_port,
                                        ssl_options=pika.SSLOptions(context, "localhost"))
        with pika.BlockingConnection(tls) as conn:
            ch = conn.channel()
            ch.queue_declare("secure")
            ch.basic_publish("", "secure", b"over tls")
            _, _, body = ch.basic_get("secure", auto_ack=True)
            assert body == b"over tls"
        import httpx  # the HTTP gateway serves HTTPS with the same certificate

        r = httpx.get(f"https://localhost:{server.http_port}/api/queues/%2F/secure",
                      auth=("guest", "guest"), verify=context)
        assert r.status_code == 200 and r.json()["name"] == "secure"
    finally:
        server.stop()


def test_memory_alarm_blocks_publishers_and_clears_when_the_queue_drains(
    tmp_path: Path,
) -> None:
    """The alarm measures what the broker holds (queued bytes, buffers), not the process RSS,
    which Python rarely gives back: so it clears, and connection.unblocked follows a purge."""
    server = ServerProcess(tmp_path / "data", "--memory-high-watermark-mb", "1").start()
    conn = pika.BlockingConnection(params(server, blocked_connection_timeout=30))
    try:
        events: list[str] = []
        conn.add_on_connection_blocked_callback(
            lambda c, m: events.append(m.method.reason))  # type: ignore[attr-defined]
        conn.add_on_connection_unblocked_callback(lambda c, m: events.append("unblocked"))
        ch = conn.channel()
        ch.queue_declare("flow")
        for _ in range(3):
            ch.basic_publish("", "flow", b"x" * 2**20)
        deadline = time.monotonic() + 10
        while not events and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.2)
        assert events and "low on memory" in events[0], events
        with pika.BlockingConnection(params(server)) as other:  # it publishes nothing: served
            assert other.channel().queue_purge("flow").method.message_count == 3
        deadline = time.monotonic() + 10
        while events[-1] != "unblocked" and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.2)
        assert events[-1] == "unblocked", events
        ch.basic_publish("", "flow", b"after")
        assert ch.queue_declare("flow", passive=True).method.message_count == 1
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            conn.close()
        server.stop()


def test_a_connection_is_blocked_in_the_middle_of_a_message(tmp_path: Path) -> None:
    """A body still arriving counts against the watermark and its sender is told at once,
    before its first message is complete (it is paused once that message is in)."""
    server = ServerProcess(tmp_path / "data", "--memory-high-watermark-mb", "1").start()
    try:
        raw = RawClient(server.port, 0)
        raw.open_channel(1)
        raw.send(1, B.Publish(exchange="", routing_key="nowhere"))
        raw.send(1, header.ContentHeader(0, 8 * 2**20, B.Properties()))
        for _ in range(12):  # 1.5 MB of a 8 MB message
            raw.send_body(1, b"x" * 131_000)
        url = f"http://127.0.0.1:{server.http_port}/api/connections"
        deadline = time.monotonic() + 10
        blocked = False
        while not blocked and time.monotonic() < deadline:
            time.sleep(0.2)
            shown = httpx.get(url, auth=("guest", "guest")).json()
            blocked = any(c["blocked"] and "low on memory" in c["blocked_by"] for c in shown)
        assert blocked
    finally:
        raw.sock.close()
        server.stop()


def test_publishers_blocked_mid_message_finish_it_so_the_alarm_can_clear(
        tmp_path: Path) -> None:
    """Four publishers each sending a 60 MB message against a 100 MB watermark: the alarm
    fires while every body is half in. Paused mid-message, none could ever complete and the
    alarm would never clear (it did not, before); each finishes its message instead, and a
    consumer drains them."""
    import threading

    server = ServerProcess(tmp_path / "data", "--memory-high-watermark-mb", "100").start()
    confirmed: list[int] = []

    def publish(i: int) -> None:
        with pika.BlockingConnection(params(server, blocked_connection_timeout=None)) as c:
            ch = c.channel()
            ch.confirm_delivery()
            ch.queue_declare("big", durable=True)
            ch.basic_publish("", "big", bytes([i]) * 60 * 2**20,
                             pika.BasicProperties(delivery_mode=2))
            confirmed.append(i)

    try:
        threads = [threading.Thread(target=publish, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        for t in threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        assert sorted(confirmed) == [0, 1, 2, 3]
        with pika.BlockingConnection(params(server)) as c:
            ch = c.channel()
            bodies = set()
            for _ in range(4):
                method, _, body = ch.basic_get("big", auto_ack=True)
                assert method is not None and len(body) == 60 * 2**20
                bodies.add(body[:1])
            assert bodies == {b"\x00", b"\x01", b"\x02", b"\x03"}
    finally:
        server.stop()


def test_a_blocked_connection_cannot_read_on_by_keeping_messages_in_progress(
        tmp_path: Path) -> None:
    """A blocked connection finishes what it was sending, but no more than one maximum
    message: a peer that keeps messages in progress on several channels is paused after
    that, and its heartbeats are not held against it meanwhile."""
    server = ServerProcess(tmp_path / "data", "--memory-high-watermark-mb", "1").start()
    try:
        raw = RawClient(server.port, 1)  # heartbeats every second, which it will not send
        for channel in (1, 2, 3, 4):
            raw.open_channel(channel)
            raw.send(channel, B.Publish(exchange="", routing_key="nowhere"))
            raw.send(channel, header.ContentHeader(0, 60 * 2**20, B.Properties()))
            for _ in range(8):  # 1 MB of each 60 MB message
                raw.send_body(channel, b"x" * 131_000)
        url = f"http://127.0.0.1:{server.http_port}/api/connections"
        deadline = time.monotonic() + 10
        while not any(c["blocked"] for c in httpx.get(url, auth=("guest", "guest")).json()):
            assert time.monotonic() < deadline, "never blocked"
            time.sleep(0.1)
        raw.sock.settimeout(3)
        sent = 0
        try:
            while sent < 236 * 2**20:  # the rest of the four messages
                raw.send_body(1 + (sent // 131_000) % 4, b"x" * 131_000)
                sent += 131_000
        except TimeoutError:
            pass
        # at most one 64 MiB message more, plus what the sockets' buffers hold
        assert sent < 100 * 2**20, sent
        time.sleep(3)  # three heartbeat intervals it could not be heard in: still connected
        assert any(c["blocked"] for c in httpx.get(url, auth=("guest", "guest")).json())
    finally:
        raw.sock.close()
        server.stop()


def test_port_in_use_is_a_one_line_error(server: ServerProcess, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "tidings", "--data-dir", str(tmp_path / "d2"),
                          "serve", "--host", "127.0.0.1", "--amqp-port", str(server.port),
                          "--http-port", "0"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {server.port}" in lines[0] and "--amqp-port" in lines[0]
    assert "Traceback" not in out.stderr


def test_sigterm_closes_connections_with_320_and_keeps_confirmed_messages(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "data").start()
    conn = pika.BlockingConnection(params(server))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("kept", durable=True)
    ch.basic_publish("", "kept", b"durable", pika.BasicProperties(delivery_mode=2))
    assert server.stop() == 0
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        conn.process_data_events(time_limit=1)
        ch.queue_declare("kept", durable=True)
    assert info.value.reply_code == 320
    server = ServerProcess(tmp_path / "data").start()
    try:
        with pika.BlockingConnection(params(server)) as conn2:
            _, _, body = conn2.channel().basic_get("kept", auto_ack=True)
            assert body == b"durable"
    finally:
        server.stop()


def test_slow_no_ack_consumer_cannot_grow_server_memory(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    assert server.proc is not None
    raw = RawClient(server.port, heartbeat_s=0)
    try:
        raw.send(1, Ch.Open())
        raw.expect(Ch.OpenOk)
        raw.send(1, commands.Queue.Declare(queue="firehose"))
        raw.expect(commands.Queue.DeclareOk)
        raw.send(1, B.Consume(queue="firehose", no_ack=True))
        raw.expect(B.ConsumeOk)  # ... and from now on this client never reads again
        body = b"z" * 4096
        seen = []
        with pika.BlockingConnection(params(server)) as conn:
            ch = conn.channel()
            for _ in range(5):  # 5 x 80 MB for a consumer that reads nothing
                for _ in range(20_000):
                    ch.basic_publish("", "firehose", body)
                ch.queue_declare("firehose", passive=True)  # a round trip: all processed
                seen.append(rss_mb(server.proc.pid))
        # caches and buffers fill during the first rounds (two on a loaded machine:
        # 146 -> 185 MB); after that memory must stay flat while 240 MB more arrive
        assert seen[-1] - seen[1] < 40 and max(seen) < 250, f"server memory MB: {seen}"
    finally:
        raw.sock.close()
        server.stop()


def test_peer_that_never_answers_close_ok_is_dropped(server: ServerProcess) -> None:
    raw = RawClient(server.port, heartbeat_s=0)
    try:
        raw.sock.sendall(b"\x01\x00\x01\x00\x00\x00\x04\x00\x14\x00\x0a\x00")  # bad frame end
        close = raw.expect(C.Close)
        assert close.reply_code == 501  # type: ignore[attr-defined]
        started = time.monotonic()
        raw.sock.settimeout(10)
        while raw.sock.recv(65536):  # we never send close-ok
            pass
        assert time.monotonic() - started < 5
    finally:
        raw.sock.close()


async def test_a_store_that_cannot_write_raises_the_alarm_that_blocks_publishers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk stops commits (they are retried): publishers are then told with
    connection.blocked, as for low memory, and told again when writes resume."""
    import asyncio
    import sqlite3

    from tidings.amqp.server import AmqpServer
    from tidings.auth import UserStore
    from tidings.message import Message
    from tidings.routing.broker import Broker
    from tidings.storage.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "data")
    broker = Broker(store)
    broker.start()
    amqp = AmqpServer(broker, UserStore(tmp_path / "data"))
    disk_full = [True]
    real = store._write

    def write(batch: object) -> None:
        if disk_full[0]:
            raise sqlite3.OperationalError("database or disk is full")
        real(batch)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_write", write)
    try:
        assert amqp.check_alarms() is None
        broker.declare_queue("/", "q")
        broker.publish("/", "", Message(b"x", "q"))
        done = broker.sync()
        for _ in range(100):
            if amqp.check_alarms():
                break
            await asyncio.sleep(0.02)
        assert "cannot write to the store: OperationalError: database or disk is full" in (
            amqp.check_alarms() or "")
        disk_full[0] = False
        await asyncio.wait_for(done, 10)
        assert amqp.check_alarms() is None
    finally:
        await amqp.close()
        broker.close()


def test_the_handshake_timeout_does_not_count_our_own_login_work(tmp_path: Path) -> None:
    """A login that the server takes long to check (here: slowed down by earlier failures of
    the same user from the same address, 1.6 s) completes although the handshake timeout is
    1 s: the client did its part in time. Before, such clients were dropped."""
    server = ServerProcess(tmp_path / "data", "--handshake-timeout-s", "1").start()
    try:
        for _ in range(5):
            with pytest.raises(pika.exceptions.AMQPError):
                pika.BlockingConnection(params(server, credentials=pika.PlainCredentials(
                    "guest", "wrong")))
        started = time.monotonic()
        with pika.BlockingConnection(params(server)) as conn:
            assert conn.channel().is_open
        assert time.monotonic() - started > 1.0  # it was slowed, and not dropped
    finally:
        server.stop()


async def test_a_transaction_the_disk_did_not_keep_is_not_committed_ok(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tx.commit-ok means durable: when the stream's fdatasync fails, the connection is closed
    with 541 INTERNAL_ERROR instead (it used to answer commit-ok), and the server goes on
    serving new connections."""
    import asyncio
    import errno

    import tidings.storage.streams as streams_module
    from tidings.amqp.server import AmqpServer
    from tidings.auth import UserStore
    from tidings.routing.broker import Broker
    from tidings.storage.sqlite import SqliteStore

    broker = Broker(SqliteStore(tmp_path / "data"))
    broker.start()
    amqp = AmqpServer(broker, UserStore(tmp_path / "data"))
    port = await amqp.listen("127.0.0.1", 0)
    failing = [False]
    real_sync = os.fdatasync

    def fdatasync(fd: int) -> None:
        if failing[0]:
            raise OSError(errno.EIO, "Input/output error")
        real_sync(fd)

    monkeypatch.setattr(streams_module.os, "fdatasync", fdatasync)

    def client() -> tuple[int, str, bool]:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        ch = conn.channel()
        ch.queue_declare("ledger", durable=True, arguments={"x-queue-type": "stream"})
        ch.tx_select()
        ch.basic_publish("", "ledger", b"one")
        ch.tx_commit()  # the disk keeps it
        failing[0] = True
        ch.basic_publish("", "ledger", b"two")
        try:
            ch.tx_commit()
            code, text = 200, "commit-ok"
            conn.close()
        except pika.exceptions.ConnectionClosedByBroker as e:
            code, text = e.reply_code, e.reply_text
        failing[0] = False
        with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port)) as again:
            alive = again.channel().is_open
        return code, text, alive

    try:
        code, text, alive = await asyncio.to_thread(client)
        assert code == 541 and "not durable" in text, (code, text)
        assert alive
    finally:
        failing[0] = False
        await amqp.close()
        broker.close()
