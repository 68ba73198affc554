"""JetStream's pull protocol for the NATS engine: a loop that keeps one pull request open per
feed (a durable consumer of a stream) for as many messages as its consumer has room for, and
hands each message over as it arrives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

log = logging.getLogger("tidings.client.nats")

#: Seconds a pull request waits on the server for messages before it is renewed.
PULL_EXPIRES_S = 5.0

TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError, nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError, nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError, nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError)


def pull_status(msg: Msg) -> str | None:
    headers = msg.headers
    if headers and not msg.data and "Status" in headers:
        return headers["Status"]
    return None


@dataclass(slots=True)
class Feed:
    """One durable pull consumer a queue is read from."""

    stream: str
    durable: str
    #: The pattern the client must still check (a ``#`` NATS cannot express), or None.
    pattern: str | None = None


@dataclass(eq=False)
class Pull:
    """A loop reading one feed for one consumer: one pull request at a time, for as many
    messages as the consumer's prefetch has room for."""

    nc: NatsClient
    feed: Feed
    room: Callable[[], int]
    deliver: Callable[[Msg, Feed], None]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    _done: asyncio.Event = field(default_factory=asyncio.Event)
    _expected: int = 0
    _task: asyncio.Task[None] | None = None
    _stopped: bool = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        nc = self.nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=self._arrived)
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.feed.stream}.{self.feed.durable}"
        try:
            while not self._stopped:
                room = self.room()
                if room <= 0:
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                self._done.clear()
                self._expected = room
                request = {"batch": room, "expires": int(PULL_EXPIRES_S * 1e9)}
                try:
                    await nc.publish(subject, json.dumps(request).encode(), reply=inbox)
                    # a reconnection loses the request silently: renew it after its expiry
                    await asyncio.wait_for(self._done.wait(), PULL_EXPIRES_S + 1)
                except (TimeoutError, *TRANSIENT):
                    await asyncio.sleep(0.05)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _arrived(self, msg: Msg) -> None:
        status = pull_status(msg)
        if status is not None:
            if status not in ("404", "408", "100"):
                log.debug("pull on %s: status %s %s", self.feed.stream, status,
                          (msg.headers or {}).get("Description"))
                await asyncio.sleep(0.2)
            if status != "100":
                self._done.set()
            return
        self._expected -= 1
        if self._expected <= 0:
            self._done.set()
        self.deliver(msg, self.feed)

    async def stop(self) -> None:
        """End the loop. The flag, not the cancellation alone, ends it: Python 3.11's
        ``wait_for`` loses a cancellation that meets a completion."""
        self._stopped = True
        self.wake.set()
        self._done.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=PULL_EXPIRES_S + 2)


async def quietly(call: Any) -> None:
    with contextlib.suppress(Exception):
        await call
