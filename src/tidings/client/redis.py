"""The Redis Streams engine (``redis://``, ``rediss://``) of the engine core, on redis-py:
only Redis calls (its Lua scripts are :mod:`tidings.client.redis_scripts`). The delivery
rules are the core's (:mod:`tidings.client.engine`); here is how they land on Redis.

How tidings' concepts map onto Redis (docs/redis.md says it for users):

- **A queue** is a stream ``tidings:q:<name>`` read through the consumer group ``tidings``;
  every process is a consumer of its own name in it. An entry holds the body (``b``), the
  message's properties as JSON (``m``) and the failed deliveries it had before it was written
  (``c``). An acknowledged entry is deleted (XACK and XDEL in one script), so a stream holds
  what is waiting and what is being worked on. The rules the client enforces (delivery limit,
  dead letters, TTL, consumer timeout, priorities) are kept in the hash ``tidings:queues``
  so every process applies the same.
- **Redelivery**: a delivery whose consumer died or stopped renewing it is claimed by another
  consumer with XAUTOCLAIM once it has been idle for the consumer timeout (30 s unless the
  queue says otherwise); the delivery count comes from the pending list. A live process
  renews what it holds (XCLAIM ... JUSTID), so a long handler is never delivered twice.
- **Nack, retry, dead letters**: one script acks and deletes the entry and writes it again,
  with its failure count, to the queue, to the delayed set or to ``<name>.dead`` (with
  RabbitMQ's ``x-death`` history). The delivery limit is applied when a delivery arrives.
- **Delays**: a sorted set ``tidings:delayed`` scored by due time, each message in a hash of
  its own; every connected client runs a script that atomically moves due messages into
  their streams.
- **Priorities**: one stream per level (``tidings:q:<name>:p<level>``), read highest first.
- **Events**: bindings are kept in the set ``tidings:bindings``; the publish script matches
  the topic against every binding and appends to each matching queue, atomically.
- **Durability** is the Redis server's: with ``appendonly yes`` and ``appendfsync always`` a
  confirmed send survives a crash; otherwise it does not, and ``capabilities.durable`` says so.
  ``?wait_replicas=N`` in the URL makes every write wait (``WAIT``) until N replicas have it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions as rerr

from tidings.client import redis_scripts as lua
from tidings.client.engine import PRIVATE_PREFIX
from tidings.client.redis_streams import RedisLogs
from tidings.client.remote import (
    TLS_OPTIONS,
    QueueRules,
    broker_statistics,
    connect_timeout_s,
    message_of,
    queue_statistics,
    redact,
    retrying,
    url_options,
)
from tidings.client.tokens import Stored, Token
from tidings.client.transport import Capabilities, QueueSpec
from tidings.codecs import encode_meta
from tidings.errors import (
    AccessRefusedError,
    BrokenResourceError,
    ConfigError,
    InvalidArgumentError,
    NotFoundError,
    PreconditionFailedError,
)
from tidings.message import Message
from tidings.statistics import BrokerStatistics

log = logging.getLogger("tidings.client.redis")

GROUP = "tidings"
QUEUES = "tidings:queues"
BINDINGS = "tidings:bindings"
DELAYED = "tidings:delayed"
DELAYED_COUNTS = "tidings:delayed:counts"
#: Priority levels a Redis queue may have (one stream each).
MAX_PRIORITY = 10
#: How long a blocking read waits before it looks for stale deliveries to claim.
BLOCK_MS = 1000

_TRANSIENT: tuple[type[BaseException], ...] = (
    rerr.ConnectionError, rerr.TimeoutError, rerr.BusyLoadingError, OSError)


def stream_key(queue: str, level: int = 0) -> str:
    return f"tidings:q:{queue}" if level <= 0 else f"tidings:q:{queue}:p{level}"


def redis_capabilities(broker: str = "Redis", durable: bool = False,
                       why_not_durable: str = "") -> Capabilities:
    reasons = [("latency_statistics", "Redis counts entries but does not time them"),
               ("machines", "not yet (a script could write the instance, its messages and "
                            "the ack in one step): run the machine on tidings serve or a data "
                            "directory")]
    if not durable:
        reasons.append(("durable", why_not_durable or
                        "depends on the server: set appendonly yes and appendfsync always"))
    return Capabilities(broker, durable=durable, latency_statistics=False,
                        reasons=tuple(reasons))


class _Reader:
    """A consumer's reading of one queue: a loop that claims stale deliveries (their
    consumer died) and reads new ones, highest priority first, while there is room."""

    def __init__(self, engine: RedisEngine, queue: str, room: Callable[[], int],
                 arrived: Callable[[Token], None]) -> None:
        self.engine, self.queue, self.room, self.arrived = engine, queue, room, arrived
        self._wake = asyncio.Event()
        self.stopped = False
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        engine, queue = self.engine, self.queue
        while not self.stopped:
            room = self.room()
            if room <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                entries = await engine.claim(queue, room)
                if not entries:
                    entries = await engine.read(queue, room, BLOCK_MS)
            except _TRANSIENT as e:
                log.debug("reading '%s' failed: %r; again shortly", queue, e)
                await asyncio.sleep(0.2)
                continue
            for entry in entries:
                self.arrived(engine.token_of(queue, *entry))

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True  # the loop's condition: a cancellation alone can be lost
        self._wake.set()
        self.task.cancel()
        await asyncio.wait([self.task], timeout=BLOCK_MS / 1000 + 16)
        self.engine.readers.discard(self)


#: Query options a redis:// URL takes: tidings' own and the redis-py ones that make sense here
#: (rediss:// takes the TLS ones too).
_REDIS_OPTIONS = ("wait_replicas", "wait_timeout_ms", "db", "client_name", "protocol",
                  "socket_timeout", "socket_connect_timeout", "health_check_interval")


class RedisEngine:
    """The :class:`~tidings.client.engine.Engine` of Redis Streams."""

    transient = _TRANSIENT

    def __init__(self, url: str, *, ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        query = url_options(url, _REDIS_OPTIONS + (
            TLS_OPTIONS if parts.scheme.lower() == "rediss" else ()))
        self._connect_timeout_s = connect_timeout_s(query)
        query.pop("connect_timeout", None)
        db = parts.path.strip("/") or "0"
        if not db.isdigit():
            raise ConfigError(f"'{db}' in {redact(url)} is not a Redis database number")
        self._wait_replicas = int(query.pop("wait_replicas", "0"))
        self._wait_timeout_ms = int(query.pop("wait_timeout_ms", "1000"))
        self.url = urlunsplit(parts._replace(query=urlencode(query)))
        # no call may wait forever on a connection whose server vanished: every read times
        # out (blocking reads wait BLOCK_MS, far less) and is then retried
        options: dict[str, Any] = {"decode_responses": False, "health_check_interval": 10,
                                   "socket_timeout": 15, "socket_connect_timeout": 5}
        if ssl_context is not None:
            options["ssl_context"] = ssl_context  # type: ignore[assignment]
        self.r = aioredis.from_url(self.url, **options)
        self.consumer_name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.capabilities = redis_capabilities()
        #: rules, priority levels, max length
        self._rules: dict[str, tuple[QueueRules, int, int | None]] = {}
        self._private: list[str] = []
        self.readers: set[_Reader] = set()
        self._scripts = {name: self.r.register_script(text) for name, text in (
            ("send", lua.SEND), ("publish", lua.PUBLISH), ("ack", lua.ACK),
            ("rewrite", lua.REWRITE), ("move", lua.MOVE_DUE), ("cancel", lua.CANCEL_DELAYED))}
        self._mover: asyncio.Task[None] | None = None
        self._closing = False
        self._outbox: dict[tuple[str, str, Any], list[tuple[list[Any], asyncio.Future[Any]]]] = {}
        self._flush_soon = False
        self._last_claim: dict[str, float] = {}
        #: The stream verbs (client/redis_streams.py).
        self.logs = RedisLogs(self, self.r.register_script(lua.APPEND_RECORDS))

    async def open(self) -> None:
        try:
            info = await asyncio.wait_for(self.r.info("server"), self._connect_timeout_s)
        except TimeoutError:
            await self.r.aclose()
            raise BrokenResourceError(
                f"cannot connect to {redact(self.url)}: no Redis answer within "
                f"{self._connect_timeout_s:g} s (is Redis listening there? ?connect_timeout= "
                f"sets the limit)") from None
        except rerr.AuthenticationError as e:
            raise AccessRefusedError(f"login refused by {redact(self.url)}: {e}") from e
        except rerr.ResponseError as e:
            if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
                raise AccessRefusedError(f"login refused by {redact(self.url)}: {e}") from e
            if "DB index" in str(e):
                raise ConfigError(f"{redact(self.url)}: {e} (the database number in the URL "
                                  f"is beyond what this Redis has)") from e
            raise BrokenResourceError(f"cannot use {redact(self.url)}: {e}") from e
        except (rerr.ConnectionError, OSError) as e:
            raise BrokenResourceError(f"cannot connect to {redact(self.url)}: {e}") from e
        version = str(info.get("redis_version", ""))
        durable, why = await self._durability()
        self.capabilities = redis_capabilities(f"Redis {version}".strip(), durable, why)
        self._mover = asyncio.get_running_loop().create_task(self._move_due())

    async def _durability(self) -> tuple[bool, str]:
        """Whether a confirmed write survives a crash of this Redis (its AOF settings)."""
        try:
            config = await self.r.config_get("append*")
        except rerr.ResponseError:
            return False, ("this Redis does not show its persistence settings (CONFIG is "
                           "disabled); durability is whatever its operator configured")
        aof = config.get(b"appendonly", b"no") == b"yes"
        fsync = config.get(b"appendfsync", b"everysec").decode()
        if aof and fsync == "always":
            return True, ""
        if aof:
            return False, (f"this Redis writes its AOF with appendfsync {fsync}: a crash can "
                           f"lose the last second of confirmed writes; set appendfsync always")
        return False, ("this Redis keeps nothing durable on disk (appendonly no): set "
                       "appendonly yes and appendfsync always")

    async def call(self, call: Callable[[], Any], what: str) -> Any:
        try:
            return await retrying(call, _TRANSIENT, what)
        except rerr.ResponseError as e:
            text = str(e)
            if text.startswith("FULL"):
                raise PreconditionFailedError(f"{what}: the queue is full (max_length)") from e
            if text.startswith("NOGROUP"):
                raise NotFoundError(f"{what}: no such queue") from e
            raise

    async def replicate(self) -> None:
        if self._wait_replicas:
            got = await self.r.wait(self._wait_replicas, self._wait_timeout_ms)
            if int(got) < self._wait_replicas:
                raise BrokenResourceError(
                    f"only {got} of {self._wait_replicas} replicas confirmed the write within "
                    f"{self._wait_timeout_ms} ms")

    # -- declarations ----------------------------------------------------------------------

    async def create_queue(self, name: str, spec: QueueSpec, rules: QueueRules) -> None:
        if spec.max_priority is not None and not 0 <= spec.max_priority <= MAX_PRIORITY:
            raise InvalidArgumentError(
                f"max_priority must be 0..{MAX_PRIORITY} on Redis (a stream per level)")
        if name.startswith(PRIVATE_PREFIX):
            self._private.append(name)
        await self._create(name, rules, (spec.max_priority or 0) + 1, spec.max_length)

    async def _create(self, name: str, rules: QueueRules, levels: int,
                      max_length: int | None) -> None:
        text = json.dumps({"rules": json.loads(rules.dumps()), "levels": levels,
                           "max_length": max_length})
        existing = await self.call(lambda: self.r.hget(QUEUES, name), f"declare '{name}'")
        if existing is not None and json.loads(existing) != json.loads(text):
            raise PreconditionFailedError(f"queue '{name}' exists with other settings")
        for level in range(levels):
            with contextlib.suppress(rerr.ResponseError):  # BUSYGROUP: it exists
                await self.call(lambda lv=level: self.r.xgroup_create(
                    stream_key(name, lv), GROUP, id="0", mkstream=True), f"declare '{name}'")
        await self.call(lambda: self.r.hset(QUEUES, name, text), f"declare '{name}'")
        self._rules[name] = (rules, levels, max_length)

    async def _queue(self, name: str) -> tuple[QueueRules, int, int | None]:
        """The queue's rules, priority levels and max length (read once per process)."""
        known = self._rules.get(name)
        if known is None:
            text = await self.call(lambda: self.r.hget(QUEUES, name), f"queue '{name}'")
            if text is None:
                raise NotFoundError(f"no queue '{name}' on {self.capabilities.broker}")
            data = json.loads(text)
            known = self._rules[name] = (QueueRules.loads(json.dumps(data.get("rules"))),
                                         int(data.get("levels", 1)), data.get("max_length"))
        return known

    async def read_rules(self, name: str) -> QueueRules:
        rules, _, _ = await self._queue(name)
        return rules

    async def bind(self, queue: str, pattern: str, rules: QueueRules) -> None:
        await self.call(lambda: self.r.sadd(BINDINGS, f"{pattern}\x1f{queue}"),
                         f"bind '{queue}' to '{pattern}'")

    # -- writing ---------------------------------------------------------------------------

    @staticmethod
    def _fields(message: Message, failures: int = 0) -> list[Any]:
        return [message.body, encode_meta(message), str(failures)]

    async def append(self, queue: str, messages: Sequence[Message],
                     due_ms: int | None) -> None:
        _, levels, max_length = await self._queue(queue)
        if due_ms is not None:
            for message in messages:
                await self._delay(queue, levels, message, 0, due_ms, None)
        else:
            by_level: dict[int, list[Any]] = {}
            for m in messages:
                by_level.setdefault(_level(m, levels), []).extend(self._fields(m))
            await asyncio.gather(*(
                self._batched("send", stream_key(queue, level), max_length or 0, args)
                for level, args in by_level.items()))
        await self.replicate()

    def _batched(self, script: str, key: str, head: Any, tail: list[Any]) -> asyncio.Future[Any]:
        """Run ``script`` on ``key`` with ``head`` and ``tail``, together with every other call
        of this loop turn for the same script, key and head: one pipelined round trip for
        all the sends and publishes made at once (a ``gather`` of single sends included)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        batch = self._outbox.setdefault((script, key, head), [])
        batch.append((tail, future))
        if not self._flush_soon:
            self._flush_soon = True
            loop.call_soon(lambda: loop.create_task(self._flush()))
        return future

    async def _flush(self) -> None:
        outbox, self._outbox, self._flush_soon = self._outbox, {}, False
        calls = list(outbox.items())

        async def run() -> list[Any]:
            for _ in range(2):
                async with self.r.pipeline(transaction=False) as pipe:
                    for (script, key, head), items in calls:
                        args = [head, *(a for tail, _ in items for a in tail)]
                        pipe.evalsha(self._scripts[script].sha, 1, key, *args)
                    results = list(await pipe.execute(raise_on_error=False))
                if not any(isinstance(r, rerr.NoScriptError) for r in results):
                    break
                for known in self._scripts.values():  # a restarted Redis forgot them
                    await self.r.script_load(known.script)
            return results

        try:
            results = await self.call(run, "send")
        except Exception as e:
            results = [e] * len(calls)
        for (_, items), result in zip(calls, results, strict=True):
            for _, future in items:
                if future.done():
                    continue
                if isinstance(result, rerr.ResponseError) and str(result).startswith("FULL"):
                    future.set_exception(PreconditionFailedError(
                        "send: the queue is full (max_length)"))
                elif isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _delay(self, queue: str, levels: int, message: Message, failures: int,
                     due_ms: int, settle: tuple[str, str] | None) -> None:
        """Put ``message`` in the delayed set (settling the entry ``settle`` in the same
        script)."""
        target = stream_key(queue, _level(message, levels))
        key, entry = settle if settle is not None else (target, "0-0")
        await self.call(lambda: self._scripts["rewrite"](
            keys=[key, target],
            args=[GROUP, entry, *self._fields(message, failures), due_ms, queue,
                  uuid.uuid4().hex]), f"delay a message for '{queue}'")

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        args: list[Any] = []
        for m in messages:
            args.extend(self._fields(m)[:2])
        await self._batched("publish", BINDINGS, topic, args)
        await self.replicate()

    async def _move_due(self) -> None:
        """Move due delayed messages into their queues, waking for the next one due."""
        while not self._closing:
            try:
                nxt = await self._scripts["move"](args=[int(time.time() * 1000), 500])
                wait_s = 0.5 if int(nxt) < 0 else (int(nxt) - time.time() * 1000) / 1000
            except Exception as e:
                log.debug("moving delayed messages failed: %r", e)
                wait_s = 0.5
            await asyncio.sleep(min(0.5, max(0.005, wait_s)))

    # -- reading ---------------------------------------------------------------------------

    async def read(self, queue: str, count: int, block_ms: int | None
                    ) -> list[tuple[str, str, dict[bytes, bytes], int]]:
        _, levels, _ = await self._queue(queue)
        keys = {stream_key(queue, lv): ">" for lv in range(levels - 1, -1, -1)}
        reply = await self.r.xreadgroup(GROUP, self.consumer_name, keys, count=count,
                                        block=block_ms)
        found: list[tuple[int, str, str, dict[bytes, bytes], int]] = []
        order = list(keys)
        for key, entries in reply or []:
            k = key.decode()
            for entry_id, fields in entries:
                found.append((order.index(k), k, entry_id.decode(), fields, 1))
        found.sort(key=lambda e: e[0])  # highest priority first
        return [(k, i, f, c) for _, k, i, f, c in found[:count]]

    async def claim(self, queue: str, count: int
                     ) -> list[tuple[str, str, dict[bytes, bytes], int]]:
        """Deliveries idle for longer than the consumer timeout (their consumer died),
        claimed for this one, with their delivery counts; looked for once a second."""
        now = time.monotonic()
        if now - self._last_claim.get(queue, 0.0) < 1.0:
            return []
        self._last_claim[queue] = now
        rules, levels, _ = await self._queue(queue)
        found = []
        for level in range(levels - 1, -1, -1):
            key = stream_key(queue, level)
            reply = await self.r.xautoclaim(key, GROUP, self.consumer_name,
                                            rules.consumer_timeout_ms, "0-0", count=count)
            entries = [(i, f) for i, f in reply[1] if f] if reply else []
            if not entries:
                continue
            ids = [i for i, _ in entries]
            pending = await self.r.xpending_range(key, GROUP, min=ids[0], max=ids[-1],
                                                  count=len(ids) + 100)
            counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
            for i, f in entries:
                found.append((key, i.decode(), f, counts.get(i, 2)))
            count -= len(entries)
            if count <= 0:
                break
        return found

    def token_of(self, queue: str, key: str, entry_id: str, fields: dict[bytes, bytes],
                delivered: int) -> Token:
        """An entry read from the stream ``key`` of ``queue``: its failures are those written
        with it and the deliveries the group counted beyond this one."""
        message = message_of(fields.get(b"b", b""), fields.get(b"m"), queue)
        failures = int(fields.get(b"c", b"0") or 0) + delivered - 1
        return Token(queue, message, failures, int(entry_id.split("-")[0]), (key, entry_id))

    async def reader(self, queue: str, room: Callable[[], int],
                     arrived: Callable[[Token], None]) -> _Reader:
        reader = _Reader(self, queue, room, arrived)
        self.readers.add(reader)
        return reader

    async def read_one(self, queue: str) -> Token | None:
        entries = await self.call(lambda: self.read(queue, 1, None), f"get '{queue}'")
        if not entries:
            self._last_claim.pop(queue, None)
            entries = await self.call(lambda: self.claim(queue, 1), f"get '{queue}'")
        return self.token_of(queue, *entries[0]) if entries else None

    # -- settling --------------------------------------------------------------------------

    async def settle(self, tokens: Sequence[Token]) -> None:
        for key, ids in _by_stream(tokens).items():
            await self.call(lambda k=key, i=ids: self._scripts["ack"](keys=[k],
                                                                      args=[GROUP, *i]), "ack")
        await self.replicate()

    async def rewrite(self, token: Token, queue: str, message: Message, failures: int,
                      due_ms: int | None) -> None:
        """One script settles the entry and writes it again: to the delayed set, back into
        the stream it came from, or into another queue's stream."""
        key, entry_id = token.handle
        if due_ms is not None:
            _, levels, _ = await self._queue(queue)
            await self._delay(queue, levels, message, failures, due_ms, (key, entry_id))
        else:
            if queue == token.queue:
                target = key
            else:
                _, levels, _ = await self._queue(queue)
                target = stream_key(queue, _level(message, levels))
            await self.call(lambda: self._scripts["rewrite"](
                keys=[key, target],
                args=[GROUP, entry_id, *self._fields(message, failures), 0, queue, ""]),
                f"move a message of '{token.queue}' to '{queue}'")
        await self.replicate()

    async def renew(self, tokens: Sequence[Token]) -> None:
        for key, ids in _by_stream(tokens).items():
            await self.r.xclaim(key, GROUP, self.consumer_name, 0, ids, justid=True)

    # -- looking at and editing queues -----------------------------------------------------

    async def _waiting(self, queue: str, limit: int | None = None
                       ) -> list[tuple[str, str, dict[bytes, bytes]]]:
        """Entries of ``queue`` not being worked on, highest priority first, oldest first."""
        _, levels, _ = await self._queue(queue)
        found = []
        for level in range(levels - 1, -1, -1):
            key = stream_key(queue, level)
            pending = {p["message_id"] for p in await self.call(
                lambda k=key: self.r.xpending_range(k, GROUP, "-", "+", 100_000), "browse")}
            for entry_id, fields in await self.call(lambda k=key: self.r.xrange(k), "browse"):
                if entry_id not in pending:
                    found.append((key, entry_id.decode(), fields))
                    if limit is not None and len(found) >= limit:
                        return found
        return found

    async def scan(self, queue: str, delayed: bool = False) -> AsyncIterator[Stored]:
        for key, entry_id, fields in await self._waiting(queue):
            yield Stored(message_of(fields.get(b"b", b""), fields.get(b"m"), queue),
                         (key, entry_id))
        if not delayed:
            return
        for delay_id in await self.call(lambda: self.r.zrange(DELAYED, 0, -1), "scan"):
            fields = await self.r.hgetall(f"tidings:d:{delay_id.decode()}")
            if fields.get(b"n", b"").decode() == queue:
                yield Stored(message_of(fields.get(b"b", b""), fields.get(b"m"), queue),
                             (DELAYED, delay_id))

    async def remove(self, queue: str, stored: Stored) -> bool:
        key, entry = stored.handle
        if key == DELAYED:
            return bool(await self.call(lambda: self._scripts["cancel"](args=[entry, queue]),
                                         f"delete from '{queue}'"))
        return bool(await self.call(lambda: self.r.xdel(key, entry), f"delete from '{queue}'"))

    async def restore(self, stored: Stored, queue: str, message: Message) -> None:
        key, entry = stored.handle
        _, levels, _ = await self._queue(queue)
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.xadd(stream_key(queue, _level(message, levels)),
                      dict(zip((b"b", b"m", b"c"), self._fields(message), strict=True)))
            pipe.xdel(key, entry)
            await pipe.execute()
        await self.replicate()

    async def purge(self, queue: str) -> int:
        removed = 0
        for key, entry_id, _ in await self._waiting(queue):
            removed += int(await self.call(lambda k=key, e=entry_id: self.r.xdel(k, e),
                                            f"purge '{queue}'"))
        return removed

    # -- the rest --------------------------------------------------------------------------

    async def sync(self) -> None:
        """Every command is answered once Redis has applied it: nothing is left to wait for
        (but replicas, with ``wait_replicas``)."""
        await self.replicate()

    async def statistics(self) -> BrokerStatistics:
        names = sorted(n.decode() for n in await self.call(lambda: self.r.hkeys(QUEUES),
                                                            "statistics"))
        counts = {k.decode(): int(v) for k, v in (await self.r.hgetall(DELAYED_COUNTS)).items()}
        queues = []
        for name in names:
            rules, levels, _ = await self._queue(name)
            length = pending = consumers = 0
            for level in range(levels):
                key = stream_key(name, level)
                length += int(await self.r.xlen(key))
                with contextlib.suppress(rerr.ResponseError):
                    for group in await self.r.xinfo_groups(key):
                        if group["name"] == GROUP.encode():
                            pending += int(group["pending"])
                    if level == 0:
                        for c in await self.r.xinfo_consumers(key, GROUP):
                            consumers += int(c["idle"]) < 2 * rules.consumer_timeout_ms
            queues.append(queue_statistics("/", name, ready=length - pending, unacked=pending,
                                           delayed=max(0, counts.get(name, 0)),
                                           consumers=consumers))
        return broker_statistics(queues)

    async def close(self) -> None:
        for reader in list(self.readers):
            await reader.stop()
        self._closing = True
        if self._mover is not None:
            self._mover.cancel()
            await asyncio.wait([self._mover], timeout=20)
        with contextlib.suppress(Exception):
            for name in self._private:
                await self.r.delete(stream_key(name))
                await self.r.hdel(QUEUES, name)
                for binding in await self.r.smembers(BINDINGS):
                    if binding.endswith(f"\x1f{name}".encode()):
                        await self.r.srem(BINDINGS, binding)
            for key in {stream_key(q) for q in self._rules}:
                await self.r.xgroup_delconsumer(key, GROUP, self.consumer_name) \
                    if not await self._holds(key) else None
        with contextlib.suppress(Exception):
            await self.r.aclose()

    async def _holds(self, key: str) -> bool:
        """Whether this consumer still has deliveries pending in ``key`` (then its name must
        stay, or they would be lost instead of claimed)."""
        pending = await self.r.xpending_range(key, GROUP, "-", "+", 1,
                                              consumername=self.consumer_name)
        return bool(pending)


def _level(message: Message, levels: int) -> int:
    return max(0, min(int(message.priority or 0), levels - 1))


def _by_stream(tokens: Sequence[Token]) -> dict[str, list[str]]:
    """The entry ids of ``tokens`` by the stream they were read from."""
    found: dict[str, list[str]] = {}
    for token in tokens:
        key, entry_id = token.handle
        found.setdefault(key, []).append(entry_id)
    return found
