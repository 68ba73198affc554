"""Hostile or unusual input over real sockets: it gets a clear AMQP error, never bricks the data
directory, never grows the server's memory past its bounds, and the server keeps serving."""

from __future__ import annotations

import contextlib
import datetime
import decimal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest
from pamqp import commands, frame, header

from tidings.amqp.frames import PROTOCOL_HEADER, FrameReader
from tidings.resources import rss_mb

from ..serverproc import ServerProcess
from .raw import RawClient

B, Ch = commands.Basic, commands.Channel


def params(server: ServerProcess, **kw: object) -> pika.ConnectionParameters:
    return pika.ConnectionParameters("127.0.0.1", server.port, **kw)  # type: ignore[arg-type]


def test_a_confirmed_message_with_tag_shaped_headers_survives_kill_9(tmp_path: Path) -> None:
    """A timestamp (or decimal) beside a table shaped like the store codec's own tags once made
    every restart fail; now it comes back as it was sent."""
    headers = {"at": datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC),
               "price": decimal.Decimal("9.99"), "t": {"$b": "a"}, "u": [{"$dt": "x"}]}
    server = ServerProcess(tmp_path / "data").start()
    try:
        with pika.BlockingConnection(params(server)) as conn:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare("tagged", durable=True)
            ch.basic_publish("", "tagged", b"payload",
                             pika.BasicProperties(headers=headers, delivery_mode=2))
    finally:
        server.kill()
    server.start()
    try:
        with pika.BlockingConnection(params(server)) as conn:
            method, props, body = conn.channel().basic_get("tagged", auto_ack=True)
            assert method is not None and body == b"payload"
            assert props.headers == headers
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()


def test_a_message_above_the_max_size_is_refused_on_its_header(tmp_path: Path) -> None:
    """A header announcing 2^62 bytes followed by endless body frames: the channel is closed
    with 406 at once, the body is never buffered, and the connection goes on serving."""
    server = ServerProcess(tmp_path / "data", "--max-message-bytes", str(2**20)).start()
    assert server.proc is not None
    try:
        raw = RawClient(server.port, 0)
        raw.open_channel(1)
        raw.send(1, B.Publish(exchange="", routing_key="big"))
        raw.send(1, header.ContentHeader(0, 2**62, B.Properties()))
        before = rss_mb(server.proc.pid)
        for _ in range(400):  # 52 MB the server must not keep
            raw.send_body(1, b"x" * 131_000)
        close = raw.expect(Ch.Close)
        assert close.reply_code == 406  # type: ignore[attr-defined]
        assert close.reply_text == (  # type: ignore[attr-defined]
            f"PRECONDITION_FAILED - message size {2**62} is larger than configured max size "
            f"{2**20}")
        assert rss_mb(server.proc.pid) - before < 30
        raw.send(1, Ch.CloseOk())
        raw.open_channel(2)  # the connection still serves
        raw.send(2, commands.Queue.Declare(queue="small"))
        raw.expect(commands.Queue.DeclareOk)
        raw.sock.close()
        with pika.BlockingConnection(params(server)) as conn:
            ch = conn.channel()
            ch.queue_declare("small")
            ch.basic_publish("", "small", b"y" * 2**20)  # exactly the limit: accepted
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                ch.basic_publish("", "small", b"y" * (2**20 + 1))
                ch.queue_declare("small", passive=True)
            assert e.value.reply_code == 406
            method, _, body = conn.channel().basic_get("small", auto_ack=True)
            assert method is not None and len(body) == 2**20
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()


def test_a_prefetch_0_consumer_that_reads_nothing_does_not_pull_the_queue_into_memory(
    tmp_path: Path,
) -> None:
    """pika's default prefetch is 0 (unlimited): dispatch stops at the connection's output
    bound and waits for the socket, instead of moving the whole queue into memory at once."""
    server = ServerProcess(tmp_path / "data").start()
    assert server.proc is not None
    n, body = 50_000, b"m" * 1024
    try:
        with pika.BlockingConnection(params(server)) as conn:
            ch = conn.channel()
            ch.queue_declare("deep")
            for _ in range(n):
                ch.basic_publish("", "deep", body)
            assert ch.queue_declare("deep", passive=True).method.message_count == n
        before = rss_mb(server.proc.pid)
        raw = RawClient(server.port, 0)
        raw.open_channel(1)
        raw.send(1, B.Consume(queue="deep"))
        raw.expect(B.ConsumeOk)  # ... and from now on this client reads nothing
        time.sleep(1.0)
        with pika.BlockingConnection(params(server)) as conn:
            started = time.monotonic()
            ready = conn.channel().queue_declare("deep", passive=True).method.message_count
            answered_s = time.monotonic() - started
        assert ready > n * 0.8, f"{n - ready} of {n} messages were pulled out for one reader"
        assert answered_s < 1.0
        assert rss_mb(server.proc.pid) - before < 40
        raw.sock.close()
    finally:
        server.stop()


