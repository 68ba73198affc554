"""The sans-IO AMQP 0-9-1 server connection: bytes in, events out, bytes back.

``receive_data(bytes)`` parses frames and queues events; ``next_event()`` hands them out one at
a time; the ``send_*`` methods and the ``accept_*`` / ``refuse_*`` answers queue bytes that
``data_to_send()`` returns. No sockets, no asyncio, no broker: ``amqp/server.py`` drives it.

Theory of operation (h11's shape):

- The connection, each channel (content assembly included) and each channel's publishing
  mode walk the one transition table of :mod:`tidings.amqp.states`; legality is decided
  there (:func:`~tidings.amqp.states.advance`) and nowhere else.
- Login and vhost access are decisions for the driver: the core emits :class:`Login` and
  :class:`OpenVhost` and waits for ``accept_login`` / ``accept_open`` (or a close).
- Every error the peer causes is raised as a :class:`TidingsError` with its reply code (the
  wire's own in the :class:`~tidings.errors.RemoteProtocolError` branch of ``errors.py``);
  ``receive_data`` turns it into channel.close or connection.close, as the code demands, and
  never lets it escape. Parsing stops at a connection error: nothing after it is read.
"""

from __future__ import annotations

import re
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pamqp import body, commands, constants, exceptions, heartbeat
from pamqp.base import Frame as Method
from pamqp.decode import field_table

from tidings.amqp import codec
from tidings.amqp import states as st
from tidings.amqp.frames import PROTOCOL_HEADER, FrameReader, encode_method
from tidings.amqp.states import (
    AWAIT_HEADER,
    AWAIT_LOGIN,
    AWAIT_OPEN_OK,
    CLOSED,
    CLOSING,
    CONNECTION_STATES,
    OPEN,
)
from tidings.errors import (
    AccessRefusedError,
    ChannelError,
    FrameSyntaxError,
    LocalProtocolError,
    NotAllowedError,
    PreconditionFailedError,
    ProtocolHeaderMismatch,
    RemoteProtocolError,
    TidingsError,
    UnexpectedFrameError,
    UnexpectedMethodError,
)
from tidings.message import Message
from tidings.values import MAX_MESSAGE_BYTES, header_problem

C, Ch, B = commands.Connection, commands.Channel, commands.Basic

__all__ = ["CLOSED", "CLOSING", "CONNECTION_STATES", "OPEN", "ServerConnection",
           "reply_text"]

