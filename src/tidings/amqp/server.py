"""The asyncio driver: sockets ⇄ :class:`ServerConnection` ⇄ the broker's front door.

One :class:`AmqpLink` (an ``asyncio.Protocol``, not streams, on the hot path) per client
connection. ``data_received`` feeds the sans-IO connection, handles every event it yields,
asks the broker for one durability future for all publisher confirms of that read, and writes
what the connection queued. Deliveries that happen later (another client's publish, a timer)
are flushed once per loop turn.

Also here: heartbeats (sent when we are idle, a silent peer is dropped and its unacked messages
requeued), flow control (a slow reader stops deliveries to it; memory and disk alarms block
publishers with connection.blocked), and a clean shutdown (connection.close 320).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import platform
import shutil
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pamqp import commands

import tidings
from tidings.amqp.channel import AmqpChannel
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
from tidings.errors import (
    AccessRefusedError,
    BrokenResourceError,
    InternalError,
    NotAllowedError,
    TidingsError,
)
from tidings.resources import rss_mb as process_rss_mb
from tidings.routing.front_door import FrontDoor
from tidings.values import MAX_MESSAGE_BYTES

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
#: Seconds between checks of the memory and disk alarms.
ALARM_CHECK_S = 1.0
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


class AmqpLink(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: AmqpServer) -> None:
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
        self._confirming: dict[int, AmqpChannel] = {}
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
                self._handle(event)
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

    def _handle(self, event: Any) -> None:
        if isinstance(event, ContentReceived | MethodReceived):
            channel = self.channels.get(event.channel)
            if channel is None:
                return  # closed by an error earlier in this read; the peer will hear of it
            if isinstance(event, ContentReceived):
                self.published = True
                channel.publish(event)
            else:
                channel.handle(event.method)
        elif isinstance(event, ChannelOpened):
            channel = self.channels[event.channel] = AmqpChannel(self, event.channel)
            channel.session.output_open = not (self._socket_full or self._output_full)
        elif isinstance(event, ChannelClosed):
            channel = self.channels.pop(event.channel, None)
            if channel is not None:
                channel.close()
        elif isinstance(event, Login):
            self._login(event)
        elif isinstance(event, OpenVhost):
            self._open(event.vhost)
        elif isinstance(event, ConnectionClosed):
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

    def _open(self, vhost: str) -> None:
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

    def confirm_later(self, channel: AmqpChannel) -> None:
        self._confirming[channel.number] = channel

    def _send_confirms(self) -> None:
        if not self._confirming:
            return
        batches = [(ch, ch.unconfirmed) for ch in self._confirming.values()]
        for ch, _ in batches:
            ch.unconfirmed = []
        self._confirming.clear()

        def done(future: asyncio.Future[None]) -> None:
            failed = future.cancelled() or future.exception() is not None
            for ch, pending in batches:
                ch.send_confirms(pending, failed)
            self.flush()

        self.broker.sync().add_done_callback(done)

    def after_durable(self, action: Callable[[], None]) -> None:
        def done(_: asyncio.Future[None]) -> None:
            action()
            self.flush()

        self.broker.sync().add_done_callback(done)

    # -- output ----------------------------------------------------------------------------

    def flush(self) -> None:
        self._flush_scheduled = False
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


class AmqpServer:
    """Listens for AMQP connections and owns their links."""

    def __init__(self, broker: FrontDoor, users: UserStore, *, heartbeat_s: int = 60,
                 frame_max: int = 131072, memory_high_watermark_mb: float | None = None,
                 disk_free_limit_mb: float | None = None, data_dir: Path | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES,
                 handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
        self.broker, self.users = broker, users
        self.handshake_timeout_s = handshake_timeout_s
        self.max_message_bytes = max_message_bytes
        self.heartbeat_s, self.frame_max = heartbeat_s, frame_max
        self.memory_high_watermark_mb = memory_high_watermark_mb
        self.disk_free_limit_mb = disk_free_limit_mb
        self.data_dir = data_dir
        self.links: set[AmqpLink] = set()
        self.servers: list[asyncio.Server] = []
        self.alarm: str | None = None
        self._alarm_task: asyncio.Task[None] | None = None

    async def listen(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Start listening; returns the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: AmqpLink(self), host, port, ssl=tls, reuse_address=True,
                ssl_handshake_timeout=self.handshake_timeout_s if tls else None)
        except OSError as e:
            raise BrokenResourceError(
                f"cannot listen on {host}:{port}: {os.strerror(e.errno or 0)}") from e
        self.servers.append(server)
        if self._alarm_task is None:
            self._alarm_task = loop.create_task(self._watch_alarms())
        return int(server.sockets[0].getsockname()[1])

    async def listen_unix(self, path: Path) -> None:
        """Listen on a Unix socket (owner-only, like the data directory that holds it)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by an owner that died; we hold the directory's lock now
        try:
            server = await loop.create_unix_server(lambda: AmqpLink(self), str(path))
        except OSError as e:
            raise BrokenResourceError(f"cannot listen on {path}: {e.strerror or e}") from e
        os.chmod(path, 0o600)
        self.servers.append(server)

    async def _watch_alarms(self) -> None:
        while True:
            await asyncio.sleep(ALARM_CHECK_S)
            alarm = self.check_alarms()
            if _kind(alarm) != _kind(self.alarm):
                log.warning("%s", f"alarm raised: {alarm}" if alarm else "alarm cleared")
            self.alarm = alarm
            for link in list(self.links):
                link.set_blocked(alarm)

    def held_mb(self) -> float:
        """What the broker holds in memory for its clients, MiB: queued message bytes plus
        every connection's buffers. Unlike RSS it falls when queues drain, so the alarm clears."""
        held = self.broker.held_bytes()
        for link in self.links:
            held += link.conn.buffered_bytes()
            if link.transport is not None:
                held += link.transport.get_write_buffer_size()
        return held / 2**20

    def check_alarms(self) -> str | None:
        if error := self.broker.write_error():
            return f"cannot write to the store: {error}"
        if self.memory_high_watermark_mb is not None:
            held_mb = self.held_mb()
            if held_mb > self.memory_high_watermark_mb:
                return f"low on memory: {held_mb:.0f} MB of messages and buffers held " \
                       f"(watermark {self.memory_high_watermark_mb:.0f} MB, process RSS " \
                       f"{process_rss_mb():.0f} MB)"
        if self.disk_free_limit_mb is not None and self.data_dir is not None:
            free_mb = shutil.disk_usage(self.data_dir).free / 2**20
            if free_mb < self.disk_free_limit_mb:
                return (f"low on disk: {free_mb:.0f} MB free, "
                        f"limit {self.disk_free_limit_mb:.0f} MB")
        return None

    async def close(self) -> None:
        """Stop listening and close every connection with 320 CONNECTION_FORCED."""
        if self._alarm_task is not None:
            self._alarm_task.cancel()
        for server in self.servers:
            server.close()
        forced = BrokenResourceError("broker shutdown")
        for link in list(self.links):
            link.close(forced)
        await self.broker.sync()
        for link in list(self.links):
            if link.transport is not None:
                link.transport.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)


def _kind(alarm: str | None) -> str | None:
    """What an alarm is about (``low on memory``), without its changing numbers."""
    return None if alarm is None else alarm.split(":")[0]
