"""The Kafka listener: the one asyncio driver of :mod:`tidings.kafka.protocol`, and the
dispatch of each request to what answers it (topics, produce, fetch).

Kafka clients pipeline requests and expect the responses in the order they asked. Each
connection answers what it can at once (metadata, configs) and runs Produce and Fetch as
tasks; responses leave strictly in request order. At most :data:`MAX_IN_FLIGHT` requests
are open per connection: past that, the connection stops reading, so a client that sends
faster than the broker makes its appends durable waits (back-pressure), and memory stays
bounded. A request the protocol refuses closes the connection with a log line (as Kafka
does); a handler's error does the same, never a traceback to the client or a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from kio.schema.errors import ErrorCode

from tidings.kafka.fetch import Fetching
from tidings.kafka.produce import Producing
from tidings.kafka.protocol import (
    KafkaConnection,
    KafkaProtocolError,
    KafkaRequest,
    api_versions_refusal,
    make,
    nested,
    produce_refusal,
    response_schema,
)
from tidings.kafka.settings import KafkaSettings
from tidings.kafka.topics import NO_THROTTLE, Topics
from tidings.kafka.versions import (
    API_VERSIONS,
    CREATE_TOPICS,
    DELETE_TOPICS,
    DESCRIBE_CONFIGS,
    FETCH,
    INIT_PRODUCER_ID,
    LIST_OFFSETS,
    METADATA,
    PRODUCE,
    SUPPORTED,
)
from tidings.routing.front_door import FrontDoor

__all__ = ["KafkaServer"]

log = logging.getLogger("tidings.kafka")

#: Requests one connection may have open before it stops reading.
MAX_IN_FLIGHT = 32


class KafkaServer:
    """One Kafka listener on one vhost of the broker."""

    def __init__(self, broker: FrontDoor, settings: KafkaSettings) -> None:
        self.broker = broker
        self.settings = settings
        self.topics = Topics(broker, settings)
        self.producing = Producing(broker, self.topics, settings)
        self.fetching = Fetching(broker, self.topics, settings)
        self.links: set[KafkaLink] = set()
        self._servers: list[asyncio.base_events.Server] = []

    async def listen(self, host: str, port: int) -> int:
        """Start listening; returns the bound port (``port`` 0 picks one)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: KafkaLink(self), host, port)
        self._servers.append(server)
        bound = int(server.sockets[0].getsockname()[1])
        if not self.settings.port:
            self.settings.port = bound
        return bound

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for link in list(self.links):
            link.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    # -- answering --------------------------------------------------------------------------

    def answer(self, request: KafkaRequest) -> Any:
        """The response entity (or an awaitable of it; None: no response)."""
        body, key = request.body, request.api_key
        if request.refused is not None:
            if key == API_VERSIONS:
                return api_versions_refusal()
            return produce_refusal(request)
        schema = response_schema(request)
        if key == PRODUCE:
            return self.producing.produce(body, schema)
        if key == FETCH:
            return self.fetching.fetch(body, schema)
        if key == METADATA:
            return self.topics.metadata(request.api_version, body, schema)
        if key == API_VERSIONS:
            version_type = nested(schema, "ApiVersion")
            versions = tuple(make(version_type, api_key=k, min_version=lo, max_version=hi)
                             for k, (lo, hi) in sorted(SUPPORTED.items()))
            return make(schema, error_code=ErrorCode.none, throttle_time=NO_THROTTLE,
                        api_keys=versions)
        if key == LIST_OFFSETS:
            return self.fetching.list_offsets(body, schema)
        if key == INIT_PRODUCER_ID:
            return self.producing.init_producer_id(body, schema)
        if key == DESCRIBE_CONFIGS:
            return self.topics.describe_configs(body, schema)
        if key == CREATE_TOPICS:
            return self._durable(self.topics.create_topics(body, schema))
        if key == DELETE_TOPICS:
            for name in body.topic_names:
                self.producing.forget(name)
            return self._durable(self.topics.delete_topics(body, schema))
        raise AssertionError(f"{request.name} is advertised but not answered")

    async def _durable(self, response: Any) -> Any:
        """``response`` once the changes behind it are on disk."""
        await self.broker.sync()
        return response


class KafkaLink(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: KafkaServer) -> None:
        self.server = server
        self.connection = KafkaConnection(server.settings.max_request_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        #: Responses in request order: bytes ready, a task still running, or None (none due).
        self._pending: deque[tuple[KafkaRequest, Any]] = deque()
        self._paused = False
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is not a subclass)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.server.links.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.links.discard(self)
        for _, pending in self._pending:
            if isinstance(pending, asyncio.Task):
                pending.cancel()
        self._pending.clear()

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            requests = self.connection.receive_data(data)
        except KafkaProtocolError as e:
            log.warning("kafka connection %s closed: %s", self.peer, e)
            self.close()
            return
        for request in requests:
            self._start(request)
        self._flush()

    def _start(self, request: KafkaRequest) -> None:
        try:
            answer = self.server.answer(request)
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
        if self._paused and len(self._pending) < MAX_IN_FLIGHT // 2:
            self._paused = False
            self.transport.resume_reading()
