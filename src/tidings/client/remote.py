"""What the transports over engines without AMQP's queue semantics share (NATS JetStream,
Redis Streams): the client applies the delivery limit and message TTL when a delivery
arrives, keeps the leases of the deliveries it holds, and retries engine calls across a
reconnection.

The delivery limit is applied on receipt, not by the engine: a delivery whose failed
deliveries so far exceed the queue's limit (handler failures, and consumers that died or timed
out holding it) is written to ``<queue>.dead`` with RabbitMQ's ``x-death`` history and only
then removed from the queue. Nothing is dropped on an advisory nobody may be listening to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from tidings.client.management import NO_LATENCY
from tidings.client.transport import QueueSpec
from tidings.codecs import decode_meta
from tidings.dead_letters import dead_letter_message
from tidings.errors import BrokenResourceError, ConfigError
from tidings.message import Message
from tidings.statistics import BrokerStatistics, QueueStatistics

log = logging.getLogger("tidings.client")

T = TypeVar("T")

#: A consumer that stops renewing its deliveries' leases (it died) loses them after this long,
#: unless the queue was declared with ``consumer_timeout_ms``.
DEFAULT_CONSUMER_TIMEOUT_MS = 30_000
#: How long an engine call is retried while the connection is being re-established.
RETRY_FOR_S = 30.0


#: Seconds a connection and its handshake may take (``?connect_timeout=`` in the URL).
CONNECT_TIMEOUT_S = 10.0


def url_options(url: str, scheme_options: Iterable[str]) -> dict[str, str]:
    """The query options of a broker ``url``, checked against the ones its scheme takes
    (``connect_timeout`` is everyone's): an option that does not apply is a ConfigError
    naming it, never silently ignored."""
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    allowed = {"connect_timeout", *scheme_options}
    for name in query:
        if name not in allowed:
            scheme = urlsplit(url).scheme
            tls = name in TLS_OPTIONS and scheme in ("amqp", "redis")
            raise ConfigError(
                f"option '{name}' in the broker URL " + (
                    f"applies to {scheme}s:// (TLS) only" if tls else
                    f"is not one {scheme}:// takes ({', '.join(sorted(allowed))})"))
    return query


def connect_timeout_s(options: dict[str, str]) -> float:
    """``connect_timeout`` (seconds) from :func:`url_options`, or the default."""
    text = options.get("connect_timeout")
    if text is None:
        return CONNECT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 3600:
        raise ConfigError(f"connect_timeout={text} in the broker URL: give seconds, more than "
                          f"0 and less than 3600")
    return value


#: Query options that set up TLS (aiormq's names, which redis-py shares in part).
TLS_OPTIONS = ("cafile", "capath", "cadata", "keyfile", "certfile", "no_verify_ssl",
               "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


@dataclass(frozen=True, slots=True)
class QueueRules:
    """The part of a queue's declaration the client enforces, kept with the queue in the
    engine so that every process applies the same rules."""

    delivery_limit: int | None = QueueSpec().delivery_limit
    dead_letters: bool = True
    message_ttl_ms: int | None = None
    consumer_timeout_ms: int = DEFAULT_CONSUMER_TIMEOUT_MS

    @classmethod
    def of(cls, spec: QueueSpec) -> QueueRules:
        return cls(spec.delivery_limit, spec.dead_letters and not spec.exclusive,
                   spec.message_ttl_ms, spec.consumer_timeout_ms or DEFAULT_CONSUMER_TIMEOUT_MS)

    def dumps(self) -> str:
        return json.dumps({"limit": self.delivery_limit, "dead": self.dead_letters,
                           "ttl": self.message_ttl_ms, "timeout": self.consumer_timeout_ms})

    @classmethod
    def loads(cls, text: str | bytes | None) -> QueueRules:
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        default = cls()
        return cls(data.get("limit", default.delivery_limit), bool(data.get("dead", True)),
                   data.get("ttl"), int(data.get("timeout") or DEFAULT_CONSUMER_TIMEOUT_MS))

    def death(self, message: Message, failures: int, enqueued_ms: float,
              now_ms: float) -> str | None:
        """Why a delivery must not reach a handler (``x-death`` reason), or None."""
        if self.delivery_limit is not None and failures > self.delivery_limit:
            return "delivery_limit"
        ttls = [int(t) for t in (self.message_ttl_ms, _ms(message.expiration)) if t is not None]
        if ttls and now_ms - enqueued_ms >= min(ttls):
            return "expired"
        return None


def _ms(expiration: str | None) -> int | None:
    try:
        return None if expiration is None else int(expiration)
    except ValueError:
        return None


def message_of(body: bytes, meta: str | bytes | None, queue: str = "") -> Message:
    """A stored entry as a Message: its properties decoded, or (written by another program,
    or damaged) the bare body; ``queue`` is its routing key when it names none."""
    try:
        message = decode_meta(body, meta)
    except ValueError:
        message = Message(body)
    if queue and not message.routing_key:
        message.routing_key = queue
    return message


def dead_letter(message: Message, queue: str, reason: str) -> Message:
    """The copy of ``message`` that goes to ``<queue>.dead``, with its ``x-death`` history."""
    return dead_letter_message(message, queue, reason, time.time(), None)


class Leases:
    """Deliveries this process holds, renewed well inside their consumer timeout while the
    process lives: a handler may run as long as it needs, and a consumer that dies loses
    its deliveries to the others one timeout later (the at-least-once promise without
    Celery's duplicate-after-visibility-timeout)."""

    def __init__(self, renew: Callable[[list[Any]], Awaitable[None]]) -> None:
        self._renew = renew
        self._held: dict[Any, float] = {}  # token -> its timeout in seconds
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def hold(self, token: Any, timeout_ms: int) -> None:
        self._held[token] = timeout_ms / 1000
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._keep())

    def release(self, tokens: Iterable[Any]) -> None:
        for token in tokens:
            self._held.pop(token, None)

    async def _keep(self) -> None:
        while not self._closed:
            period = min(self._held.values(), default=DEFAULT_CONSUMER_TIMEOUT_MS / 1000) / 3
            await asyncio.sleep(max(0.05, period))
            if self._held:
                try:
                    await self._renew(list(self._held))
                except Exception as e:  # the connection is down: the next turn tries again
                    log.debug("renewing leases failed: %r", e)

    async def close(self) -> None:
        """Stop renewing. The flag ends the loop even if a client library's own timeout
        swallows the cancellation (Python 3.11's ``wait_for`` can)."""
        self._held.clear()
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=20)


