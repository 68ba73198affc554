"""One Kafka client connection: the asyncio Protocol that feeds bytes to the sans-IO core
(:mod:`tidings.kafka.protocol`), hands each request to its listener, and writes the answers.

Kafka clients pipeline requests and expect the responses in the order they asked: the link
keeps them in a line and writes each once the ones before it are out, answers given at once
or awaited (Produce's durability, Fetch's long poll, a rebalance). At most
:data:`MAX_IN_FLIGHT` requests are open per connection: past that the link stops reading, so
a client that sends faster than the broker makes its appends durable waits, and memory stays
bounded. A request the protocol refuses closes the connection with a log line (as Kafka
does); so does a handler's error, never a traceback to the client or a hang. The link knows
its listener only as :class:`Listener`, so nothing here imports the server back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Protocol

from tidings.auth import UserStore
from tidings.kafka.access import Access
from tidings.kafka.protocol import KafkaConnection, KafkaProtocolError, KafkaRequest
from tidings.kafka.sasl import SaslExchange
from tidings.kafka.settings import KafkaSettings
from tidings.kafka.vhost import KafkaVhost

__all__ = ["MAX_IN_FLIGHT", "KafkaLink", "Listener"]

log = logging.getLogger("tidings.kafka")

#: Requests one connection may have open before it stops reading.
MAX_IN_FLIGHT = 32


class Listener(Protocol):
    """What a link asks of the listener it came in on."""

    settings: KafkaSettings
    users: UserStore | None
    links: set[KafkaLink]
    #: Bytes of requests begun but not whole yet, over every connection.
    buffered_bytes: int

    def vhost(self, name: str) -> KafkaVhost: ...

    def access_of(self, peer_host: str | None) -> Access: ...

    def answer(self, link: KafkaLink, request: KafkaRequest) -> Any: ...


class KafkaLink(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: Listener, port: int) -> None:
        self.server = server
        #: The port clients are told to connect to on this connection's listener.
        self.port = port
        self.connection = KafkaConnection(server.settings.max_request_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.host = ""
        self.access = Access(None, server.settings.vhost)
        #: The vhost whose topics and groups this connection sees.
        self.on = server.vhost(server.settings.vhost)
        self.sasl: SaslExchange | None = None
        #: A failed login: the connection ends once its answer is sent.
        self.close_after_answer = False
        #: Sweeps of the listener's idle check since it last sent or was sent something.
        self.quiet_sweeps = 0
        #: Responses in request order: bytes ready, a task still running, or None (none due).
        self._pending: deque[tuple[KafkaRequest, Any]] = deque()
        self._paused = False
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is not a subclass)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.host = str(peer[0]) if isinstance(peer, tuple) else ""
        self.access = self.server.access_of(self.host)
        if self.server.users is not None:
            self.sasl = SaslExchange(self.server.users, self.server.settings.vhost, self.host)
        self.server.links.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.links.discard(self)
        self.server.buffered_bytes -= self.connection.buffered
        self.connection.discard()
        for _, pending in self._pending:
            if isinstance(pending, asyncio.Task):
                pending.cancel()
        self._pending.clear()

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.close()

    @property
    def busy(self) -> bool:
        """Requests open, or one arriving: not idle."""
        return bool(self._pending) or self.connection.buffered > 0

    def data_received(self, data: bytes) -> None:
        self.quiet_sweeps = 0
        held = self.connection.buffered
        try:
            requests = self.connection.receive_data(data)
        except KafkaProtocolError as e:
            log.warning("kafka connection %s closed: %s", self.peer, e)
            self.close()
            return
        self.server.buffered_bytes += self.connection.buffered - held
        if self.connection.buffered and \
                self.server.buffered_bytes > self.server.settings.queued_max_request_bytes:
            log.warning("kafka connection %s closed: the broker holds %d bytes of unfinished "
                        "requests, more than --kafka-queued-max-request-bytes", self.peer,
                        self.server.buffered_bytes)
            self.close()
            return
        for request in requests:
            self._start(request)
        self._flush()

    def _start(self, request: KafkaRequest) -> None:
        try:
            answer = self.server.answer(self, request)
        except KafkaProtocolError as e:
            log.warning("kafka connection %s closed: %s", self.peer, e)
            self.close()
            return
        except Exception:
            log.exception("kafka connection %s: %s failed; closing it", self.peer,
                          request.name)
            self.close()
            return
        if asyncio.iscoroutine(answer):  # (Produce appended already: only its answer waits)
            task = asyncio.ensure_future(answer)
            task.add_done_callback(lambda _: self._flush())
            self._pending.append((request, task))
        else:
            self._pending.append((request, answer))
        if len(self._pending) >= MAX_IN_FLIGHT and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def _flush(self) -> None:
        """Write every response at the head of the line that is ready."""
        if self._closed or self.transport is None:
            return
        out = []
        while self._pending:
            request, answer = self._pending[0]
            if isinstance(answer, asyncio.Task):
                if not answer.done():
                    break
                if answer.cancelled() or answer.exception() is not None:
                    if not answer.cancelled():
                        log.error("kafka connection %s: %s failed; closing it", self.peer,
                                  request.name, exc_info=answer.exception())
                    self.close()
                    return
                answer = answer.result()
            self._pending.popleft()
            if answer is not None:
                try:
                    out.append(self.connection.response(request, answer))
                except Exception:
                    log.exception("kafka connection %s: the answer to %s failed; closing it",
                                  self.peer, request.name)
                    self.close()
                    return
        if out:
            self.transport.write(b"".join(out))
            self.quiet_sweeps = 0
        if self.close_after_answer and not self._pending:
            self.close()
            return
        if self._paused and len(self._pending) < MAX_IN_FLIGHT // 2:
            self._paused = False
            self.transport.resume_reading()
