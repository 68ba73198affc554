"""tidings streams on NATS JetStream: a stream ``s`` is the JetStream stream ``TS_<s>`` (limits
retention: ``max_bytes`` and ``max_age`` are JetStream's own), a record's offset is its
sequence less one, a reader is an ephemeral pull consumer that starts where the reader asks
(JetStream's deliver policies: all, last, new, by sequence, by time) and asks for as many
records as its consumer has room for. A named reader's committed offset is the last message
on its subject in ``TIDINGS_READERS`` (one kept per subject), so a reader of that name in any
process resumes after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api

from tidings.client.engine import stream_statistics
from tidings.client.nats_pull import Feed, Pull
from tidings.client.nats_subjects import (
    LOG_STREAM_PREFIX,
    META_HEADER,
    READERS_STREAM,
    log_stream_name,
    log_subject,
    reader_subject,
    unescape,
)
from tidings.client.remote import message_of
from tidings.client.tokens import Token
from tidings.client.transport import StreamSpec
from tidings.errors import NotFoundError
from tidings.message import Message
from tidings.statistics import StreamStatistics
from tidings.stream_starts import OFFSET, Start, parse_age

#: Seconds an abandoned reader's consumer lives on the server (its client died).
READER_INACTIVE_S = 300.0


class JetStreamCalls(Protocol):
    """What the stream logs use of the NATS engine."""

    nc: NatsClient
    js: Any

    async def jetstream(self, call: Callable[[], Awaitable[Any]], what: str) -> Any: ...

    async def store(self, items: list[tuple[str, bytes, dict[str, str]]], what: str) -> None: ...

    def headers_of(self, message: Message, scope: str = "") -> dict[str, str]: ...

    async def declare(self, config: api.StreamConfig, what: str) -> None: ...


class LogReader:
    """One reader of a stream: its ephemeral consumer and the pull loop on it."""

    def __init__(self, engine: JetStreamCalls, stream: str, consumer: str,
                 room: Callable[[], int], arrived: Callable[[Token], None]) -> None:
        self.engine, self.stream, self.arrived = engine, stream, arrived
        self.feed = Feed(log_stream_name(stream), consumer)
        self.pull = Pull(engine.nc, self.feed, room, self._deliver)
        self.pull.start()

    def _deliver(self, msg: Msg, feed: Feed) -> None:
        message = message_of(msg.data, (msg.headers or {}).get(META_HEADER), self.stream)
        meta = msg.metadata
        message.headers = {**(message.headers or {}), OFFSET: meta.sequence.stream - 1}
        appended_ms = meta.timestamp.timestamp() * 1000 if meta.timestamp else 0.0
        self.arrived(Token(self.stream, message, 0, appended_ms, None))

    def wake(self) -> None:
        self.pull.wake.set()

    async def stop(self) -> None:
        await self.pull.stop()
        with contextlib.suppress(Exception):  # (else the server drops it once inactive)
            await asyncio.wait_for(self.engine.js.delete_consumer(
                self.feed.stream, self.feed.durable), 2)


class JetStreamLogs:
    """The stream verbs of the NATS engine."""

    def __init__(self, engine: JetStreamCalls) -> None:
        self.engine = engine
        self._readers_ready = False

    async def create(self, name: str, spec: StreamSpec) -> None:
        max_age_ms = parse_age(spec.max_age) if spec.max_age else None
        config = api.StreamConfig(
            name=log_stream_name(name), subjects=[log_subject(name)],
            description=json.dumps({"stream": name, "max_bytes": spec.max_bytes,
                                    "max_age": spec.max_age}),
            retention=api.RetentionPolicy.LIMITS, storage=api.StorageType.FILE,
            max_bytes=spec.max_bytes if spec.max_bytes is not None else -1,
            max_age=max_age_ms / 1000 if max_age_ms else None,
            discard=api.DiscardPolicy.OLD,
            duplicate_window=min(120.0, max_age_ms / 1000) if max_age_ms else 120.0)
        await self.engine.declare(config, f"declare stream '{name}'")

    async def exists(self, name: str) -> bool:
        try:
            await self.engine.jetstream(lambda: self.engine.js.stream_info(
                log_stream_name(name)), f"stream '{name}'")
        except NotFoundError:
            return False
        return True

    async def append(self, stream: str, messages: Sequence[Message]) -> None:
        subject, headers_of = log_subject(stream), self.engine.headers_of
        await self.engine.store([(subject, m.body, headers_of(m)) for m in messages],
                                f"append to '{stream}'")

    async def reader(self, stream: str, start: Start, room: Callable[[], int],
                     arrived: Callable[[Token], None]) -> LogReader:
        config = await self._consumer_config(stream, start)
        info = await self.engine.jetstream(lambda: self.engine.js.add_consumer(
            log_stream_name(stream), config=config), f"read stream '{stream}'")
        return LogReader(self.engine, stream, info.name, room, arrived)

    async def _consumer_config(self, stream: str, start: Start) -> api.ConsumerConfig:
        """An ephemeral consumer that starts where ``start`` says (an offset past the tail
        starts at the tail, as on the embedded broker)."""
        kind, n = start
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE, inactive_threshold=READER_INACTIVE_S,
            mem_storage=True, deliver_policy={
                "first": api.DeliverPolicy.ALL, "last": api.DeliverPolicy.LAST,
                "next": api.DeliverPolicy.NEW}.get(kind, api.DeliverPolicy.ALL))
        if kind == "offset":
            info = await self.engine.jetstream(lambda: self.engine.js.stream_info(
                log_stream_name(stream)), f"read stream '{stream}'")
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(1, min(n + 1, int(info.state.last_seq) + 1))
        elif kind == "time":
            config.deliver_policy = api.DeliverPolicy.BY_START_TIME
            config.opt_start_time = datetime.datetime.fromtimestamp(n / 1000, datetime.UTC)
        return config

    async def end(self, stream: str) -> int:
        info = await self.engine.jetstream(lambda: self.engine.js.stream_info(
            log_stream_name(stream)), f"stream '{stream}'")
        return int(info.state.last_seq)

    async def commit(self, stream: str, reader: str, offset: int) -> None:
        if not self._readers_ready:
            await self.engine.declare(api.StreamConfig(
                name=READERS_STREAM, subjects=["tidings.r.>"], max_msgs_per_subject=1,
                retention=api.RetentionPolicy.LIMITS, storage=api.StorageType.FILE),
                "declare the readers' stream")
            self._readers_ready = True
        await self.engine.store([(reader_subject(stream, reader), str(offset).encode(), {})],
                                f"commit reader '{reader}' of '{stream}'")

    async def statistics(self) -> list[StreamStatistics]:
        js, found, infos = self.engine.js, [], []
        while page := await self.engine.jetstream(
                lambda: js.streams_info(offset=len(infos)), "statistics"):
            infos.extend(page)  # (the API answers 256 at a time)
        for info in infos:
            if not info.config.name.startswith(LOG_STREAM_PREFIX):
                continue
            name = json.loads(info.config.description or "{}").get("stream")
            if not isinstance(name, str):
                continue
            state, end = info.state, int(info.state.last_seq)
            readers = [(reader, offset, await self._appended_ms(name, offset + 2))
                       for reader, offset in await self._readers(name)]
            found.append(stream_statistics(
                name, records=int(state.messages), size=int(state.bytes),
                first=max(0, int(state.first_seq) - 1), end=end,
                first_ms=await self._appended_ms(name, int(state.first_seq)),
                last_ms=await self._appended_ms(name, end), readers=readers,
                max_bytes=info.config.max_bytes if (info.config.max_bytes or -1) > 0 else None,
                max_age_s=info.config.max_age or None))
        return found

    async def _appended_ms(self, stream: str, seq: int) -> float | None:
        """When the record of sequence ``seq`` was appended (None: there is none)."""
        if seq < 1:
            return None
        try:
            raw = await self.engine.js.get_msg(log_stream_name(stream), seq=seq)
        except Exception:  # gone (retention) or not yet written
            return None
        return raw.time.timestamp() * 1000 if raw.time is not None else None

    async def _readers(self, stream: str) -> list[tuple[str, int]]:
        """Every named reader of ``stream`` with its committed offset."""
        prefix = reader_subject(stream, "")
        try:
            info = await self.engine.js.stream_info(READERS_STREAM,
                                                   subjects_filter=prefix + ">")
        except Exception:  # no reader has committed yet
            return []
        found = []
        for subject in info.state.subjects or {}:
            offset = await self.committed(stream, unescape(subject[len(prefix):]))
            if offset is not None:
                found.append((unescape(subject[len(prefix):]), offset))
        return found

    async def committed(self, stream: str, reader: str) -> int | None:
        try:
            found = await self.engine.jetstream(lambda: self.engine.js.get_last_msg(
                READERS_STREAM, reader_subject(stream, reader)), f"reader '{reader}'")
        except NotFoundError:
            return None
        with contextlib.suppress(ValueError):
            return int(found.data)
        return None

