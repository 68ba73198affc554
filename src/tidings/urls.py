"""From a URL to a client: the one place that knows which schemes exist (a composition root).

``tidings.connect(url)`` and ``tidings.connect_blocking(url)`` live here. A path or ``file:``
URL opens the embedded durable broker on that directory (shared with other processes, see
:mod:`tidings.shared`); ``memory://`` the embedded non-durable one; ``amqp://``, ``nats://``
and ``redis://`` their transports. The client itself knows only the ``Transport`` protocol.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tidings.client.blocking import BlockingClient
from tidings.client.client import Client
from tidings.client.transport import Transport
from tidings.errors import ConfigError

#: The remote schemes, each with the optional dependency that brings its client library.
REMOTE = {"nats": "nats", "tls": "nats", "redis": "redis", "rediss": "redis", "kafka": "kafka",
          "kafkas": "kafka"}


def parse_url(url: str) -> tuple[str, str]:
    """``(scheme, rest)``: ``('file', directory)``, ``('memory', '')`` or a remote scheme."""
    if not url:
        raise ConfigError("empty broker URL: give a directory, 'file:DIR' or 'memory://'")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):
        path = unquote(parts.path if scheme == "file" else url)
        if scheme == "file" and parts.netloc:
            path = unquote(parts.netloc + parts.path)
        return "file", path
    if scheme == "memory":
        return "memory", ""
    return scheme, url


async def open_transport(url: str, *, ssl_context: ssl.SSLContext | None = None,
                         management_url: str | None = None) -> Transport:
    scheme, rest = parse_url(url)
    if scheme in ("amqp", "amqps"):
        from tidings.client.amqp import AmqpTransport
        from tidings.client.resilient import ResilientTransport

        return await ResilientTransport(
            lambda: AmqpTransport(url, ssl_context=ssl_context,
                                  management_url=management_url).open()).open()
    if scheme in REMOTE:
        if management_url is not None:
            raise ConfigError("management_url= is for amqp:// brokers")
        return await _open_remote(scheme, url, ssl_context)
    if management_url is not None:
        raise ConfigError("management_url= is for amqp:// brokers; the embedded broker keeps "
                          "every statistic itself")
    from tidings.client.local import LocalTransport
    from tidings.routing.broker import Broker

    if scheme == "file":
        from tidings.shared import open_shared

        return await open_shared(Path(rest))
    if scheme == "memory":
        from tidings.storage.memory import MemoryStore

        broker = Broker(MemoryStore(keeps_messages=False))
    else:
        raise ConfigError(
            f"unknown broker URL scheme '{scheme}' in '{url}': use a directory, 'file:DIR', "
            f"'memory://', 'amqp://user:password@host:port/vhost', 'nats://host:4222', "
            f"'redis://host:6379/0' or 'kafka://host:9092'"
        )
    broker.start()
    return LocalTransport(broker)


async def _open_remote(scheme: str, url: str, ssl_context: ssl.SSLContext | None) -> Transport:
    extra = REMOTE[scheme]
    try:
        from tidings.client.engine import EngineTransport

        if extra == "nats":
            from tidings.client.nats import NatsEngine

            return await EngineTransport(NatsEngine(url, ssl_context=ssl_context)).open()
        if extra == "kafka":
            from tidings.client.kafka import KafkaEngine

            return await EngineTransport(KafkaEngine(url, ssl_context=ssl_context)).open()
        from tidings.client.redis import RedisEngine

        return await EngineTransport(RedisEngine(url, ssl_context=ssl_context)).open()
    except ModuleNotFoundError as e:
        if e.name not in ("nats", "redis", "aiokafka"):
            raise
        raise ConfigError(f"'{scheme}://' needs its client library: pip install "
                          f"'tidings[{extra}]'") from e


def connect(url: str, *, ssl_context: ssl.SSLContext | None = None,
            management_url: str | None = None) -> Client:
    """A client for ``url``: a path or ``file:`` URL (embedded, durable; shared with other
    processes through its owner), ``memory://`` (embedded, in memory), or
    ``amqp://user:password@host:port/vhost`` / ``amqps://...`` (tidings serve or RabbitMQ;
    ``ssl_context`` for TLS, or aiormq's ``?cafile=...&certfile=...&keyfile=...``;
    ``management_url`` such as ``http://guest:guest@host:15672`` for full statistics),
    ``nats://``, ``redis://`` or ``kafka://host:9092`` (``kafkas://`` for TLS)."""
    return Client(url, transport_factory=lambda: open_transport(
        url, ssl_context=ssl_context, management_url=management_url))


def connect_blocking(url: str, *, ssl_context: ssl.SSLContext | None = None,
                     management_url: str | None = None) -> BlockingClient:
    """The blocking client for any URL :func:`connect` takes (and its options)."""
    return BlockingClient(connect(url, ssl_context=ssl_context, management_url=management_url))
