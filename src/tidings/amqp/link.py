"""One client connection: socket ⇄ :class:`ServerConnection` ⇄ channels ⇄ the front door.

:class:`AmqpLink` is the ``asyncio.Protocol`` (not streams, on the hot path) of one client
connection. ``data_received`` feeds the sans-IO connection and hands every event it yields to
its handler (one table, :data:`EVENTS`); after the read it asks the broker for one durability
future for all publisher confirms counted in it (:mod:`tidings.amqp.confirms`) and writes what
the connection queued. Deliveries that happen later (another client's publish, a timer) are
flushed once per loop turn.

Also here: login and vhost open, heartbeats (sent when we are idle; a silent peer is dropped
and its unacked messages requeued), flow control (a slow reader stops deliveries to it; the
store's backlog and the server's alarms stop reading from publishers, with
connection.blocked). The link knows its server only as :class:`Listener`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import platform
import time
from collections.abc import Callable
from typing import Any, Protocol

from pamqp import commands

import tidings
from tidings import message_batches as batches
from tidings import transitions
from tidings.amqp.channel import AmqpChannel
from tidings.amqp.confirms import ConfirmBook, replies
from tidings.amqp.connection import (
    CLOSED,
    CLOSING,
    OPEN,
    ChannelClosed,
    ChannelOpened,
    ConnectionClosed,
    ContentReceived,
    Login,
    MethodReceived,
    OpenVhost,
    ServerConnection,
    reply_text,
)
from tidings.amqp.frames import HEARTBEAT_FRAME
from tidings.auth import UserStore
from tidings.errors import AccessRefusedError, InternalError, NotAllowedError, TidingsError
from tidings.routing.front_door import FrontDoor

log = logging.getLogger("tidings.amqp")

CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
    batches.CAPABILITY: True,
    transitions.CAPABILITY: True,
}
#: Seconds a client has from connecting (TLS handshake included) to an open connection, as
#: RabbitMQ's handshake_timeout; then it is dropped.
HANDSHAKE_TIMEOUT_S = 10.0
#: Seconds a peer has to answer our connection.close with close-ok before it is dropped.
CLOSE_TIMEOUT_S = 2.0
#: Bytes of deliveries a connection may have queued for its peer before dispatch to it pauses
#: (resumed once they are handed to the socket and the socket keeps up). Without it a consumer
#: with prefetch 0 or no_ack pulls a whole queue into memory in one pass of the loop.
OUTPUT_LIMIT_BYTES = 1 << 20
_ids = itertools.count(1)


def server_properties() -> dict[str, Any]:
    return {
        "product": "tidings",
        "version": tidings.__version__,
        "platform": f"Python {platform.python_version()}",
        "copyright": "tidings contributors",
        "information": "https://pypi.org/project/tidings/",
        "capabilities": CAPABILITIES,
        "cluster_name": f"tidings@{platform.node()}",
    }

class Listener(Protocol):
    """What a link uses of the server that accepted it (``AmqpServer`` is one)."""

    broker: FrontDoor
    users: UserStore
    frame_max: int
    heartbeat_s: int
    max_message_bytes: int
    handshake_timeout_s: float
    links: set[AmqpLink]


class AmqpLink(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: Listener) -> None:
        self.server, self.broker = server, server.broker
        self.connection_id = f"c{next(_ids)}"
        self.conn = ServerConnection(server_properties(), frame_max=server.frame_max,
                                     heartbeat_s=server.heartbeat_s,
                                     max_message_bytes=server.max_message_bytes)
        self.channels: dict[int, AmqpChannel] = {}
        self.username = ""
        self.vhost = "/"
        self.peer = "?"
        self.transport: asyncio.Transport | None = None
        self._flush_scheduled = False
        self._before_flush: list[Callable[[], None]] = []
        #: Publisher confirms counted by the channels, sent once the store is durable.
        self.confirms = ConfirmBook()
        self._last_recv = self._last_send = time.monotonic()
        self._heartbeat: asyncio.TimerHandle | None = None
        self.published = False
        self.blocked = False
        #: The alarm that blocked this connection (shown in /api/connections), or None.
        self.blocked_by: str | None = None
        #: Bytes a blocked connection may still send (to finish the messages in progress).
        self._blocked_allowance = 0
        #: Reading is paused by us (blocked, or waiting for the store).
        self._reading_paused = False
        self._store_wait = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._login_task: asyncio.Task[None] | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._connected_at = 0.0
        self._handshake_left_s = 0.0
        #: Why deliveries to this peer are paused: the socket's buffer is full (asyncio said
        #: so), or more than OUTPUT_LIMIT_BYTES wait to be written.
        self._socket_full = False
        self._output_full = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer_host = peer[0] if isinstance(peer, tuple) else None
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else (
            str(peer) or "unix socket")
        self.server.links.add(self)
        self.server.counts["connections_opened"] += 1
        self._arm_heartbeat()
        self._connected_at = time.monotonic()
        self._handshake_timer = asyncio.get_running_loop().call_later(
            self.server.handshake_timeout_s, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        if self.conn.state != OPEN and self.transport is not None:
            log.warning("connection %s did not complete the AMQP handshake within %.0f s: "
                        "dropped", self.peer, self.server.handshake_timeout_s)
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self._last_recv = time.monotonic()
        if self.blocked:
            self._blocked_allowance -= len(data)
        try:
            self.conn.receive_data(data)
        except Exception:  # a bug of ours: this connection fails, the server goes on
            log.exception("internal error reading from %s", self.peer)
            self.conn.close(InternalError("internal error reading the client's frames"))
        self._process()
        if self.blocked:
            self._update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.links.discard(self)
        self.server.counts["connections_closed"] += 1
        self.server.counts["channels_closed"] += len(self.channels)
        if self._login_task is not None:
            self._login_task.cancel()
        for timer in (self._heartbeat, self._close_timer, self._handshake_timer):
            if timer is not None:
                timer.cancel()
        for channel in list(self.channels.values()):
            channel.close()
        self.channels.clear()
        self.broker.close_connection(self.connection_id)
        if self.username:
            log.info("connection closed %s (user '%s'%s)", self.peer, self.username,
                     f": {exc}" if exc else "")

    def pause_writing(self) -> None:
        """The peer reads slower than we deliver: stop deliveries until it catches up."""
        self._socket_full = True
        self._set_output(False)

    def resume_writing(self) -> None:
        self._socket_full = False
        self._reopen_output()

    def connected_for(self) -> float:
        """Seconds since the connection was made."""
        return time.monotonic() - self._connected_at

    def delivered(self) -> None:
        """After each delivery: past the output limit, deliveries pause until it is written."""
        if self.conn.pending_bytes >= OUTPUT_LIMIT_BYTES and not self._output_full:
            self._output_full = True
            self._set_output(False)
        self.flush_soon()

    def _set_output(self, open_: bool) -> None:
        for channel in self.channels.values():
            channel.session.output_open = open_

    def _reopen_output(self) -> None:
        if self._socket_full or self._output_full or self.transport is None:
            return
        self._set_output(True)
        for channel in list(self.channels.values()):
            channel.session.dispatch()

    # -- events ----------------------------------------------------------------------------

    def _process(self) -> None:
        conn = self.conn
        while (event := conn.next_event()) is not None:
            channel = getattr(event, "channel", 0)
            try:
                EVENTS[type(event)](self, event)
            except Exception as e:
                method = type(event.method) if isinstance(event, MethodReceived |
                                                           ContentReceived) else None
                if not isinstance(e, TidingsError):  # a bug of ours: fail this connection only
                    log.exception("internal error on %s", self.peer)
                    e = InternalError(f"internal error: {type(e).__name__}")
                if e.closes_connection or channel == 0:
                    log.warning("connection error %s: %s", self.peer, reply_text(e))
                    conn.close(e, method)
                else:
                    self.channel_error(channel, e, method)
        self._send_confirms()
        self.flush()
        if conn.state == CLOSING and self._close_timer is None:
            # We sent connection.close: a peer that never answers close-ok is dropped.
            self._close_timer = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT_S, lambda: self.transport.abort() if self.transport else None)
        if self.broker.write_backlog_exceeded():
            self._wait_for_store()

    def _wait_for_store(self) -> None:
        """The store lags: read nothing more from this client until it has caught up."""
        if self.transport is None or self._store_wait:
            return
        self._store_wait = True
        self._update_reading()

        def resume(_: asyncio.Future[None]) -> None:
            self._store_wait = False
            self._update_reading()

        self.broker.sync().add_done_callback(resume)

    def _content(self, event: ContentReceived) -> None:
        channel = self.channels.get(event.channel)
        if channel is not None:  # (else closed by an error earlier in this read)
            self.published = True
            channel.publish(event)

    def _method(self, event: MethodReceived) -> None:
        channel = self.channels.get(event.channel)
        if channel is not None:
            channel.handle(event.method)

    def _channel_opened(self, event: ChannelOpened) -> None:
        channel = self.channels[event.channel] = AmqpChannel(self, event.channel)
        self.server.counts["channels_opened"] += 1
        channel.session.output_open = not (self._socket_full or self._output_full)

    def _channel_closed(self, event: ChannelClosed) -> None:
        channel = self.channels.pop(event.channel, None)
        if channel is not None:
            self.server.counts["channels_closed"] += 1
            channel.close()

    def _closed(self, event: ConnectionClosed) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def _login(self, event: Login) -> None:
        """Checked in a task: the password hash runs off the loop, and a peer whose logins
        keep failing is answered later and later (``auth.UserStore.authenticate_async``).
        The handshake timeout stops while our own work runs: a loaded server that is slow to
        hash a password does not drop a client that did its part in time."""
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self._handshake_left_s = max(self.server.handshake_timeout_s -
                                     (time.monotonic() - self._connected_at), 1.0)
        self._login_task = asyncio.get_running_loop().create_task(self._check_login(event))

    async def _check_login(self, event: Login) -> None:
        try:
            self.username = await self.server.users.authenticate_async(
                event.username, event.password, self.peer_host)
        except AccessRefusedError as e:
            log.warning("login refused %s: %s", self.peer, e)
            self.conn.close(AccessRefusedError(
                f"Login was refused using authentication mechanism {event.mechanism}. "
                f"For details see the broker logfile."))
        else:
            if self.conn.state != CLOSED:
                self._handshake_timer = asyncio.get_running_loop().call_later(
                    self._handshake_left_s, self._handshake_timed_out)
                self.conn.accept_login()
        self._process()

    def _open(self, event: OpenVhost) -> None:
        vhost = event.vhost
        try:
            self.server.users.check_vhost(self.username, vhost)
        except TidingsError as e:
            raise NotAllowedError(
                f"access to vhost '{vhost}' refused for user '{self.username}'"
            ) from e
        self.broker.declare_vhost(vhost)
        self.vhost = vhost
        self.conn.accept_open()
        self._arm_heartbeat()
        log.info("connection opened %s (user '%s', vhost '%s')", self.peer, self.username,
                 vhost)

    def channel_error(self, number: int, error: TidingsError, method: Any) -> None:
        log.info("channel error %s channel %d: %s", self.peer, number, reply_text(error))
        if error.closes_connection:
            self.conn.close(error, method)
        else:
            self.conn.close_channel(number, error, method)
        channel = self.channels.pop(number, None)
        if channel is not None:
            self.server.counts["channels_closed"] += 1
            channel.close()
        self.flush_soon()

    def check_permission(self, permission: str, kind: str, name: str) -> None:
        if name == "" and kind == "exchange":
            name = "amq.default"  # the default exchange's name for permissions, as in RabbitMQ
        self.server.users.check(self.username, self.vhost, permission, kind, name)  # type: ignore[arg-type]

    def capability(self, name: str) -> bool:
        caps = self.conn.client_properties.get("capabilities") or {}
        return bool(caps.get(name))

    # -- confirms and durability -----------------------------------------------------------

    def _send_confirms(self) -> None:
        """Answer the publishes counted in this read once the store has made them durable."""
        if not self.confirms:
            return
        channels = self.channels
        batches = [(number, channels.get(number), pending)
                   for number, pending in self.confirms.take().items()]
        counts = self.server.counts
        waiting = sum(len(pending) for _, _, pending in batches)
        counts["unconfirmed"] += waiting

        def done(future: asyncio.Future[None]) -> None:
            durable = not future.cancelled() and future.exception() is None
            counts["unconfirmed"] -= waiting
            if durable:
                counts["confirmed"] += sum(ok for _, _, pending in batches for _, ok in pending)
            conn = self.conn
            for number, channel, pending in batches:
                if channel is None or channels.get(number) is not channel:
                    continue  # closed meanwhile: its publishes are unconfirmed, as in RabbitMQ
                for reply in replies(pending, durable):
                    if reply.ack:
                        conn.send_confirm(number, reply.delivery_tag, reply.multiple)
                    else:
                        conn.send_method(number, commands.Basic.Nack(reply.delivery_tag,
                                                                     reply.multiple, False))
            self.flush()

        self.broker.sync().add_done_callback(done)

    def after_durable(self, action: Callable[[], None], *,
                      on_failure: Callable[[BaseException], None] | None = None) -> None:
        """Run ``action`` once what was done so far is durable; when the store failed, not
        ``action`` but ``on_failure`` (the publishes' confirms are nacks then)."""
        def done(future: asyncio.Future[None]) -> None:
            if future.cancelled() or future.exception() is not None:
                if on_failure is not None:
                    on_failure(future.exception() if not future.cancelled()
                               else asyncio.CancelledError())
                    self.flush()
                return
            action()
            self.flush()

        self.broker.sync().add_done_callback(done)

    # -- output ----------------------------------------------------------------------------

    def before_flush(self, action: Callable[[], None]) -> None:
        """Run ``action`` before the next write (a batch consumer packs what it gathered)."""
        self._before_flush.append(action)
        self.flush_soon()

    def write_gathered(self) -> None:
        """Run the before-flush actions now: batch consumers pack what they gathered into the
        output (before each write, and before a reply that must follow those deliveries)."""
        if self._before_flush:
            actions, self._before_flush = self._before_flush, []
            for action in actions:
                action()

    def flush(self) -> None:
        self._flush_scheduled = False
        self.write_gathered()
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)  # may call pause_writing
            self._last_send = time.monotonic()
        if self._output_full:
            # Written out: deliver more in a later turn, so one consumer cannot hold the loop
            # (or, while the socket is full, once asyncio calls resume_writing).
            self._output_full = False
            asyncio.get_running_loop().call_soon(self._reopen_output)

    def flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def close(self, error: TidingsError) -> None:
        self.conn.close(error)
        self.flush()

    # -- heartbeats and alarms -------------------------------------------------------------

    def _arm_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        interval = self.conn.heartbeat_s if self.conn.state == OPEN else 30
        if interval:
            self._heartbeat = asyncio.get_running_loop().call_later(
                interval / 2, self._beat, interval)

    def _beat(self, interval: int) -> None:
        now = time.monotonic()
        # (not while we read nothing from it ourselves: a blocked publisher is not dead, and
        # RabbitMQ pauses its heartbeat monitor too)
        if not self._reading_paused and now - self._last_recv > 2 * interval:
            log.warning("connection %s missed heartbeats for %.0f s: closing it", self.peer,
                        now - self._last_recv)
            if self.transport is not None:
                self.transport.abort()
            return
        if self.conn.state == OPEN and now - self._last_send >= interval / 2:
            self.conn.send_raw(HEARTBEAT_FRAME)
            self.flush()
        self._arm_heartbeat()

    def set_blocked(self, reason: str | None) -> None:
        """An alarm (memory, disk, a store that cannot write) was raised or cleared: tell a
        publishing peer with ``connection.blocked`` / ``unblocked`` and stop reading from it
        between messages."""
        if self.transport is None or self.conn.state != OPEN:
            return
        if reason is not None and not self.blocked and (self.published or
                                                         self.conn.receiving_content()):
            self.blocked, self.blocked_by = True, reason
            self._blocked_allowance = min(self.conn.content_remaining(),
                                          self.server.max_message_bytes)
            if self.capability("connection.blocked"):
                self.conn.send_method(0, commands.Connection.Blocked(reason[:255]))
                self.flush()
            self._update_reading()
        elif reason is None and self.blocked:
            self.blocked, self.blocked_by = False, None
            if self.capability("connection.blocked"):
                self.conn.send_method(0, commands.Connection.Unblocked())
                self.flush()
            self._update_reading()

    def _update_reading(self) -> None:
        """Read from the peer unless the store lags or an alarm blocks it. Blocked, reading
        stops only between messages: the messages whose bodies are arriving when the alarm
        comes are read to their end first (as RabbitMQ blocks at the next publish). Paused
        mid-message, blocked publishers would each hold part of a message that counts
        against the alarm, none could finish, and the alarm could never clear. What a
        blocked connection may still send is bounded: what those messages announced, at most
        one maximum message (a peer that keeps messages in progress on many channels cannot
        read on for ever)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        paused = self._store_wait or (self.blocked and (
            self._blocked_allowance <= 0 or not self.conn.receiving_content()))
        if paused:
            transport.pause_reading()
        elif self._reading_paused:
            transport.resume_reading()
            self._last_recv = time.monotonic()  # (its heartbeats were not read meanwhile)
        self._reading_paused = paused


#: The link's handler of each event the sans-IO connection yields.
EVENTS: dict[type, Callable[[AmqpLink, Any], None]] = {
    ContentReceived: AmqpLink._content,
    MethodReceived: AmqpLink._method,
    ChannelOpened: AmqpLink._channel_opened,
    ChannelClosed: AmqpLink._channel_closed,
    Login: AmqpLink._login,
    OpenVhost: AmqpLink._open,
    ConnectionClosed: AmqpLink._closed,
}
