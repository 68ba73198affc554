"""The sans-IO connection core, without sockets: handshake, channels, content assembly,
errors; every input fed whole, one byte at a time, and followed by more frames; garbage
fuzzed with Hypothesis."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body, commands, frame, header

from tidings.amqp.connection import (
    CLOSED,
    OPEN,
    ChannelClosed,
    ChannelOpened,
    ConnectionClosed,
    ContentReceived,
    Login,
    MethodReceived,
    OpenVhost,
    ServerConnection,
)
from tidings.amqp.frames import PROTOCOL_HEADER, FrameReader

C, Ch, B, Q = commands.Connection, commands.Channel, commands.Basic, commands.Queue


def client_frames(*items: tuple[int, Any]) -> bytes:
    return b"".join(frame.marshal(value, channel) for channel, value in items)


HANDSHAKE = PROTOCOL_HEADER + client_frames(
    (0, C.StartOk({"product": "test"}, "PLAIN", "\x00guest\x00guest")),
)
AFTER_LOGIN = client_frames((0, C.TuneOk(100, 65536, 0)), (0, C.Open("/")))


def events(conn: ServerConnection) -> list[Any]:
    out = []
    while (e := conn.next_event()) is not None:
        out.append(e)
    return out


def decode_all(data: bytes) -> list[tuple[int, Any]]:
    reader = FrameReader()
    reader.feed(data)
    out = []
    while (item := reader.next_frame()) is not None:
        out.append(item)
    return out


def feed(conn: ServerConnection, data: bytes, how: str) -> list[Any]:
    if how == "whole":
        conn.receive_data(data)
        return events(conn)
    got = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        got += events(conn)
    return got


def open_connection(how: str = "whole") -> ServerConnection:
    conn = ServerConnection({"product": "tidings"})
    assert feed(conn, HANDSHAKE, how) == [Login("PLAIN", "guest", "guest", {"product": "test"})]
    conn.accept_login()
    assert feed(conn, AFTER_LOGIN, how) == [OpenVhost("/")]
    conn.accept_open()
    assert conn.state == OPEN and conn.frame_max == 65536 and conn.channel_max == 100
    sent = [type(f) for _, f in decode_all(PROTOCOL_HEADER[:0] + conn.data_to_send())]
    assert sent == [C.Start, C.Tune, C.OpenOk]
    return conn


@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_handshake_and_channel_lifecycle(how: str) -> None:
    conn = open_connection(how)
    data = client_frames((1, Ch.Open()), (1, Q.Declare(queue="q")),
                         (1, Ch.Close(200, "bye", 0, 0)))
    got = feed(conn, data, how)
    assert got[0] == ChannelOpened(1)
    assert isinstance(got[1], MethodReceived) and got[1].method.queue == "q"
    assert got[2] == ChannelClosed(1)
    assert [type(f) for _, f in decode_all(conn.data_to_send())] == [Ch.OpenOk, Ch.CloseOk]


@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_publish_content_is_assembled_across_body_frames(how: str) -> None:
    conn = open_connection()
    props = B.Properties(content_type="text/plain", headers={"k": "v"}, delivery_mode=2)
    data = client_frames(
        (1, Ch.Open()),
        (1, B.Publish(exchange="", routing_key="q")),
        (1, header.ContentHeader(0, 10, props)),
        (1, body.ContentBody(b"hello")),
        (1, body.ContentBody(b"world")),
        (1, B.Publish(exchange="x", routing_key="k")),
        (1, header.ContentHeader(0, 0, B.Properties())),  # an empty body: no body frame
    )
    got = [e for e in feed(conn, data, how) if isinstance(e, ContentReceived)]
    assert [g.message.body for g in got] == [b"helloworld", b""]
    assert got[0].message.headers == {"k": "v"} and got[1].message.exchange == "x"


def test_a_message_before_an_oversized_one_in_the_same_read_is_kept() -> None:
    """The oversized header closes the channel while the read is parsed; the message the
    client published just before it, in the same read, is still handed out (it was lost)."""
    conn = ServerConnection({"product": "tidings"}, max_message_bytes=10)
    conn.receive_data(HANDSHAKE)
    events(conn)
    conn.accept_login()
    conn.receive_data(AFTER_LOGIN)
    events(conn)
    conn.accept_open()
    conn.data_to_send()
    conn.receive_data(client_frames(
        (1, Ch.Open()),
        (1, B.Publish(exchange="", routing_key="q")),
        (1, header.ContentHeader(0, 10, B.Properties())),
        (1, body.ContentBody(b"just right")),
        (1, B.Publish(exchange="", routing_key="q")),
        (1, header.ContentHeader(0, 11, B.Properties())),
        (1, body.ContentBody(b"one too big")),
        (1, Q.Declare(queue="after")),  # sent after the refused message: dropped
    ))
    got = events(conn)
    assert [g.message.body for g in got if isinstance(g, ContentReceived)] == [b"just right"]
    assert not [g for g in got if isinstance(g, MethodReceived)]
    sent = [f for _, f in decode_all(conn.data_to_send())]
    assert [type(f) for f in sent] == [Ch.OpenOk, Ch.Close] and sent[1].reply_code == 406


def test_wrong_protocol_header_gets_ours_back_and_a_close() -> None:
    conn = ServerConnection({})
    conn.receive_data(b"AMQP\x00\x00\x08\x00")
    assert conn.data_to_send() == PROTOCOL_HEADER
    assert isinstance(conn.next_event(), ConnectionClosed) and conn.state == CLOSED


def test_http_request_is_not_amqp() -> None:
    conn = ServerConnection({})
    conn.receive_data(b"GET / HTTP/1.1\r\n")
    assert conn.data_to_send() == PROTOCOL_HEADER and conn.state == CLOSED


@pytest.mark.parametrize(("frames", "code"), [
    ([(1, Ch.Open()), (1, B.Publish()), (1, B.Ack(1))], 505),   # method where a header belongs
    ([(1, Q.Declare(queue="q"))], 504),                          # channel not opened
    ([(1, Ch.Open()), (1, Ch.Open())], 504),                     # opened twice
    ([(1, Ch.Open()), (1, C.Open("/"))], 503),                   # connection method on a channel
    ([(0, C.TuneOk(0, 0, 0))], 503),                             # tune-ok again
    ([(1, Ch.Open()), (1, body.ContentBody(b"x"))], 505),        # body without publish
    ([(1, Ch.Open()), (1, B.Publish()), (1, header.ContentHeader(0, 1, B.Properties())),
      (1, body.ContentBody(b"xx"))], 505),                       # body larger than declared
])
def test_protocol_errors_close_the_connection_with_their_code(
    frames: list[tuple[int, Any]], code: int
) -> None:
    conn = open_connection()
    conn.receive_data(client_frames(*frames))
    sent = decode_all(conn.data_to_send())
    closes = [f for _, f in sent if isinstance(f, C.Close)]
    assert closes and closes[0].reply_code == code
    # after our close only close-ok matters; then the connection is closed
    conn.receive_data(client_frames((1, Ch.Open()), (0, C.CloseOk())))
    assert any(isinstance(e, ConnectionClosed) for e in events(conn))


def test_frame_larger_than_frame_max_is_a_frame_error() -> None:
    conn = open_connection()
    conn.receive_data(client_frames((1, Ch.Open())))
    big = frame.marshal(body.ContentBody(b"x" * 70_000), 1)
    conn.receive_data(client_frames((1, B.Publish())) + big)
    closes = [f for _, f in decode_all(conn.data_to_send()) if isinstance(f, C.Close)]
    assert closes[0].reply_code == 501 and "frame-max" in closes[0].reply_text


def test_bad_frame_end_is_a_frame_error() -> None:
    conn = open_connection()
    data = bytearray(client_frames((1, Ch.Open())))
    data[-1] = 0x00
    conn.receive_data(bytes(data))
    closes = [f for _, f in decode_all(conn.data_to_send()) if isinstance(f, C.Close)]
    assert closes[0].reply_code == 501


def test_channel_close_by_server_ignores_frames_until_close_ok() -> None:
    conn = open_connection()
    conn.receive_data(client_frames((1, Ch.Open())))
    events(conn)
    conn.data_to_send()
    from tidings.errors import NotFoundError

    conn.close_channel(1, NotFoundError("no queue 'q' in vhost '/'"), Q.Declare)
    [(_, close)] = decode_all(conn.data_to_send())
    assert close.reply_code == 404 and close.reply_text == "NOT_FOUND - no queue 'q' in vhost '/'"
    assert (close.class_id, close.method_id) == (50, 10)
    conn.receive_data(client_frames((1, B.Ack(5)), (1, Ch.CloseOk())))
    assert events(conn) == [ChannelClosed(1)]


def test_amqplain_login_is_understood() -> None:
    from pamqp import encode

    table = encode.field_table({"LOGIN": "alice", "PASSWORD": "s3cret"})[4:]
    conn = ServerConnection({})
    conn.receive_data(PROTOCOL_HEADER + client_frames(
        (0, C.StartOk({}, "AMQPLAIN", table.decode("latin-1")))))
    assert events(conn) == [Login("AMQPLAIN", "alice", "s3cret", {})]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_garbage_after_handshake_never_escapes(garbage: bytes, open_first: bool) -> None:
    """Whatever arrives, the core only produces frames, events and closes: no exception."""
    conn = open_connection() if open_first else ServerConnection({})
    conn.receive_data(garbage)
    events(conn)
    for _, f in decode_all(conn.data_to_send()) if conn.state != CLOSED else []:
        assert f is not None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.binary(max_size=40)), max_size=10))
def test_well_framed_garbage_payloads_never_escape(parts: list[tuple[int, bytes]]) -> None:
    import struct

    conn = open_connection()
    conn.receive_data(client_frames((1, Ch.Open())))
    for kind, payload in parts:
        frame_type = (1, 2, 3, 8)[kind]
        conn.receive_data(struct.pack(">BHI", frame_type, 1, len(payload)) + payload + b"\xce")
        events(conn)


def test_publish_followed_by_channel_close_in_one_read_is_delivered() -> None:
    conn = open_connection()
    data = client_frames(
        (1, Ch.Open()),
        (1, B.Publish(exchange="", routing_key="q")),
        (1, header.ContentHeader(0, 2, B.Properties())),
        (1, body.ContentBody(b"hi")),
        (1, Ch.Close(200, "bye", 0, 0)),
    )
    got = feed(conn, data, "whole")
    assert [type(e) for e in got] == [ChannelOpened, ContentReceived, ChannelClosed]
