"""A data directory shared by several processes, with no server to run.

The first process to open a directory takes its lock (``storage/lock.py``: the kernel's
``flock``, released even on ``kill -9``) and owns it: it runs the broker in-process, as
``tidings.connect`` always did, and also serves AMQP on a Unix socket inside the directory
(``amqp.sock``, owner-only like the directory). It writes the token that admits its neighbours
to ``owner.json`` (0600). A later process finds the lock held and connects to that socket with
the AMQP transport instead, transparently.

When the owner exits or dies, its socket closes; every other process then tries the lock
again. The lock decides: exactly one becomes the new owner (it reopens the store, so nothing
confirmed is lost) and the rest reconnect to it. The reconnecting wrapper
(:mod:`tidings.client.resilient`) replays their queues, bindings and consumers and resends any
send whose confirm was lost, with the same message ids. ``tidings serve`` on a directory listens
on the same socket, so embedded processes join a running server the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tidings.client.local import LocalTransport
from tidings.client.transport import Transport
from tidings.errors import BrokenResourceError, ResourceLockedError

log = logging.getLogger("tidings.client")

SOCKET_NAME = "amqp.sock"
OWNER_FILE = "owner.json"
#: Seconds a newcomer keeps trying to reach the owner (which may be starting, or handing over).
JOIN_TIMEOUT_S = 10.0


async def start_owner_socket(server: Any, directory: Path) -> None:
    """Serve the directory's socket from ``server`` (an AmqpServer of the owning process) and
    publish how to log in to it."""
    await server.listen_unix(directory / SOCKET_NAME)
    token = server.users.control_token()
    tmp = directory / f"{OWNER_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "token": token}, f)
    os.replace(tmp, directory / OWNER_FILE)


class OwnerTransport(LocalTransport):
    """The owner's embedded transport, which also serves the directory to its neighbours."""

    def __init__(self, broker: Any, server: Any, directory: Path) -> None:
        super().__init__(broker)
        self.server, self.directory = server, directory

    async def close(self) -> None:
        await leave_directory(self.server, self.directory)
        await super().close()


async def leave_directory(server: Any, directory: Path) -> None:
    """Stop serving the directory: neighbours are told (320) and look for the next owner."""
    for name in (OWNER_FILE, SOCKET_NAME):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    await server.close()


async def open_shared(directory: Path) -> Transport:
    """The directory's broker: owned here if the lock is free, else reached through its owner.
    An owner stays one for life, so only a process that joined gets the reconnecting layer
    (and the embedded hot path stays a direct call into the broker)."""
    from tidings.client.resilient import ResilientTransport

    first = await own_or_join(directory)
    if isinstance(first, OwnerTransport):
        return first
    return await ResilientTransport(lambda: own_or_join(directory)).open(first)


def _start_broker(directory: Path) -> Any:
    """The directory's broker, started in this process; ResourceLockedError when another
    process owns the directory."""
    from tidings.routing.broker import Broker
    from tidings.storage.sqlite import SqliteStore

    broker = Broker(SqliteStore(directory))
    broker.start()
    return broker


async def open_directory(directory: Path) -> Transport:
    """The directory's broker in this process only, serving no one else (the CLI's commands
    on a stopped directory)."""
    return LocalTransport(_start_broker(directory))


async def own_or_join(directory: Path) -> Transport:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + JOIN_TIMEOUT_S
    while True:
        try:
            return await _own(directory)
        except ResourceLockedError as locked:
            try:
                return await _join(directory)
            except BrokenResourceError as e:
                if loop.time() > deadline:
                    raise BrokenResourceError(
                        f"{locked}, and its owner cannot be reached at "
                        f"{directory / SOCKET_NAME}: {e}") from e
                await asyncio.sleep(0.05)  # the owner is starting or handing over


async def _own(directory: Path) -> Transport:
    from tidings.amqp.server import AmqpServer
    from tidings.auth import UserStore

    broker = _start_broker(directory)
    server = AmqpServer(broker, UserStore(directory))
    try:
        await start_owner_socket(server, directory)
    except BaseException:
        await server.close()
        broker.close()
        raise
    log.info("process %d owns data directory %s", os.getpid(), directory)
    return OwnerTransport(broker, server, directory)


async def _join(directory: Path) -> Transport:
    from tidings.auth import CONTROL_USER
    from tidings.client.amqp import AmqpTransport

    try:
        token = json.loads((directory / OWNER_FILE).read_text())["token"]
    except (OSError, ValueError, KeyError) as e:
        raise BrokenResourceError(f"no owner file in {directory}") from e
    url = f"amqp://{quote(CONTROL_USER, safe='')}:{quote(token, safe='')}@localhost/"
    transport = AmqpTransport(url, unix_socket=str(directory / SOCKET_NAME),
                              connection_name=f"tidings pid {os.getpid()}")
    try:
        return await transport.open()
    except Exception as e:
        raise BrokenResourceError(str(e)) from e