#: Our limits, offered in connection.tune; the client may lower them.
CHANNEL_MAX = 2047
FRAME_MAX = 131072
HEARTBEAT_S = 60
#: Frames a client may pipeline before its login or connection.open is answered.
MAX_HELD_FRAMES = 64


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
    """A published message, whole: ``message`` holds its body, exchange and routing key."""

    channel: int
    method: B.Publish
    message: Message


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
    state: str = st.IDLE
    publish: B.Publish | None = None
    message: Message | None = None
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
        #: Frames pipelined before we answered: while the login is checked, or on channels
        #: before connection.open is answered.
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

    def content_remaining(self) -> int:
        """Body bytes still to come of the messages being received (as their headers said)."""
        return sum(ch.body_size - ch.received for ch in self.channels.values()
                   if ch.publish is not None)

    def next_event(self) -> Event | None:
        """The next event; work for a channel we closed since it was parsed is dropped."""
        while self._events:
            event = self._events.popleft()
            self._popped += 1
            if isinstance(event, MethodReceived | ContentReceived):
                ch = self.channels.get(event.channel)
                if ch is not None and ch.state == st.CHANNEL_CLOSING and \
                        self._popped > ch.drop_from:
                    continue
            return event
        return None

    def data_to_send(self) -> bytes:
        out, self._out = self._out, []
        self.pending_bytes = 0
        return b"".join(out)

    def _start(self) -> None:
        self._move(st.PROTOCOL_HEADER)
        self._send(0, C.Start(0, 9, self.server_properties, "PLAIN AMQPLAIN", "en_US"))

    def _move(self, event: str) -> None:
        """Take our own decision ``event``; one the state forbids is a bug of ours."""
        nxt = st.advance(st.CONNECTION, self.state, event)
        if nxt is None:
            raise LocalProtocolError(f"cannot take '{event}' when state={self.state}")
        self.state = nxt

    def _handle_frame(self, channel: int, frame: Any) -> None:
        if isinstance(frame, heartbeat.Heartbeat):
            return
        if self.state == AWAIT_LOGIN or (channel and self.state == AWAIT_OPEN_OK):
            self._hold(channel, frame)
            return
        if channel == 0:
            if not isinstance(frame, Method):
                raise UnexpectedFrameError("content frame on channel 0")
            self._connection_method(frame)
            return
        if self.state not in st.CHANNEL_FRAME_STATES:
            raise ChannelError(f"channel {channel} used before the connection is open")
        if self.state == CLOSING:
            return  # after our connection.close only close / close-ok matter (§2.2.4)
        self._channel_frame(channel, frame)

    def _hold(self, channel: int, frame: Any) -> None:
        """A frame pipelined before we answered (as RabbitMQ takes them): behind start-ok
        while the login is checked (tune-ok, open, channel frames), or on a channel behind
        connection.open. Handled in order by :meth:`_release_held`."""
        if len(self._held) >= MAX_HELD_FRAMES:
            raise ChannelError(f"more than {MAX_HELD_FRAMES} frames before the server "
                               f"answered the handshake")
        self._held.append((channel, frame))

    def _release_held(self) -> None:
        held, self._held = self._held, []  # (a frame may be held again, for the next step)
        try:
            for channel, frame in held:
                if self.state in (CLOSING, CLOSED):
                    return
                self._handle_frame(channel, frame)
        except TidingsError as e:
            self.close(e)

    def _connection_method(self, method: Method) -> None:
        nxt = st.advance(st.CONNECTION, self.state, method.name)
        if nxt is None:
            raise UnexpectedMethodError(f"can't handle {method.name} when state={self.state}",
                                        method=type(method))
        if isinstance(method, C.StartOk):
            self._login(method)
        elif isinstance(method, C.TuneOk):
            self._tune_ok(method)
        elif isinstance(method, C.Open):
            self._events.append(OpenVhost(method.virtual_host))
        elif isinstance(method, C.Close):
            self._send(0, C.CloseOk())
            self._closed(method.reply_code or 200, method.reply_text or "")
        elif isinstance(method, C.CloseOk):
            self._closed(200, "closed")
        elif isinstance(method, C.UpdateSecret):
            self._send(0, C.UpdateSecretOk())
        self.state = nxt

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
                raise AccessRefusedError("malformed PLAIN response") from e
        elif method.mechanism == "AMQPLAIN":
            try:
                _, table = field_table(struct.pack(">I", len(raw)) + raw)
            except Exception as e:  # whatever pamqp raises on a malformed or too deep table
                raise AccessRefusedError("malformed AMQPLAIN response") from e
            user, password = str(table.get("LOGIN", "")), str(table.get("PASSWORD", ""))
        else:
            raise AccessRefusedError(f"unsupported authentication mechanism "
                                     f"'{method.mechanism}'; use PLAIN or AMQPLAIN")
        self._events.append(Login(method.mechanism, user, password, self.client_properties))

    def _tune_ok(self, method: C.TuneOk) -> None:
        if method.frame_max and method.frame_max < constants.FRAME_MIN_SIZE:
            raise NotAllowedError(f"frame_max={method.frame_max} < "
                                  f"{constants.FRAME_MIN_SIZE} min size")
        if method.frame_max:
            self.frame_max = min(self.frame_max, method.frame_max)
        if method.channel_max:
            self.channel_max = min(self.channel_max, method.channel_max)
        self.heartbeat_s = method.heartbeat
        self._reader.frame_max = self.frame_max

    def _channel_frame(self, channel: int, frame: Any) -> None:
        ch = self.channels.get(channel)
        if isinstance(frame, Ch.Open):
            if ch is not None:
                raise ChannelError(f"second 'channel.open' seen on channel {channel}")
            if len(self.channels) >= self.channel_max:  # a count, as RabbitMQ checks it
                raise NotAllowedError(f"number of channels opened ({len(self.channels)}) has "
                                      f"reached the negotiated channel_max ({self.channel_max})")
            self.channels[channel] = _Channel()
            self._send(channel, Ch.OpenOk())
            self._events.append(ChannelOpened(channel))
            return
        if ch is None:
            if isinstance(frame, Ch.CloseOk):
                return  # both sides closed the channel at once: ours was answered already
            raise ChannelError(f"expected 'channel.open' on channel {channel}")
        if ch.state == st.CHANNEL_CLOSING:
            name = frame.name if isinstance(frame, Method) else ""
            if st.advance(st.CHANNEL, ch.state, name) == CLOSED:
                if isinstance(frame, Ch.Close):
                    self._send(channel, Ch.CloseOk())
                del self.channels[channel]
                self._events.append(ChannelClosed(channel))
            return  # everything else is dropped until the peer answers our close
        if ch.state != st.IDLE:
            self._content(channel, ch, frame)
            return
        if not isinstance(frame, Method):
            raise UnexpectedFrameError(f"unexpected content frame on channel {channel}")
        if frame.index >> 16 == C.frame_id:  # the connection class (10)
            raise UnexpectedMethodError(f"connection method {frame.name} on channel {channel}")
        name = frame.name  # the idle row of the table: named methods, or any other → IDLE
        nxt = st.IDLE_ROW.get(name) if name in st.NAMED_CHANNEL_METHODS else st.IDLE
        if nxt is None:
            raise UnexpectedFrameError(f"unexpected '{spec_name(frame.name)}' on channel {channel}")
        if nxt == CLOSED:
            del self.channels[channel]
            self._send(channel, Ch.CloseOk())
            self._events.append(ChannelClosed(channel))
        elif nxt == st.AWAIT_CONTENT_HEADER:
            ch.publish, ch.state = frame, nxt
        else:
            self._events.append(MethodReceived(channel, frame))

    def _content(self, channel: int, ch: _Channel, frame: Any) -> None:
        if ch.state == st.AWAIT_CONTENT_HEADER:
            if not isinstance(frame, codec.ContentHeader):
                raise UnexpectedFrameError(f"expected content header for 'basic.publish' on "
                                           f"channel {channel}, got {type(frame).__name__}")
            if frame.body_size > self.max_message_bytes:
                # Refused on the announced size, before a byte of the body is buffered; the
                # body frames that follow are dropped unread while the channel closes.
                self.close_channel(channel, PreconditionFailedError(
                    f"message size {frame.body_size} is larger than configured max size "
                    f"{self.max_message_bytes}"), B.Publish, keep_queued=True)
                self._events.append(ChannelClosed(channel))
                return
            headers = frame.message.headers
            if headers and (problem := header_problem(headers)):
                raise FrameSyntaxError(f"content header on channel {channel}: {problem}")
            ch.message, ch.body_size = frame.message, frame.body_size
            ch.state = st.AFTER_HEADER
        elif isinstance(frame, body.ContentBody):
            ch.parts.append(frame.value)
            ch.received += len(frame.value)
            if ch.received > ch.body_size:
                raise UnexpectedFrameError(f"content body larger than its header's "
                                           f"{ch.body_size} bytes on channel {channel}")
        else:
            raise UnexpectedFrameError(f"expected content body on channel {channel}, got "
                                       f"{type(frame).__name__}")
        if ch.received == ch.body_size:
            publish, message = ch.publish, ch.message
            assert publish is not None and message is not None
            message.body = ch.parts[0] if len(ch.parts) == 1 else b"".join(ch.parts)
            message.exchange, message.routing_key = publish.exchange, publish.routing_key
            ch.publish, ch.message, ch.parts, ch.received = None, None, [], 0
            ch.state = st.AFTER_LAST_BODY
            self._events.append(ContentReceived(channel, publish, message))

    # -- decisions -------------------------------------------------------------------------

    def accept_login(self) -> None:
        if self.state in (CLOSING, CLOSED):
            return  # the peer left while its login was checked
        self._move(st.LOGIN_ACCEPTED)
        self._send(0, C.Tune(self.channel_max, self.frame_max, self.heartbeat_s))
        self._release_held()

    def accept_open(self) -> None:
        if self.state in (CLOSING, CLOSED):
            return
        self._move(st.VHOST_OPENED)
        self._send(0, C.OpenOk())
        self._release_held()

    # -- output ----------------------------------------------------------------------------

    def _send(self, channel: int, method: Method) -> None:
        self._queue(encode_method(channel, method))

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self.pending_bytes += len(data)

    def send_method(self, channel: int, method: Method) -> None:
        if channel == 0 or channel in self.channels:
            self._send(channel, method)

    def send_content(self, channel: int, method: Method, message: Message,
                     extra_headers: dict[str, Any] | None = None) -> None:
        """A content-carrying method (basic.get-ok, basic.return) and ``message``."""
        if channel in self.channels:
            self._queue(encode_method(channel, method))
            self._queue(codec.encode_content(channel, message, extra_headers, self.frame_max))

    def send_delivery(self, channel: int, consumer_tag: str, delivery_tag: int,
                      redelivered: bool, message: Message,
                      extra_headers: dict[str, Any] | None) -> None:
        """basic.deliver with its content (the hand-written codec: the hot path)."""
        if channel in self.channels:
            self._queue(codec.encode_deliver(channel, consumer_tag, delivery_tag, redelivered,
                                             message, extra_headers, self.frame_max))

    def send_confirm(self, channel: int, delivery_tag: int, multiple: bool) -> None:
        """A publisher confirm (basic.ack)."""
        if channel in self.channels:
            self._queue(codec.encode_ack(channel, delivery_tag, multiple))

    def send_raw(self, data: bytes) -> None:
        self._queue(data)

    def close_channel(self, channel: int, error: TidingsError,
                      method: type[Method] | None = None, *, keep_queued: bool = False) -> None:
        """Close one channel with ``error``'s reply code (a channel exception). Its events not
        yet handed out are dropped, unless ``keep_queued``: when the error is found while
        parsing, what the client sent before it is still handled (a message published just
        before an oversized one is kept)."""
        ch = self.channels.get(channel)
        if ch is None or ch.state == st.CHANNEL_CLOSING:
            return
        ch.state = st.advance(st.CHANNEL, ch.state, st.WE_CLOSE) or st.CHANNEL_CLOSING
        ch.drop_from = self._popped + (len(self._events) if keep_queued else 0)
        ch.publish, ch.message, ch.parts, ch.received = None, None, [], 0
        class_id, method_id = _ids(method)
        self._send(channel, Ch.Close(error.reply_code, reply_text(error), class_id, method_id))

    def close(self, error: TidingsError, method: type[Method] | None = None) -> None:
        """Close the connection with ``error``, or just the channel if the error allows."""
        if self.state in (CLOSING, CLOSED):
            return
        if isinstance(error, RemoteProtocolError) and error.method is not None:
            method = error.method
        class_id, method_id = _ids(method)
        self._send(0, C.Close(error.reply_code, reply_text(error), class_id, method_id))
        if self.state != OPEN:
            # Before the connection is open there is nobody to wait for: say why and hang up
            # (also RabbitMQ's authentication_failure_close).
            self._closed(error.reply_code, str(error))
            return
        self._move(st.WE_CLOSE)
        self._reader = FrameReader(self.frame_max)  # drop whatever is buffered

    def _closed(self, code: int, text: str) -> None:
        self.state = CLOSED
        self._events.append(ConnectionClosed(code, text))


def spec_name(name: str) -> str:
    """pamqp's ``Channel.CloseOk`` as the spec writes it: ``channel.close-ok``."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "-", name).lower()


def _ids(method: type[Method] | None) -> tuple[int, int]:
    if method is None:
        return 0, 0
    return method.index >> 16, method.index & 0xFFFF
