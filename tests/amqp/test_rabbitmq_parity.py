"""Edge cases where tidings must answer as RabbitMQ does: each test runs the same client code
against ``tidings serve`` and against the RabbitMQ on this machine (skipped when it is absent,
a failure under TIDINGS_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest
from pamqp import commands, frame

from tidings.amqp.frames import PROTOCOL_HEADER, FrameReader

from ..serverproc import ServerProcess
from ..services import rabbitmq_port
from .raw import RawClient

C, Ch, B, Q = commands.Connection, commands.Channel, commands.Basic, commands.Queue
LOCKED = ("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{}' in vhost '/'. "
          "It could be originally declared on another connection or the exclusive property "
          "value does not match that of the original declaration.")


@pytest.fixture(params=["tidings", "rabbitmq"])
def port(request: pytest.FixtureRequest, server: ServerProcess) -> int:
    return server.port if request.param == "tidings" else rabbitmq_port()


@pytest.fixture
def connect(port: int) -> Iterator[Callable[[], pika.BlockingConnection]]:
    opened: list[pika.BlockingConnection] = []

    def open_() -> pika.BlockingConnection:
        opened.append(pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port)))
        return opened[-1]

    yield open_
    for conn in opened:
        if conn.is_open:
            conn.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def closed_with(ch: pika.adapters.blocking_connection.BlockingChannel,
                action: Callable[[], object]) -> tuple[int, str]:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        action()
    return e.value.reply_code, e.value.reply_text


def test_names_in_any_unicode_work(connect: Callable[[], pika.BlockingConnection]) -> None:
    queue, exchange = unique("заказы-é-😀"), unique("события-ü")
    ch = connect().channel()
    assert ch.queue_declare(queue, auto_delete=True).method.queue == queue
    ch.exchange_declare(exchange, "direct", auto_delete=True)
    ch.queue_bind(queue, exchange, "ключ")
    ch.confirm_delivery()
    ch.basic_publish(exchange, "ключ", b"x")
    method, _, body = ch.basic_get(queue, auto_ack=True)
    assert body == b"x" and method.exchange == exchange and method.routing_key == "ключ"
    ch.basic_publish(exchange, "ключ", b"y")
    for method, _, body in ch.consume(queue, auto_ack=True, inactivity_timeout=5):
        assert body == b"y" and method.exchange == exchange
        break
    ch.cancel()
    ch.exchange_delete(exchange)


def test_unbinding_what_does_not_exist_succeeds(
    connect: Callable[[], pika.BlockingConnection],
) -> None:
    ch = connect().channel()
    queue = ch.queue_declare(unique("unbind"), auto_delete=True).method.queue
    ch.queue_unbind(queue, "amq.direct", "never-bound")
    ch.queue_unbind(queue, unique("no-such-exchange"), "x")
    ch.queue_unbind(unique("no-such-queue"), "amq.direct", "x")
    assert ch.is_open


def test_declare_errors_name_the_rule(connect: Callable[[], pika.BlockingConnection]) -> None:
    conn = connect()
    code, text = closed_with(conn.channel(),
                             lambda: conn.channel().exchange_declare("", passive=True))
    assert (code, text) == (403, "ACCESS_REFUSED - operation not permitted on the default "
                                 "exchange")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        conn.channel().exchange_declare(unique("x"), "no-such-type")
    assert e.value.reply_code == 503 and "unknown exchange type" in e.value.reply_text


def test_exclusive_queues_are_locked_to_their_connection_and_flag(
    connect: Callable[[], pika.BlockingConnection],
) -> None:
    owner, other = connect(), connect()
    queue = owner.channel().queue_declare(unique("excl"), exclusive=True).method.queue
    ch = other.channel()
    assert closed_with(ch, lambda: ch.queue_declare(queue, exclusive=True)) == \
        (405, LOCKED.format(queue))
    ch = owner.channel()
    assert closed_with(ch, lambda: ch.queue_declare(queue, exclusive=False)) == \
        (405, LOCKED.format(queue))
    plain = owner.channel().queue_declare(unique("plain"), auto_delete=True).method.queue
    ch = owner.channel()
    ch.basic_consume(plain, lambda *a: None)  # keeps the auto-delete queue alive
    ch2 = owner.channel()
    assert closed_with(ch2, lambda: ch2.queue_declare(plain, exclusive=True, auto_delete=True)) \
        == (405, LOCKED.format(plain))
    ch3 = owner.channel()
    code, text = closed_with(ch3, lambda: ch3.basic_consume(plain, lambda *a: None,
                                                            exclusive=True))
    assert (code, text) == (403, f"ACCESS_REFUSED - queue '{plain}' in vhost '/' in "
                                 f"exclusive use")


def _read_until(sock: socket.socket, reader: FrameReader, kinds: tuple[type, ...]) -> list[object]:
    got: list[object] = []
    while True:
        item = reader.next_frame()
        if item is not None:
            got.append(item[1])
            if isinstance(item[1], kinds):
                return got
            continue
        data = sock.recv(65536)
        if not data:
            return got
        reader.feed(data)


def test_a_pipelined_handshake_is_accepted(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = FrameReader()
        sock.sendall(PROTOCOL_HEADER + frame.marshal(C.StartOk({}, "PLAIN",
                                                               "\x00guest\x00guest"), 0))
        tune = _read_until(sock, reader, (C.Tune,))[-1]
        sock.sendall(frame.marshal(C.TuneOk(tune.channel_max, tune.frame_max, 0), 0)  # type: ignore[attr-defined]
                     + frame.marshal(C.Open("/"), 0) + frame.marshal(Ch.Open(), 1)
                     + frame.marshal(Q.Declare(queue="", exclusive=True), 1))
        got = _read_until(sock, reader, (Q.DeclareOk, C.Close))
        assert [type(f) for f in got] == [C.OpenOk, Ch.OpenOk, Q.DeclareOk]


def test_a_handshake_written_in_one_piece_is_accepted(port: int) -> None:
    """start-ok, tune-ok and open (and a channel's work) in one write, before the server's
    tune: RabbitMQ takes it (5 of 5); tidings refused it while it checked the login."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = FrameReader()
        sock.sendall(PROTOCOL_HEADER + frame.marshal(C.StartOk({}, "PLAIN",
                                                               "\x00guest\x00guest"), 0)
                     + frame.marshal(C.TuneOk(2047, 131072, 0), 0)
                     + frame.marshal(C.Open("/"), 0) + frame.marshal(Ch.Open(), 1)
                     + frame.marshal(Q.Declare(queue="", exclusive=True), 1))
        got = _read_until(sock, reader, (Q.DeclareOk, C.Close))
        assert [type(f) for f in got] == [C.Start, C.Tune, C.OpenOk, Ch.OpenOk, Q.DeclareOk]


def test_channel_numbers_and_a_close_race(port: int) -> None:
    raw = RawClient(port, 0)
    try:
        raw.open_channel(65535)  # the number is not bounded by channel-max, only the count
        raw.open_channel(1)
        # the server closes channel 1 (no such queue) while the client closes it too
        raw.sock.sendall(frame.marshal(B.Get(queue=unique("no-such-queue")), 1)
                         + frame.marshal(Ch.Close(200, "bye", 0, 0), 1))
        raw.expect(Ch.CloseOk)
        raw.send(1, Ch.CloseOk())  # answering the server's close, which may have crossed ours
        raw.open_channel(2)  # the connection goes on
    finally:
        raw.sock.close()


def test_a_client_that_never_logs_in_is_dropped(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", "--handshake-timeout-s", "1").start()
    try:
        for opening in (b"", PROTOCOL_HEADER):  # silent from the start, or after the header
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(opening)
                started = time.monotonic()
                with contextlib.suppress(ConnectionResetError):
                    while sock.recv(4096):
                        pass
                assert time.monotonic() - started < 5
    finally:
        server.stop()
    assert "did not complete the AMQP handshake" in server.log.read_text()