async def retrying(call: Callable[[], Awaitable[T]], transient: tuple[type[BaseException], ...],
                   what: str, for_s: float = RETRY_FOR_S) -> T:
    """``call()``, again with backoff while it fails with a ``transient`` error (the engine
    restarting, the connection being re-established), for up to ``for_s`` seconds."""
    deadline = time.monotonic() + for_s
    pause = 0.05
    while True:
        try:
            return await call()
        except transient as e:
            if time.monotonic() > deadline:
                raise BrokenResourceError(f"{what} failed for {for_s:.0f} s: {e!r}") from e
            await asyncio.sleep(pause)
            pause = min(1.0, pause * 2)


def queue_statistics(vhost: str, name: str, *, ready: int, unacked: int, delayed: int,
                     consumers: int) -> QueueStatistics:
    """A queue's record from what an engine can count (no latency percentiles)."""
    return QueueStatistics(vhost=vhost, name=name, ready=ready, unacked=unacked,
                           delayed=delayed, consumers=consumers, ready_bytes=0,
                           oldest_ready_age_s=None, counts={}, rates={},
                           waiting_time=NO_LATENCY, processing_time=NO_LATENCY)


def broker_statistics(queues: list[QueueStatistics], sessions: int = 1) -> BrokerStatistics:
    return BrokerStatistics(
        queues=tuple(queues), exchanges=0, sessions=sessions,
        consumers=sum(q.consumers for q in queues), ready=sum(q.ready for q in queues),
        unacked=sum(q.unacked for q in queues), delayed=sum(q.delayed for q in queues),
        counts={}, rates={})
