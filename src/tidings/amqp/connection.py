"""The sans-IO AMQP 0-9-1 server connection: bytes in, events out, bytes back.

``receive_data(bytes)`` parses frames and queues events; ``next_event()`` hands them out one at
a time; the ``send_*`` methods and the ``accept_*`` / ``refuse_*`` answers queue bytes that
``data_to_send()`` returns. No sockets, no asyncio, no broker: ``amqp/server.py`` drives it.

Theory of operation (h11's shape):

- The connection walks ``CONNECTION_STATES``; which methods are legal in which state is the
  ``LEGAL`` table below and nowhere else. Anything else is a connection error (503/505).
- Login and vhost access are decisions for the driver: the core emits :class:`Login` and
  :class:`OpenVhost` and waits for ``accept_login`` / ``accept_open`` (or a close).
- Each channel is ``OPEN`` or ``CLOSING`` (we sent channel.close and drop everything but
  close / close-ok until the peer answers, AMQP 0-9-1 §2.2.4). On an open channel,
  ``basic.publish`` starts content assembly: exactly one content header, then body frames
  until ``body_size`` bytes; anything else in between is 505 UNEXPECTED_FRAME.
- Every error the peer causes is raised as a :class:`TidingsError` with its reply code;
  ``receive_data`` turns it into channel.close or connection.close, as the code demands, and
  never lets it escape. Parsing stops at a connection error: nothing after it is read.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pamqp import body, commands, constants, exceptions, heartbeat
from pamqp import header as pheader
from pamqp.base import Frame as Method
from pamqp.decode import field_table

from tidings.amqp.frames import (
    PROTOCOL_HEADER,
    FrameReader,
    ProtocolHeaderMismatch,
    encode_content,
    encode_method,
)
from tidings.errors import PreconditionFailedError, TidingsError
from tidings.message import header_problem

C, Ch, B = commands.Connection, commands.Channel, commands.Basic

AWAIT_HEADER, AWAIT_START_OK, AWAIT_LOGIN = "AWAIT_HEADER", "AWAIT_START_OK", "AWAIT_LOGIN"
AWAIT_TUNE_OK, AWAIT_OPEN, AWAIT_OPEN_OK = "AWAIT_TUNE_OK", "AWAIT_OPEN", "AWAIT_OPEN_OK"
OPEN, CLOSING, CLOSED = "OPEN", "CLOSING", "CLOSED"
CONNECTION_STATES = (AWAIT_HEADER, AWAIT_START_OK, AWAIT_LOGIN, AWAIT_TUNE_OK, AWAIT_OPEN,
                     AWAIT_OPEN_OK, OPEN, CLOSING, CLOSED)

#: Connection-class methods legal in each state (channel 0). Channel traffic needs OPEN.
LEGAL: dict[str, tuple[type[Method], ...]] = {
    AWAIT_START_OK: (C.StartOk,),
    AWAIT_LOGIN: (),
    AWAIT_TUNE_OK: (C.TuneOk,),
    AWAIT_OPEN: (C.Open,),
    AWAIT_OPEN_OK: (),
    OPEN: (C.Close, C.CloseOk, C.UpdateSecret, C.Blocked, C.Unblocked),
    CLOSING: (C.Close, C.CloseOk),
    CLOSED: (),
}

#: Our limits, offered in connection.tune; the client may lower them.
CHANNEL_MAX = 2047
FRAME_MAX = 131072
HEARTBEAT_S = 60
#: Channel frames a client may pipeline behind connection.open before it is answered.
MAX_HELD_FRAMES = 64
#: Largest message body accepted (RabbitMQ's ``max_message_size`` defaults to 128 MiB; ours is
#: lower because Python holds a body two or three times over while it is assembled and stored).
MAX_MESSAGE_BYTES = 64 * 2**20


class ProtocolError(TidingsError):
    """A peer broke the protocol; ``reply_code`` says how (503, 504, 505, 540)."""

    def __init__(self, reply_code: int, message: str, *, closes_connection: bool = True,
                 method: type[Method] | None = None) -> None:
        super().__init__(message)
        self.reply_code = reply_code
        self.closes_connection = closes_connection
        self.method = method


def reply_text(error: TidingsError) -> str:
    """RabbitMQ's reply text: ``NOT_FOUND - no queue 'orders' in vhost '/'``."""
    cls = exceptions.CLASS_MAPPING.get(error.reply_code)
    name = cls.name.replace("-", "_") if cls else "INTERNAL_ERROR"
    text = f"{name} - {error}".encode()[:255]  # a short string: 255 bytes, not characters
    return text.decode(errors="ignore")


# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    mechanism: str
    username: str
    password: str
    client_properties: dict[str, Any]


@dataclass(frozen=True)
class OpenVhost:
    vhost: str


@dataclass(frozen=True)
class MethodReceived:
    channel: int
    method: Method


@dataclass(frozen=True)
class ContentReceived:
    channel: int
    method: B.Publish
    properties: B.Properties
    body: bytes


@dataclass(frozen=True)
class ChannelOpened:
    channel: int


@dataclass(frozen=True)
class ChannelClosed:
    """The peer closed the channel, or answered our close: release its resources."""

    channel: int


@dataclass(frozen=True)
class ConnectionClosed:
    """Nothing more will be read or sent after the pending bytes: close the socket."""

    reply_code: int
    reply_text: str


Event = Login | OpenVhost | MethodReceived | ContentReceived | ChannelOpened | ChannelClosed \
    | ConnectionClosed


@dataclass
class _Channel:
    state: str = OPEN
    publish: B.Publish | None = None
    properties: B.Properties | None = None
    body_size: int = 0
    parts: list[bytes] = field(default_factory=list)
    received: int = 0
    #: Once CLOSING: the sequence number of the first queued event that is dropped (work the
    #: client sent after what closed the channel); earlier ones are still handled.
    drop_from: int = 0


