"""The listening side of the AMQP face: sockets (TCP, TLS, the data directory's Unix socket),
the set of live :class:`~tidings.amqp.link.AmqpLink` connections, resource alarms (memory,
disk, a store that cannot write) that block publishers, and a clean shutdown
(connection.close 320 to everyone, after the store is durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import ssl
from pathlib import Path

from tidings.amqp.link import HANDSHAKE_TIMEOUT_S, AmqpLink
from tidings.auth import UserStore
from tidings.errors import BrokenResourceError
from tidings.resources import rss_mb as process_rss_mb
from tidings.routing.front_door import FrontDoor
from tidings.values import MAX_MESSAGE_BYTES

log = logging.getLogger("tidings.amqp")

#: The server's own counts (:attr:`AmqpServer.counts`).
COUNTS = ("connections_opened", "connections_closed", "channels_opened", "channels_closed",
          "confirmed", "unconfirmed")
#: Seconds between checks of the memory and disk alarms.
ALARM_CHECK_S = 1.0


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
        #: What RabbitMQ counts per node: connections and channels opened and closed,
        #: publishes confirmed, and (a gauge) publishes waiting for their confirm.
        self.counts = dict.fromkeys(COUNTS, 0)

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
