"""tidings streams on Redis Streams: a stream ``s`` is the Redis stream ``tidings:s:<s>``
whose entry ids are ``<offset + 1>-0``, so offsets are dense and a read from an offset is one
``XREAD`` after the id before it. Each entry keeps its body and properties, its append time
and its size; one script appends (numbering from the hash of stream ends) and applies the
retention (``max_age``, ``max_bytes``: whole records from the head). A start by time is a
binary search over offsets; a named reader's committed offset is a field of the hash
``tidings:readers:<s>``. Readers do not use consumer groups: each reads on its own, and an
ack only gives it credit.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from tidings.client.engine import stream_statistics
from tidings.client.remote import message_of
from tidings.client.tokens import Token
from tidings.client.transport import StreamSpec
from tidings.codecs import encode_meta
from tidings.errors import PreconditionFailedError
from tidings.message import Message
from tidings.statistics import StreamStatistics
from tidings.stream_starts import OFFSET, Start, offset_of, parse_age

log = logging.getLogger("tidings.client.redis")

STREAMS = "tidings:streams"
ENDS = "tidings:stream-ends"
SIZES = "tidings:stream-bytes"
#: How long one blocking read waits before it looks again (ms).
BLOCK_MS = 1000


def log_key(stream: str) -> str:
    return f"tidings:s:{stream}"


class RedisCalls(Protocol):
    """What the stream logs use of the Redis engine."""

    r: Any
    transient: tuple[type[BaseException], ...]

    async def call(self, call: Callable[[], Awaitable[Any]], what: str) -> Any: ...

    async def replicate(self) -> None: ...


class LogReader:
    """One reader of a stream: a loop reading after the last id it handed over."""

    def __init__(self, logs: RedisLogs, stream: str, after: int, room: Callable[[], int],
                 arrived: Callable[[Token], None]) -> None:
        self.logs, self.stream, self.after = logs, stream, after
        self.room, self.arrived = room, arrived
        self._wake = asyncio.Event()
        self.stopped = False
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        r, key = self.logs.engine.r, log_key(self.stream)
        while not self.stopped:
            n = self.room()
            if n <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                reply = await r.xread({key: f"{self.after}-0"}, count=n, block=BLOCK_MS)
            except self.logs.engine.transient as e:
                log.debug("reading stream '%s' failed: %r; again shortly", self.stream, e)
                await asyncio.sleep(0.2)
                continue
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    self.after = int(entry_id.split(b"-")[0])
                    self.arrived(self.logs.token_of(self.stream, self.after - 1, fields))

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self.stopped = True  # the loop's condition: a cancellation alone can be lost
        self._wake.set()
        self.task.cancel()
        await asyncio.wait([self.task], timeout=BLOCK_MS / 1000 + 16)


class RedisLogs:
    """The stream verbs of the Redis engine."""

    def __init__(self, engine: RedisCalls, append_script: Any) -> None:
        self.engine, self._append = engine, append_script
        self._specs: dict[str, tuple[int, int]] = {}  # stream -> (max bytes, max age ms)

    async def create(self, name: str, spec: StreamSpec) -> None:
        text = json.dumps({"max_bytes": spec.max_bytes, "max_age": spec.max_age})
        r = self.engine.r
        existing = await self.engine.call(lambda: r.hget(STREAMS, name), f"stream '{name}'")
        if existing is not None and json.loads(existing) != json.loads(text):
            raise PreconditionFailedError(f"stream '{name}' exists with other retention")
        await self.engine.call(lambda: r.hset(STREAMS, name, text), f"stream '{name}'")

    async def exists(self, name: str) -> bool:
        return bool(await self.engine.call(lambda: self.engine.r.hexists(STREAMS, name),
                                           f"stream '{name}'"))

    async def _retention(self, name: str) -> tuple[int, int]:
        found = self._specs.get(name)
        if found is None:
            text = await self.engine.call(lambda: self.engine.r.hget(STREAMS, name),
                                          f"stream '{name}'")
            spec = json.loads(text or "{}")
            found = self._specs[name] = (int(spec.get("max_bytes") or 0),
                                         int(parse_age(spec.get("max_age")) or 0))
        return found

    async def append(self, stream: str, messages: Sequence[Message]) -> None:
        max_bytes, max_age = await self._retention(stream)
        args: list[Any] = [stream, max_bytes, max_age]
        for m in messages:
            args += [m.body, encode_meta(m)]
        await self.engine.call(lambda: self._append(keys=[log_key(stream), ENDS, SIZES],
                                                    args=args), f"append to '{stream}'")
        await self.engine.replicate()

    def token_of(self, stream: str, offset: int, fields: dict[bytes, bytes]) -> Token:
        message = message_of(fields.get(b"b", b""), fields.get(b"m"), stream)
        message.headers = {**(message.headers or {}), OFFSET: offset}
        return Token(stream, message, 0, float(fields.get(b"t", b"0") or 0), None)

    async def end(self, stream: str) -> int:
        return int(await self.engine.call(lambda: self.engine.r.hget(ENDS, stream),
                                          f"stream '{stream}'") or 0)

    async def reader(self, stream: str, start: Start, room: Callable[[], int],
                     arrived: Callable[[Token], None]) -> LogReader:
        return LogReader(self, stream, await self._offset_of(stream, start), room, arrived)

    async def _offset_of(self, stream: str, start: Start) -> int:
        """The offset a start means now (past the tail: the tail; before the first
        retained record: that record)."""
        end, first = await self.end(stream), await self._first(stream)
        found = offset_of(start, first, end)
        if found is not None:
            return found
        n = start[1]  # a time (the core turns an age into one)
        lo, hi = first, end  # the first record appended at or after n
        while lo < hi:
            mid = (lo + hi) // 2
            found = await self.engine.r.xrange(log_key(stream), f"{mid + 1}-0", f"{mid + 1}-0")
            appended = float(found[0][1].get(b"t", b"0")) if found else n
            lo, hi = (mid + 1, hi) if appended < n else (lo, mid)
        return lo

    async def _first(self, stream: str) -> int:
        head = await self.engine.r.xrange(log_key(stream), "-", "+", count=1)
        return int(head[0][0].split(b"-")[0]) - 1 if head else await self.end(stream)

    async def commit(self, stream: str, reader: str, offset: int) -> None:
        await self.engine.call(lambda: self.engine.r.hset(f"tidings:readers:{stream}", reader,
                                                          offset), f"commit '{reader}'")
        await self.engine.replicate()

    async def statistics(self) -> list[StreamStatistics]:
        r, found = self.engine.r, []
        names = await self.engine.call(lambda: r.hgetall(STREAMS), "statistics")
        sizes = await r.hgetall(SIZES)
        for raw, text in sorted(names.items()):
            name, spec = raw.decode(), json.loads(text or "{}")
            end, first = await self.end(name), await self._first(name)
            readers = [(reader.decode(), int(offset), await self._appended_ms(name, int(offset)
                                                                             + 1))
                       for reader, offset in (await r.hgetall(f"tidings:readers:{name}")).items()]
            age_ms = parse_age(spec.get("max_age"))
            found.append(stream_statistics(
                name, records=end - first, size=int(sizes.get(raw, 0) or 0), first=first,
                end=end, first_ms=await self._appended_ms(name, first),
                last_ms=await self._appended_ms(name, end - 1), readers=readers,
                max_bytes=spec.get("max_bytes"), max_age_s=age_ms / 1000 if age_ms else None))
        return found

    async def _appended_ms(self, stream: str, offset: int) -> float | None:
        """When the record at ``offset`` was appended (None: there is none)."""
        if offset < 0:
            return None
        entry = await self.engine.r.xrange(log_key(stream), f"{offset + 1}-0", f"{offset + 1}-0")
        return float(entry[0][1].get(b"t", b"0")) if entry else None

    async def committed(self, stream: str, reader: str) -> int | None:
        found = await self.engine.call(lambda: self.engine.r.hget(
            f"tidings:readers:{stream}", reader), f"reader '{reader}'")
        return None if found is None else int(found)