class ServerConnection:
    def __init__(self, server_properties: dict[str, Any], *, channel_max: int = CHANNEL_MAX,
                 frame_max: int = FRAME_MAX, heartbeat_s: int = HEARTBEAT_S,
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.state = AWAIT_HEADER
        self.max_message_bytes = max_message_bytes
        self.server_properties = server_properties
        self.channel_max, self.frame_max, self.heartbeat_s = channel_max, frame_max, heartbeat_s
        self.channels: dict[int, _Channel] = {}
        self.client_properties: dict[str, Any] = {}
        self._reader = FrameReader(frame_max)
        self._events: deque[Event] = deque()
        #: Events handed out so far (the next one's sequence number).
        self._popped = 0
        self._out: list[bytes] = []
        #: Channel frames that arrived before connection.open was answered.
        self._held: list[tuple[int, Any]] = []
        #: Bytes queued in ``_out``: the driver stops deliveries while it is large.
        self.pending_bytes = 0

    # -- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        self._reader.feed(data)
        try:
            if self.state == AWAIT_HEADER:
                if not self._reader.read_protocol_header():
                    return
                self._start()
            while self.state != CLOSED and (item := self._reader.next_frame()) is not None:
                self._handle_frame(*item)
        except ProtocolHeaderMismatch:
            self._out.append(PROTOCOL_HEADER)
            self._closed(501, "protocol header mismatch")
        except TidingsError as e:
            self.close(e)

    def buffered_bytes(self) -> int:
        """Bytes held for this peer: unparsed input, bodies being assembled, unsent output."""
        assembling = sum(ch.received for ch in self.channels.values())
        return self._reader.buffered() + assembling + self.pending_bytes

    def receiving_content(self) -> bool:
        """True while a published message's header or body frames are still arriving."""
        return any(ch.publish is not None for ch in self.channels.values())

    def next_event(self) -> Event | None:
        """The next event; work for a channel we closed since it was parsed is dropped."""
        while self._events:
            event = self._events.popleft()
            self._popped += 1
            if isinstance(event, MethodReceived | ContentReceived):
                ch = self.channels.get(event.channel)
                if ch is not None and ch.state == CLOSING and self._popped > ch.drop_from:
                    continue
            return event
        return None

    def data_to_send(self) -> bytes:
        out, self._out = self._out, []
        self.pending_bytes = 0
        return b"".join(out)

    def _start(self) -> None:
        self.state = AWAIT_START_OK
        self._send(0, C.Start(0, 9, self.server_properties, "PLAIN AMQPLAIN", "en_US"))

    def _handle_frame(self, channel: int, frame: Any) -> None:
        if isinstance(frame, heartbeat.Heartbeat):
            return
        if channel == 0:
            if not isinstance(frame, Method):
                raise ProtocolError(505, "content frame on channel 0")
            self._connection_method(frame)
            return
        if self.state == CLOSING:
            return  # after our connection.close only close / close-ok matter (§2.2.4)
        if self.state == AWAIT_OPEN_OK and len(self._held) < MAX_HELD_FRAMES:
            # Pipelined after connection.open (as RabbitMQ accepts): handled once it is open.
            self._held.append((channel, frame))
            return
        if self.state != OPEN:
            raise ProtocolError(504, f"channel {channel} used before the connection is open")
        self._channel_frame(channel, frame)

    def _connection_method(self, method: Method) -> None:
        if not isinstance(method, LEGAL.get(self.state, ())):
            raise ProtocolError(503, f"can't handle {method.name} when state={self.state}",
                                method=type(method))
        if isinstance(method, C.StartOk):
            self._login(method)
        elif isinstance(method, C.TuneOk):
            self._tune_ok(method)
        elif isinstance(method, C.Open):
            self.state = AWAIT_OPEN_OK
            self._events.append(OpenVhost(method.virtual_host))
        elif isinstance(method, C.Close):
            self._send(0, C.CloseOk())
            self._closed(method.reply_code or 200, method.reply_text or "")
        elif isinstance(method, C.CloseOk):
            self._closed(200, "closed")
        elif isinstance(method, C.UpdateSecret):
            self._send(0, C.UpdateSecretOk())

    def _login(self, method: C.StartOk) -> None:
        self.client_properties = dict(method.client_properties or {})
        response = method.response
        raw = response.encode("latin-1") if isinstance(response, str) else bytes(response)
        if method.mechanism == "PLAIN":
            parts = raw.split(b"\x00")
            try:
                if len(parts) != 3:
                    raise ValueError("not three parts")
                user, password = parts[1].decode(), parts[2].decode()
            except ValueError as e:  # also bytes that are not UTF-8
                raise ProtocolError(403, "malformed PLAIN response") from e
        elif method.mechanism == "AMQPLAIN":
            try:
                _, table = field_table(struct.pack(">I", len(raw)) + raw)
            except Exception as e:  # whatever pamqp raises on a malformed or too deep table
                raise ProtocolError(403, "malformed AMQPLAIN response") from e
            user, password = str(table.get("LOGIN", "")), str(table.get("PASSWORD", ""))
        else:
            raise ProtocolError(403, f"unsupported authentication mechanism "
                                     f"'{method.mechanism}'; use PLAIN or AMQPLAIN")
        self.state = AWAIT_LOGIN
        self._events.append(Login(method.mechanism, user, password, self.client_properties))

    def _tune_ok(self, method: C.TuneOk) -> None:
        if method.frame_max and method.frame_max < constants.FRAME_MIN_SIZE:
            raise ProtocolError(530, f"frame_max={method.frame_max} < "
                                     f"{constants.FRAME_MIN_SIZE} min size")
        if method.frame_max:
            self.frame_max = min(self.frame_max, method.frame_max)
        if method.channel_max:
            self.channel_max = min(self.channel_max, method.channel_max)
        self.heartbeat_s = method.heartbeat
        self._reader.frame_max = self.frame_max
        self.state = AWAIT_OPEN

    def _channel_frame(self, channel: int, frame: Any) -> None:
        ch = self.channels.get(channel)
        if isinstance(frame, Ch.Open):
            if ch is not None:
                raise ProtocolError(504, f"second 'channel.open' seen on channel {channel}")
            if len(self.channels) >= self.channel_max:  # a count, as RabbitMQ checks it
                raise ProtocolError(530, f"number of channels opened ({len(self.channels)}) "
                                         f"has reached the negotiated channel_max "
                                         f"({self.channel_max})")
            self.channels[channel] = _Channel()
            self._send(channel, Ch.OpenOk())
            self._events.append(ChannelOpened(channel))
            return
        if ch is None:
            if isinstance(frame, Ch.CloseOk):
                return  # both sides closed the channel at once: ours was answered already
            raise ProtocolError(504, f"expected 'channel.open' on channel {channel}")
        if ch.state == CLOSING:
            if isinstance(frame, Ch.CloseOk | Ch.Close):
                if isinstance(frame, Ch.Close):
                    self._send(channel, Ch.CloseOk())
                del self.channels[channel]
                self._events.append(ChannelClosed(channel))
            return
        if ch.publish is not None:
            self._content(channel, ch, frame)
            return
        if not isinstance(frame, Method):
            raise ProtocolError(505, f"unexpected content frame on channel {channel}")
        if isinstance(frame, Ch.Close):
            del self.channels[channel]
            self._send(channel, Ch.CloseOk())
            self._events.append(ChannelClosed(channel))
        elif isinstance(frame, Ch.CloseOk):
            raise ProtocolError(505, f"unexpected 'channel.close-ok' on channel {channel}")
        elif isinstance(frame, B.Publish):
            ch.publish = frame
        elif frame.index >> 16 == C.frame_id:  # the connection class (10)
            raise ProtocolError(503, f"connection method {frame.name} on channel {channel}")
        else:
            self._events.append(MethodReceived(channel, frame))

    def _content(self, channel: int, ch: _Channel, frame: Any) -> None:
        if ch.properties is None:
            if not isinstance(frame, pheader.ContentHeader):
                raise ProtocolError(505, f"expected content header for 'basic.publish' on "
                                         f"channel {channel}, got {type(frame).__name__}")
            if frame.body_size > self.max_message_bytes:
                # Refused on the announced size, before a byte of the body is buffered; the
                # body frames that follow are dropped unread while the channel closes.
                self.close_channel(channel, PreconditionFailedError(
                    f"message size {frame.body_size} is larger than configured max size "
                    f"{self.max_message_bytes}"), B.Publish, keep_queued=True)
                self._events.append(ChannelClosed(channel))
                return
            headers = frame.properties.headers
            if headers and (problem := header_problem(headers)):
                raise ProtocolError(502, f"content header on channel {channel}: {problem}")
            ch.properties, ch.body_size = frame.properties, frame.body_size
        elif isinstance(frame, body.ContentBody):
            ch.parts.append(frame.value)
            ch.received += len(frame.value)
            if ch.received > ch.body_size:
                raise ProtocolError(505, f"content body larger than its header's "
                                         f"{ch.body_size} bytes on channel {channel}")
        else:
            raise ProtocolError(505, f"expected content body on channel {channel}, got "
                                     f"{type(frame).__name__}")
        if ch.received == ch.body_size:
            publish, props = ch.publish, ch.properties
            payload = ch.parts[0] if len(ch.parts) == 1 else b"".join(ch.parts)
            ch.publish, ch.properties, ch.parts, ch.received = None, None, [], 0
            self._events.append(ContentReceived(channel, publish, props, payload))  # type: ignore[arg-type]

    # -- decisions -------------------------------------------------------------------------

    def accept_login(self) -> None:
        self.state = AWAIT_TUNE_OK
        self._send(0, C.Tune(self.channel_max, self.frame_max, self.heartbeat_s))

    def accept_open(self) -> None:
        self.state = OPEN
        self._send(0, C.OpenOk())
        held, self._held = self._held, []
        try:
            for channel, frame in held:
                if self.state == OPEN:
                    self._channel_frame(channel, frame)
        except TidingsError as e:
            self.close(e)

    # -- output ----------------------------------------------------------------------------

    def _send(self, channel: int, method: Method) -> None:
        self._queue(encode_method(channel, method))

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self.pending_bytes += len(data)

    def send_method(self, channel: int, method: Method) -> None:
        if channel == 0 or channel in self.channels:
            self._send(channel, method)

    def send_content(self, channel: int, method: Method, properties: B.Properties,
                     payload: bytes) -> None:
        if channel in self.channels:
            self._queue(encode_method(channel, method))
            self._queue(encode_content(channel, properties, payload, self.frame_max))

    def send_raw(self, data: bytes) -> None:
        self._queue(data)

    def close_channel(self, channel: int, error: TidingsError,
                      method: type[Method] | None = None, *, keep_queued: bool = False) -> None:
        """Close one channel with ``error``'s reply code (a channel exception). Its events not
        yet handed out are dropped, unless ``keep_queued``: when the error is found while
        parsing, what the client sent before it is still handled (a message published just
        before an oversized one is kept)."""
        ch = self.channels.get(channel)
        if ch is None or ch.state == CLOSING:
            return
        ch.state = CLOSING
        ch.drop_from = self._popped + (len(self._events) if keep_queued else 0)
        ch.publish, ch.properties, ch.parts, ch.received = None, None, [], 0
        class_id, method_id = _ids(method)
        self._send(channel, Ch.Close(error.reply_code, reply_text(error), class_id, method_id))

    def close(self, error: TidingsError, method: type[Method] | None = None) -> None:
        """Close the connection with ``error``, or just the channel if the error allows."""
        if self.state in (CLOSING, CLOSED):
            return
        if isinstance(error, ProtocolError) and error.method is not None:
            method = error.method
        class_id, method_id = _ids(method)
        self._send(0, C.Close(error.reply_code, reply_text(error), class_id, method_id))
        if self.state != OPEN:
            # Before the connection is open there is nobody to wait for: say why and hang up
            # (also RabbitMQ's authentication_failure_close).
            self._closed(error.reply_code, str(error))
            return
        self.state = CLOSING
        self._reader = FrameReader(self.frame_max)  # drop whatever is buffered

    def _closed(self, code: int, text: str) -> None:
        self.state = CLOSED
        self._events.append(ConnectionClosed(code, text))


def _ids(method: type[Method] | None) -> tuple[int, int]:
    if method is None:
        return 0, 0
    return method.index >> 16, method.index & 0xFFFF