def test_server_named_queues_are_unguessable_and_checked_like_any_queue(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run = [sys.executable, "-m", "tidings", "--data-dir", str(data), "users"]
    for args in (["add", "alice", "pw"], ["add", "eve", "pw"],
                 ["set-permissions", "alice", "^(alice-.*|amq\\.gen-.*)$", "^alice-.*", ".*"],
                 ["set-permissions", "eve", "^eve-.*", "^eve-.*", "^eve-.*"]):
        subprocess.run([*run, *args], check=True, timeout=60, capture_output=True)
    server = ServerProcess(data).start()
    creds = {"alice": pika.PlainCredentials("alice", "pw"),
             "eve": pika.PlainCredentials("eve", "pw")}
    try:
        with pika.BlockingConnection(params(server, credentials=creds["alice"])) as conn:
            ch = conn.channel()
            names = [ch.queue_declare("", exclusive=True).method.queue for _ in range(3)]
            assert all(n.startswith("amq.gen-") and len(n) >= len("amq.gen-") + 22
                       for n in names)
            assert len(set(names)) == 3 and len({n[:12] for n in names}) > 1
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                ch.queue_declare("alice-q", arguments={"x-dead-letter-exchange": "eve-ex"})
            assert e.value.reply_code == 403 and "eve-ex" in e.value.reply_text
            with pika.BlockingConnection(params(server, credentials=creds["eve"])) as other:
                with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                    other.channel().queue_declare("", exclusive=True)
                assert e.value.reply_code == 403 and "amq.gen-" in e.value.reply_text
                with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                    other.channel().basic_get(names[0])
                assert e.value.reply_code == 403
    finally:
        server.stop()


def _nested_table(depth: int) -> bytes:
    """Field-table bytes nested ``depth`` levels ({"a": {"a": ...}}), built without recursion."""
    inner = b""
    for _ in range(depth):
        inner = b"\x01aF" + struct.pack(">I", len(inner)) + inner
    return struct.pack(">I", len(inner)) + inner


def test_deep_tables_get_a_clean_protocol_error_and_the_server_goes_on(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        # before login: client-properties nested 3,000 levels in connection.start-ok
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(PROTOCOL_HEADER)
            reader = FrameReader()
            while reader.next_frame() is None:
                reader.feed(sock.recv(65536))
            args = _nested_table(3000) + b"\x05PLAIN" + struct.pack(">I", 12) + \
                b"\x00guest\x00guest" + b"\x05en_US"
            payload = struct.pack(">HH", 10, 11) + args
            sock.sendall(struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce")
            got = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    got += chunk
            reader.feed(got)
            item = reader.next_frame()
            assert item is not None and isinstance(item[1], commands.Connection.Close)
            assert item[1].reply_code == 501 and "nested too deeply" in item[1].reply_text
        # after login: headers deeper than the limit are refused at the edge (502)
        with pika.BlockingConnection(params(server)) as conn:
            headers: dict[str, object] = {}
            for _ in range(20):
                headers = {"a": headers}
            ch = conn.channel()
            ch.queue_declare("deep")
            with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
                ch.basic_publish("", "deep", b"x", pika.BasicProperties(headers=headers))
                ch.queue_declare("deep", passive=True)
            assert e.value.reply_code == 502 and "nested deeper than 16" in e.value.reply_text
        with pika.BlockingConnection(params(server)) as conn:  # everyone else is served
            assert conn.channel().queue_declare("deep", passive=True).method.message_count == 0
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()


def test_a_plain_login_that_is_not_utf8_is_refused_cleanly(tmp_path: Path) -> None:
    """Found by the AMQP fuzzer: a PLAIN response with bytes that are not UTF-8 was a 541 and
    a traceback."""
    server = ServerProcess(tmp_path / "data").start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            response = b"\x00gu\xe5st\x00guest".decode("latin-1")
            sock.sendall(PROTOCOL_HEADER + frame.marshal(
                commands.Connection.StartOk({}, "PLAIN", response), 0))
            reader = FrameReader()
            closed = None
            while closed is None and (data := sock.recv(65536)):
                reader.feed(data)
                while (item := reader.next_frame()) is not None:
                    if isinstance(item[1], commands.Connection.Close):
                        closed = item[1]
            assert closed is not None and closed.reply_code == 403
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()
