"""AmqpTransport: the client over any AMQP 0-9-1 broker (``tidings serve`` or RabbitMQ).

Built on aiormq, the pamqp-based core of aio-pika: the same protocol code without aio-pika's
objects per message, and a transport factory that also carries a Unix socket (the whole client
on it against raw aio-pika: ``python bench/transports.py``, T1/T2). One connection, one
confirming channel for sends and gets, one channel per consumer (so each has its own prefetch).
Reconnection is not here: :class:`tidings.client.resilient.ResilientTransport` wraps this class
and replays declarations and consumers on a new connection.

What AMQP 0-9-1 has no method for is mapped onto what each broker offers:

- **Delays**: ``tidings serve`` (and RabbitMQ with the delayed-message plugin) take an
  ``x-delay`` header on an ``x-delayed-message`` exchange. Plain RabbitMQ gets a durable
  scheme of its own queues: one quorum queue per distinct delay (``tidings.delay.<ms>``) with
  that message TTL, dead-lettering at least once to the default exchange under the message's
  own routing key, that is, into the target queue when the delay has passed.
- **Retries with a delay** (``nack(delay_ms=...)``) publish a copy on the delay path (confirmed)
  and then ack the original; the failed deliveries so far travel in the
  ``x-tidings-delivery-count`` header, and the queue's delivery limit is applied here.
- **Dead letters** on RabbitMQ are read from ``<queue>.dead`` by taking them without an ack
  and closing the channel, which returns them in order (they are marked redelivered; a
  dead-letter queue has no delivery limit, so nothing else changes).
- **Browse, delete by id, extend** use tidings serve's extensions (``amqp/extensions.py``);
  RabbitMQ has no equivalent, so there they raise :class:`NotSupportedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from tidings import message_batches as batches
from tidings import transitions
from tidings.basic_properties import to_message, to_properties
from tidings.client.amqp_batching import LARGE_BYTES, AmqpConsumer, chunks
from tidings.client.management import queue_statistics as management_statistics
from tidings.client.remote import (
    TLS_OPTIONS,
    broker_statistics,
    connect_timeout_s,
    queue_statistics,
    redact,
    url_options,
)
from tidings.client.tokens import Token
from tidings.client.transport import (
    EVENTS_EXCHANGE,
    Capabilities,
    Delivery,
    QueueSpec,
    StreamSpec,
)
from tidings.client.turns import Outcomes, TurnBatches
from tidings.dead_letters import dead_letter_queue, replay_into, revive
from tidings.errors import (
    AccessRefusedError,
    BrokenResourceError,
    InvalidArgumentError,
    NotFoundError,
    NotSupportedError,
    PreconditionFailedError,
    ResourceLockedError,
    TidingsError,
    VersionConflictError,
)
from tidings.message import Message
from tidings.statistics import BrokerStatistics
from tidings.stream_starts import OFFSET, READER

log = logging.getLogger("tidings.client.amqp")

#: tidings serve's extensions (the names amqp/extensions.py answers to).
CONTROL_EXCHANGE = "amq.tidings.control"
BROWSE_ARGUMENT = "x-tidings-browse"
BROWSE_END_HEADER = "x-tidings-browse-end"
#: Failed deliveries of a message before this copy, carried across delayed retries.
COUNT_HEADER = "x-tidings-delivery-count"
#: The exchange that delays messages on brokers with ``x-delayed-message``.
DELAYED_EXCHANGE = "tidings.delayed"
#: The headers exchange in front of the per-delay queues on RabbitMQ without the plugin.
DELAY_EXCHANGE = "tidings.delay"
#: Not ``x-``: RabbitMQ's headers exchange ignores ``x-`` headers when it matches.
DELAY_HEADER = "tidings-delay-ms"
DELAY_QUEUE_PREFIX = "tidings.delay."
#: A delay queue lives this long past its delay without use, then RabbitMQ deletes it.
DELAY_QUEUE_IDLE_MS = 10 * 60 * 1000
#: Delivery limit assumed for queues this client did not declare (QueueSpec's default).
DEFAULT_LIMIT = QueueSpec().delivery_limit

_ERRORS: dict[type[Exception], type[TidingsError]] = {
    aiormq.exceptions.ChannelNotFoundEntity: NotFoundError,
    aiormq.exceptions.ChannelPreconditionFailed: PreconditionFailedError,
    aiormq.exceptions.ChannelAccessRefused: AccessRefusedError,
    aiormq.exceptions.ChannelLockedResource: ResourceLockedError,
}


def translate(error: BaseException) -> TidingsError:
    """An aiormq exception as the tidings error a user catches."""
    if isinstance(error, TidingsError):
        return error
    for kind, ours in _ERRORS.items():
        if isinstance(error, kind):
            text = str(error.args[1]) if len(error.args) > 1 else str(error)
            return ours(re.sub(r"^[A-Z_]+ - ", "", text))
    if isinstance(error, aiormq.exceptions.ChannelClosed):
        return TidingsError(str(error))
    return BrokenResourceError(f"connection to the broker lost: {error!r}")


#: Query options aiormq reads from an amqp:// URL (amqps:// takes the TLS ones too).
_AMQP_OPTIONS = ("heartbeat", "frame_max", "channel_max", "name", "timeout", "auth")


def _refusal(error: BaseException, where: str) -> TidingsError:
    """A failed connect as the error a user can act on: a broker that answers connection.open
    with connection.close (RabbitMQ's 530 for a vhost that does not exist or that the user
    may not use; aiormq reports it only as an unexpected frame) says so in words; anything
    else is a broker not reached."""
    if "Connection.OpenOk" in str(error) and "got <Connection.Close" in str(error):
        vhost = unquote(urlsplit(where).path[1:]) or "/" if "://" in where else "/"
        return NotFoundError(f"{where} refused to open vhost '{vhost}': it does not exist, or "
                             f"this user may not use it")
    if "ACCESS_REFUSED" in str(error):
        return AccessRefusedError(f"login refused by {where}: {error}")
    return BrokenResourceError(f"cannot connect to {where}: {error}")


class UnixSocketFactory(aiormq.connection.TransportFactory):
    """Connects aiormq to a Unix socket (a shared data directory's owner listens on one)."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def create(self, url: Any, **kwargs: Any) -> tuple[Any, Any]:
        kwargs.pop("ssl_context_provider", None)
        try:
            return await asyncio.open_unix_connection(self.path, **kwargs)
        except OSError as e:
            raise aiormq.exceptions.AMQPConnectionError(*e.args) from e


def amqp_capabilities(broker: str, *, tidings: bool, management: bool,
                      machines: bool = False) -> Capabilities:
    """What the client can do over AMQP: everything on tidings serve (its extensions give
    what AMQP lacks, its HTTP API the latency statistics), AMQP itself on other brokers."""
    if tidings:
        no_latency = ("waiting and processing times are kept by the broker: connect with "
                      "management_url= (tidings serve's HTTP API) to read them")
        return Capabilities(broker, latency_statistics=management, machines=machines,
                            reasons=() if management else (("latency_statistics", no_latency),))
    no_browse = ("AMQP 0-9-1 cannot read a message without taking it; dead letters are "
                 "listed with client.dead_letters(), other queues in the management UI")
    no_delete = ("AMQP 0-9-1 cannot remove a message by id; consume it and reject it, or give "
                 "messages a TTL")
    no_extend = ("AMQP 0-9-1 has no lease extension; declare the queue with a longer "
                 "consumer_timeout_ms")
    no_machines = ("AMQP has no way to keep an instance's state with the publishes and the ack "
                   "of its event in one step (RabbitMQ's transactions are not atomic across "
                   "queues): run the machine on tidings serve or a data directory")
    return Capabilities(
        broker, browse=False, delete=False, delete_delayed=False, extend=False,
        latency_statistics=False,
        reasons=(("browse", no_browse), ("delete", no_delete), ("delete_delayed", no_delete),
                 ("machines", no_machines),
                 ("extend", no_extend),
                 ("latency_statistics", "RabbitMQ does not measure waiting and processing "
                                        "times")),
    )


def _incoming(raw: DeliveredMessage, queue: str, consumer: AmqpConsumer | None = None) -> Delivery:
    d = raw.delivery
    message = to_message(raw.header.properties, raw.body, d.exchange, d.routing_key)
    return _delivery(message, queue, raw.channel, d.delivery_tag, bool(d.redelivered), consumer)


def _delivery(message: Message, queue: str, channel: Any, delivery_tag: int, redelivered: bool,
              consumer: AmqpConsumer | None) -> Delivery:
    count = 0
    headers = message.headers
    if headers:
        count = _int(headers.pop("x-delivery-count", 0)) + _int(headers.pop(COUNT_HEADER, 0))
        if DELAY_HEADER in headers:
            _forget_delay(headers)
        if not headers:
            message.headers = None
    token = Token(queue, message, count, 0.0, (channel, delivery_tag), consumer)
    return Delivery(message, queue, token, redelivered or count > 0, count)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _is_delay_death(death: Any) -> bool:
    return isinstance(death, dict) and str(death.get("queue", "")).startswith(DELAY_QUEUE_PREFIX)


def _forget_delay(headers: dict[str, Any]) -> None:
    """Drop what the delay path left in ``headers``: its header and the delay queue's expiry,
    which is not a death of the message."""
    del headers[DELAY_HEADER]
    deaths = headers.get("x-death")
    if isinstance(deaths, list):
        kept = [x for x in deaths if not _is_delay_death(x)]
        if kept:
            headers["x-death"] = kept
        else:
            del headers["x-death"]
    if str(headers.get("x-first-death-queue", "")).startswith(DELAY_QUEUE_PREFIX):
        for key in ("x-first-death-queue", "x-first-death-reason", "x-first-death-exchange"):
            headers.pop(key, None)


class AmqpTransport:
    """The client's :class:`~tidings.client.transport.Transport` over one AMQP connection."""

    def __init__(self, url: str, *, ssl_context: ssl.SSLContext | None = None,
                 unix_socket: str | None = None, connection_name: str = "tidings",
                 management_url: str | None = None) -> None:
        self.url = url
        self._management = management_url
        #: Queues this client declared or found: what statistics() asks about without an API.
        self._known: set[str] = set()
        self._ssl = ssl_context
        self._unix = unix_socket
        self._name = connection_name
        self._conn: aiormq.Connection | None = None
        self._channel: Any = None
        self._specs: dict[str, QueueSpec] = {}
        self._bound_delayed: set[str] = set()
        self._delay_queues: dict[int, float] = {}
        self._events_ready = False
        self._delay_plugin: bool | None = None
        self._consumer_ids = itertools.count(1)
        self.capabilities = Capabilities("an AMQP broker")
        self.product = ""
        self.version = ""

    # -- connection ------------------------------------------------------------------------

    async def open(self) -> AmqpTransport:
        options = url_options(self.url, _AMQP_OPTIONS + (
            TLS_OPTIONS if self.url.lower().startswith("amqps") else ()))
        timeout_s = connect_timeout_s(options)
        factory = UnixSocketFactory(self._unix) if self._unix else None
        conn = aiormq.Connection(self.url, context=self._ssl, transport_factory=factory,
                                 client_properties={"connection_name": self._name})
        try:
            await asyncio.wait_for(conn.connect(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(Exception):
                await conn.close()
            raise BrokenResourceError(
                f"cannot connect to {self._where()}: no AMQP handshake within {timeout_s:g} s "
                f"(is an AMQP broker listening there? ?connect_timeout= sets the limit)"
            ) from None
        except aiormq.exceptions.AuthenticationError as e:
            raise AccessRefusedError(f"login refused by {self._where()}: {e}") from e
        except (aiormq.exceptions.AMQPError, OSError) as e:
            raise _refusal(e, self._where()) from e
        self._conn = conn
        props = conn.server_properties or {}
        self.product = str(props.get("product", ""))
        self.version = str(props.get("version", ""))
        self.is_tidings = self.product.lower().startswith("tidings")
        self._delay_plugin = True if self.is_tidings else None
        capabilities = props.get("capabilities")
        #: Sends of a loop turn as one batch: only a tidings server takes them.
        self._batcher: TurnBatches[tuple[str, bool], tuple[str, Message]] | None = \
            TurnBatches(self._publish_turn) if isinstance(capabilities, dict) and \
            capabilities.get(batches.CAPABILITY) else None
        self.capabilities = amqp_capabilities(
            self._broker(), tidings=self.is_tidings, management=self._management is not None,
            machines=isinstance(capabilities, dict) and
            bool(capabilities.get(transitions.CAPABILITY)))
        self._channel = await conn.channel(publisher_confirms=True)
        return self

    def _where(self) -> str:
        return f"Unix socket {self._unix}" if self._unix else redact(self.url)

    def _broker(self) -> str:
        if self.is_tidings:
            return "tidings serve" if not self._unix else "the directory's owner process"
        return f"{self.product} {self.version}".strip()

    @property
    def closing(self) -> asyncio.Future[Any]:
        """Done when the connection is gone (what the reconnecting wrapper waits on)."""
        assert self._conn is not None
        return self._conn.closing

    async def _main(self) -> Any:
        """The confirming channel; a channel error closed the last one, so open another."""
        if self._channel is None or self._channel.is_closed:
            assert self._conn is not None
            try:
                self._channel = await self._conn.channel(publisher_confirms=True)
            except Exception as e:
                raise translate(e) from e
        return self._channel

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            channel = await self._main()
            return await getattr(channel, method)(*args, **kwargs)
        except Exception as e:
            raise translate(e) from e

    # -- declarations ----------------------------------------------------------------------

    def _queue_arguments(self, name: str, spec_: QueueSpec) -> dict[str, Any]:
        args: dict[str, Any] = {}
        pairs = (("x-max-length", spec_.max_length), ("x-max-priority", spec_.max_priority),
                 ("x-message-ttl", spec_.message_ttl_ms),
                 ("x-consumer-timeout", spec_.consumer_timeout_ms))
        args.update({k: v for k, v in pairs if v is not None})
        if spec_.dead_letters and name:
            args["x-dead-letter-exchange"] = ""
            args["x-dead-letter-routing-key"] = dead_letter_queue(name)
        args.update(dict(spec_.arguments))
        if self.is_tidings:
            if spec_.delivery_limit is not None:
                args["x-delivery-limit"] = spec_.delivery_limit
            return args
        # RabbitMQ: durable queues are quorum queues (a delivery limit, at-least-once
        # dead-lettering), unless asked otherwise or a classic feature is wanted.
        quorum = (spec_.durable and not spec_.exclusive and spec_.max_priority is None
                  and "x-queue-type" not in args)
        if quorum:
            args["x-queue-type"] = "quorum"
            if spec_.delivery_limit is not None:
                args["x-delivery-limit"] = spec_.delivery_limit
            elif not self._older_than(4, 0):  # 4.x limits quorum queues to 20 by default
                args["x-delivery-limit"] = -1
            if spec_.dead_letters and name:
                args.setdefault("x-dead-letter-strategy", "at-least-once")
                args.setdefault("x-overflow", "reject-publish")
        if spec_.consumer_timeout_ms is not None and self._older_than(3, 12):
            raise NotSupportedError(
                self._broker(), "apply a per-queue consumer timeout",
                "RabbitMQ 3.12 or later takes x-consumer-timeout; on older ones set "
                "consumer_timeout in rabbitmq.conf")
        return args

    def _older_than(self, major: int, minor: int) -> bool:
        found = re.match(r"(\d+)\.(\d+)", self.version)
        return bool(found) and (int(found.group(1)), int(found.group(2))) < (major, minor)

    async def declare_queue(self, name: str, spec_: QueueSpec) -> str:
        if not _NAME.fullmatch(name):
            raise InvalidArgumentError(
                f"queue name '{name}' cannot be used over AMQP by this client: its codec "
                f"(pamqp) takes only letters, digits and - _ . : in queue names")
        args = self._queue_arguments(name, spec_)
        ok = await self._call("queue_declare", name, durable=spec_.durable and not spec_.exclusive,
                              exclusive=spec_.exclusive, auto_delete=spec_.exclusive,
                              arguments=args)
        declared = ok.queue
        self._specs[declared] = spec_
        self._known.add(declared)
        if spec_.dead_letters and name:
            # classic: a dead-letter queue is read by taking and returning (no delivery limit)
            dead_args = {} if self.is_tidings else {"x-queue-type": "classic"}
            await self._call("queue_declare", dead_letter_queue(name), durable=spec_.durable,
                             arguments=dead_args)
        return declared

    async def queue_exists(self, name: str) -> bool:
        if await self._passive(name) is None:
            return False
        self._known.add(name)
        return True

    # -- streams ---------------------------------------------------------------------------

    async def declare_stream(self, name: str, spec_: StreamSpec) -> None:
        await self._call("queue_declare", name, durable=True, arguments=spec_.arguments())
        self._known.add(name)

    @staticmethod
    def _reader_queue(stream: str, reader: str) -> str:
        """Where a named reader's offset is kept over AMQP (which has no offset store, on
        RabbitMQ as here): a classic queue that holds one message, the last committed."""
        return f"tidings.reader.{stream}.{reader}"

    async def commit_offset(self, stream: str, reader: str, offset: int) -> None:
        if self.is_tidings:  # kept by the broker (an extension: amqp/extensions.py)
            try:
                await self._confirm([(CONTROL_EXCHANGE, "commit-offset", Message(b"", headers={
                    "x-queue": stream, "x-reader": reader, "x-offset": offset}), False)])
            except PreconditionFailedError as e:  # its 406: the same error as embedded
                raise InvalidArgumentError(str(e)) from e
            return
        name = self._reader_queue(stream, reader)
        if name not in self._known:
            await self._call("queue_declare", name, durable=True, arguments={
                "x-queue-type": "classic", "x-max-length": 1, "x-overflow": "drop-head"})
            self._known.add(name)
        await self._confirm([("", name, Message(str(offset).encode()), True)])

    async def _reader_offset(self, stream: str, reader: str) -> int | None:
        """A reader's last commit on RabbitMQ (tidings serve starts readers itself)."""
        name = self._reader_queue(stream, reader)
        if await self._passive(name) is None:
            return None
        async with self._side_channel() as channel:  # closing it returns the message
            raw = await channel.basic_get(name)
            if isinstance(raw.delivery, spec.Basic.GetEmpty):
                return None
            text = raw.body.decode(errors="replace")
            return int(text) if text.isdigit() else None

    @contextlib.asynccontextmanager
    async def _side_channel(self) -> AsyncIterator[Any]:
        """A channel of its own for one operation, closed after it (which returns whatever it
        took without an ack). aiormq's errors come out as tidings errors, but for a 404, which
        the callers here take as the answer "missing"."""
        assert self._conn is not None
        try:  # opening it meets a lost connection too: a BrokenResourceError, retried
            channel = await self._conn.channel()
        except Exception as e:
            raise translate(e) from e
        try:
            yield channel
        except TidingsError:
            raise
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise
        except Exception as e:
            raise translate(e) from e
        finally:
            if not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()

    async def _passive(self, name: str) -> Any:
        """queue.declare-ok for ``name``, or None (the 404 closes only the side channel)."""
        try:
            async with self._side_channel() as channel:
                return await channel.queue_declare(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None

    async def bind_events(self, queue: str, pattern: str) -> None:
        if not self._events_ready:
            await self._call("exchange_declare", EVENTS_EXCHANGE, exchange_type="topic",
                             durable=True)
            self._events_ready = True
        await self._call("queue_bind", queue, EVENTS_EXCHANGE, routing_key=pattern)

    # -- sending ---------------------------------------------------------------------------

    async def _confirm(self, publishes: list[tuple[str, str, Message, bool]]) -> None:
        """Publish every ``(exchange, routing key, message, mandatory)`` and wait for all their
        confirms at once (one round trip for the batch). A nack or a return raises.

        To a tidings server, what is sent in one loop turn travels as one batch."""
        batcher = self._batcher
        if batcher is not None and all(
                ex != CONTROL_EXCHANGE and len(m.body) < LARGE_BYTES
                for ex, _, m, _ in publishes):
            waits = [batcher.add((ex, mandatory), (rk, m)) for ex, rk, m, mandatory in publishes]
            if len(waits) == 1:
                await waits[0]
            else:
                for outcome in await asyncio.gather(*waits, return_exceptions=True):
                    if isinstance(outcome, BaseException):
                        raise outcome
            return
        await self._confirm_each(publishes)

    async def _publish_turn(self, where: tuple[str, bool],
                            entries: list[tuple[str, Message]]) -> Outcomes:
        """What one loop turn sends to one exchange, in batches within the bounds."""
        exchange, mandatory = where
        parts = await asyncio.gather(*(self._publish_batch(exchange, mandatory, part)
                                       for part in chunks(entries)))
        return [outcome for part in parts for outcome in part]

    async def _publish_batch(self, exchange: str, mandatory: bool,
                             entries: list[tuple[str, Message]]) -> Outcomes:
        """One batch publish (``amq.tidings.control``'s ``publish-batch``): confirmed once
        all are durable; what was not taken comes back named by position."""
        if len(entries) == 1:
            rk, message = entries[0]
            try:
                await self._confirm_each([(exchange, rk, message, mandatory)])
            except TidingsError as e:
                return [e]
            return [None]
        channel = await self._main()
        outcomes: Outcomes = [None] * len(entries)
        properties = spec.Basic.Properties(message_id=uuid.uuid4().hex, headers={
            batches.EXCHANGE_HEADER: exchange, batches.MANDATORY_HEADER: mandatory})
        try:
            result = await channel.basic_publish(
                batches.pack_publishes(entries), exchange=CONTROL_EXCHANGE,
                routing_key=batches.PUBLISH_BATCH, properties=properties, mandatory=True,
                wait=False)
        except aiormq.exceptions.PublishError as e:  # some were not taken: which
            report = e.message.header.properties.headers or {}
            for i in report.get(batches.RETURNED_HEADER) or ():
                outcomes[i] = _Returned(f"no queue '{entries[i][0]}' on {self._broker()}")
            for i in report.get(batches.REFUSED_HEADER) or ():
                outcomes[i] = self._refused(entries[i][0])
            return outcomes
        except Exception as e:
            raise translate(e) from e
        if isinstance(result, spec.Basic.Nack):
            return [self._refused(rk) for rk, _ in entries]
        return outcomes

    def _refused(self, routing_key: str) -> TidingsError:
        return PreconditionFailedError(
            f"{self._broker()} refused a message for '{routing_key}' (queue full, or the "
            f"broker is out of resources)")

    async def _confirm_each(self, publishes: list[tuple[str, str, Message, bool]]) -> None:
        """Publish every one on its own and wait for all their confirms at once."""
        channel = await self._main()
        publish = channel.basic_publish
        # (wait=False: aiormq would hold the channel's lock until each frame is written, a
        # loop turn per publish; the confirms are what a send waits for)
        waits = [publish(m.body, exchange=ex, routing_key=rk, properties=to_properties(m),
                         mandatory=mandatory, wait=False)
                 for ex, rk, m, mandatory in publishes]
        if len(waits) == 1:  # the common single send: no task for gather to make
            try:
                results: list[Any] = [await waits[0]]
            except Exception as e:
                results = [e]
        else:
            results = await asyncio.gather(*waits, return_exceptions=True)
        for (_ex, rk, _m, _), result in zip(publishes, results, strict=True):
            if isinstance(result, aiormq.exceptions.PublishError):
                raise _Returned(f"no queue '{rk}' on {self._broker()}")
            if isinstance(result, BaseException):
                raise translate(result) from result
            if isinstance(result, spec.Basic.Nack):
                raise self._refused(rk)

    async def send(self, queue: str, messages: Sequence[Message],
                   delay_ms: int | None = None) -> None:
        if delay_ms is not None and delay_ms > 0:
            await self._publish_delayed(queue, list(messages), delay_ms)
            return
        for message in messages:
            message.routing_key = queue
        await self._confirm([("", queue, m, True) for m in messages])

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        if not self._events_ready:
            await self._call("exchange_declare", EVENTS_EXCHANGE, exchange_type="topic",
                             durable=True)
            self._events_ready = True
        for message in messages:
            message.routing_key = topic
        await self._confirm([(EVENTS_EXCHANGE, topic, m, False) for m in messages])

    async def _publish_delayed(self, queue: str, messages: list[Message], delay_ms: int) -> None:
        if self._delay_plugin is None:
            self._delay_plugin = await self._probe_delay_plugin()
        for message in messages:
            message.routing_key = queue
        if self._delay_plugin:
            if queue not in self._bound_delayed:
                await self._call("exchange_declare", DELAYED_EXCHANGE,
                                 exchange_type="x-delayed-message", durable=True,
                                 arguments={"x-delayed-type": "direct"})
                await self._call("queue_bind", queue, DELAYED_EXCHANGE, routing_key=queue)
                self._bound_delayed.add(queue)
            for message in messages:
                message.headers = {**(message.headers or {}), "x-delay": int(delay_ms)}
            await self._confirm([(DELAYED_EXCHANGE, queue, m, False) for m in messages])
            return
        await self._declare_delay_queue(delay_ms)
        for message in messages:
            message.headers = {**(message.headers or {}), DELAY_HEADER: int(delay_ms)}
        await self._confirm([(DELAY_EXCHANGE, queue, m, True) for m in messages])

    async def _probe_delay_plugin(self) -> bool:
        """Whether RabbitMQ knows ``x-delayed-message`` (an unknown exchange type closes the
        connection, so the probe uses one of its own)."""
        probe = aiormq.Connection(self.url, context=self._ssl)
        quiet = _Quiet()
        for name in _AIORMQ_LOGGERS:  # the refusal is the expected answer, not an error
            logging.getLogger(name).addFilter(quiet)
        try:
            await probe.connect()
            channel = await probe.channel()
            await channel.exchange_declare(DELAYED_EXCHANGE, exchange_type="x-delayed-message",
                                           durable=True, arguments={"x-delayed-type": "direct"})
            return True
        except aiormq.exceptions.AMQPError:
            return False
        finally:
            with contextlib.suppress(Exception):
                await probe.close()
            for name in _AIORMQ_LOGGERS:
                logging.getLogger(name).removeFilter(quiet)

    async def _declare_delay_queue(self, delay_ms: int) -> None:
        """The quorum queue that holds messages for ``delay_ms`` (redeclared well before its
        idle expiry, so it cannot vanish under a message)."""
        now = time.monotonic()
        if now - self._delay_queues.get(delay_ms, -1e18) < DELAY_QUEUE_IDLE_MS / 2000:
            return
        if not self._delay_queues:
            await self._call("exchange_declare", DELAY_EXCHANGE, exchange_type="headers",
                             durable=True)
        name = f"{DELAY_QUEUE_PREFIX}{delay_ms}"
        await self._call("queue_declare", name, durable=True, arguments={
            "x-queue-type": "quorum", "x-message-ttl": int(delay_ms),
            "x-expires": int(delay_ms) + DELAY_QUEUE_IDLE_MS,
            "x-dead-letter-exchange": "", "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        })
        await self._call("queue_bind", name, DELAY_EXCHANGE,
                         arguments={"x-match": "all", DELAY_HEADER: int(delay_ms)})
        self._delay_queues[delay_ms] = now

    # -- receiving -------------------------------------------------------------------------

    async def get(self, queue: str) -> Delivery | None:
        raw = await self._call("basic_get", queue)
        if isinstance(raw.delivery, spec.Basic.GetEmpty):
            return None
        return _incoming(raw, queue)

    async def consume(self, queue: str, prefetch: int,
                      on_message: Callable[[Delivery], None],
                      arguments: dict[str, Any] | None = None) -> AmqpConsumer:
        assert self._conn is not None
        if arguments and READER in arguments and not self.is_tidings:
            # RabbitMQ keeps no reader offsets: start after the one this client stored
            arguments = dict(arguments)
            stored = await self._reader_offset(queue, str(arguments.pop(READER)))
            if stored is not None:
                arguments[OFFSET] = stored + 1
        channel = await self._conn.channel()
        consumer = AmqpConsumer(channel)
        try:
            await channel.basic_qos(prefetch_count=prefetch)

            many = getattr(on_message, "many", None)

            async def deliver(raw: DeliveredMessage) -> None:
                headers = raw.header.properties.headers
                if headers and batches.BATCH_HEADER in headers:  # many in one
                    arrived = []
                    for tag, redelivered, message in batches.unpack_deliveries(raw.body):
                        consumer.delivered(tag)
                        arrived.append(_delivery(message, queue, raw.channel, tag,
                                                 redelivered, consumer))
                    if many is not None:  # a receiver that takes lists (Transport.consume)
                        many(arrived)
                    else:
                        for delivery in arrived:
                            on_message(delivery)
                    return
                consumer.delivered(raw.delivery.delivery_tag)
                on_message(_incoming(raw, queue, consumer))

            consumer.tag = f"tidings.{next(self._consumer_ids)}"
            if self._batcher is not None:  # a tidings server: deliveries come in batches
                arguments = {**(arguments or {}), batches.BATCH_ARGUMENT: True}
            await channel.basic_consume(queue, deliver, consumer_tag=consumer.tag,
                                        arguments=arguments)
        except Exception as e:
            with contextlib.suppress(Exception):
                await channel.close()
            raise translate(e) from e
        return consumer

    async def ack(self, tokens: Sequence[Any]) -> None:
        try:
            for token in tokens:
                channel, tag = token.handle
                consumer = token.consumer
                if consumer is not None and consumer.channel is channel:
                    consumer.ack_soon(tag)  # with the others of this loop turn
                else:
                    await channel.basic_ack(tag)
        except Exception as e:
            raise translate(e) from e

    async def nack(self, token: Any, requeue: bool, delay_ms: int | None = None) -> None:
        try:
            if requeue and delay_ms:
                await self._retry_later(token, delay_ms)
            else:
                channel, tag = token.handle
                if token.consumer is not None:
                    token.consumer.settling(tag)
                await channel.basic_nack(tag, requeue=requeue)
            if token.consumer is not None:
                await token.consumer.settled()
        except TidingsError:
            raise
        except Exception as e:
            raise translate(e) from e

    async def _retry_later(self, token: Token, delay_ms: int) -> None:
        """A failed delivery retried after ``delay_ms``: a delayed copy carrying the count of
        failed deliveries, then the ack of the original; past the queue's delivery limit, a
        reject (which dead-letters it)."""
        failures = token.failures + 1
        channel, tag = token.handle
        spec_ = self._specs.get(token.queue)
        limit = spec_.delivery_limit if spec_ is not None else DEFAULT_LIMIT
        consumer = token.consumer
        if limit is not None and failures > limit:
            if consumer is not None:
                consumer.settling(tag)
            await channel.basic_reject(tag, requeue=False)
            return
        copy = revive(dataclasses.replace(token.message), token.queue)  # x- headers go
        copy.headers = {**(copy.headers or {}), COUNT_HEADER: failures}
        await self._publish_delayed(token.queue, [copy], delay_ms)
        if consumer is not None:
            consumer.settling(tag)
        await channel.basic_ack(tag)

    # -- tidings serve's extensions (amqp/extensions.py on the server) -----------------------

    async def extend(self, token: Any) -> None:
        if not self.capabilities.extend:
            raise self.capabilities.unsupported("extend", "extend a delivery's lease")
        try:
            channel, tag = token.handle
            await channel.basic_publish(
                b"", exchange=CONTROL_EXCHANGE, routing_key="extend",
                properties=spec.Basic.Properties(headers={"x-delivery-tag": tag}))
        except Exception as e:
            raise translate(e) from e

    async def browse(self, queue: str, limit: int) -> list[Message]:
        if not self.capabilities.browse:
            raise self.capabilities.unsupported("browse", "browse a queue")
        found: list[Message] = []
        ended = asyncio.get_running_loop().create_future()

        async def deliver(raw: DeliveredMessage) -> None:
            headers = raw.header.properties.headers or {}
            if headers.get(BROWSE_END_HEADER):
                if not ended.done():
                    ended.set_result(None)
                return
            found.append(_incoming(raw, queue).message)

        async with self._side_channel() as channel:
            ok = await channel.basic_consume(queue, deliver, no_ack=True,
                                             arguments={BROWSE_ARGUMENT: int(limit)})
            await ended
            await channel.basic_cancel(ok.consumer_tag)
        return found

    async def delete(self, queue: str, message_id: str) -> bool:
        if not self.capabilities.delete:
            raise self.capabilities.unsupported("delete", "remove a waiting message by id")
        control = Message(b"", headers={"x-queue": queue, "x-message-id": message_id},
                          message_id=f"delete-{uuid.uuid4().hex}")
        try:
            await self._confirm([(CONTROL_EXCHANGE, "delete", control, True)])
        except _Returned:  # no such message was waiting
            return False
        return True

    # -- state machines (tidings serve's extension, amqp/machines.py on the server) ---------

    async def commit_transition(self, token: Any, commit: transitions.TransitionCommit) -> None:
        """The transition and the ack of ``token``'s delivery as one publish on the channel
        that holds the delivery, confirmed once durable."""
        if not self.capabilities.machines:
            raise self.capabilities.unsupported("machines", "run a state machine")
        headers, body = transitions.pack_commit(commit)
        if token is not None:
            channel, tag = token.handle
            headers[transitions.TAG_HEADER] = tag
        else:
            channel = await self._main()
        try:
            result = await channel.basic_publish(
                body, exchange=CONTROL_EXCHANGE, routing_key=transitions.COMMIT,
                properties=spec.Basic.Properties(message_id=uuid.uuid4().hex, headers=headers),
                mandatory=True, wait=False)
        except aiormq.exceptions.PublishError as e:  # the instance moved on: nothing changed
            current = (e.message.header.properties.headers or {}).get(transitions.VERSION_HEADER)
            raise VersionConflictError(
                f"instance '{commit.key}' of machine '{commit.machine}' is at version "
                f"{current}, not {commit.expected_version}: it moved on") from None
        except Exception as e:
            raise translate(e) from e
        if isinstance(result, spec.Basic.Nack):
            raise PreconditionFailedError(f"{self._broker()} could not store the transition of "
                                          f"'{commit.key}' (out of resources)")
        if token is not None and token.consumer is not None:
            # settled by the commit: only now may a gathered multiple ack pass over it
            token.consumer.settling(tag)
            await token.consumer.settled()

    async def _ask(self, operation: str, headers: dict[str, Any],
                   body: bytes = b"") -> tuple[dict[str, Any], bytes]:
        """A machine operation that answers: the request comes back as a return carrying it."""
        if not self.capabilities.machines:
            raise self.capabilities.unsupported("machines", "read a state machine's instances")
        channel = await self._main()
        try:
            await channel.basic_publish(
                body, exchange=CONTROL_EXCHANGE, routing_key=operation,
                properties=spec.Basic.Properties(message_id=uuid.uuid4().hex, headers=headers),
                mandatory=True, wait=False)
        except aiormq.exceptions.PublishError as e:
            return e.message.header.properties.headers or {}, bytes(e.message.body)
        except Exception as e:
            raise translate(e) from e
        raise TidingsError(f"{self._broker()} did not answer {operation}")

    async def find_instance(self, machine: str, key: str) -> bytes | None:
        headers, body = await self._ask(transitions.FIND, {
            transitions.MACHINE_HEADER: machine, transitions.KEY_HEADER: key})
        return body if headers.get(transitions.FOUND_HEADER) else None

    async def list_instances(self, machine: str) -> list[tuple[str, bytes]]:
        found: list[tuple[str, bytes]] = []
        while True:
            after = found[-1][0] if found else ""
            _, body = await self._ask(transitions.LIST, {
                transitions.MACHINE_HEADER: machine, transitions.AFTER_HEADER: after})
            page = transitions.unpack_instances(body)
            found += page
            if not page:
                return found

    async def describe_machine(self, machine: str, description: bytes) -> None:
        if not self.capabilities.machines:
            raise self.capabilities.unsupported("machines", "run a state machine")
        await self._confirm([(CONTROL_EXCHANGE, transitions.DESCRIBE, Message(
            description, message_id=uuid.uuid4().hex,
            headers={transitions.MACHINE_HEADER: machine}), False)])

    async def purge(self, queue: str) -> int:
        ok = await self._call("queue_purge", queue)
        return int(ok.message_count)

    # -- dead letters ----------------------------------------------------------------------

    async def dead_letters(self, queue: str, limit: int) -> list[Message]:
        if self.capabilities.browse:
            return await self.browse(dead_letter_queue(queue), limit)
        found: list[Message] = []
        async with contextlib.aclosing(self._taken(dead_letter_queue(queue))) as taken:
            async for raw, _ in taken:  # (RabbitMQ: taken and returned when the channel closes)
                found.append(_incoming(raw, queue).message)
                if len(found) >= limit:
                    break
        return found

    async def replay_dead_letters(self, queue: str, ids: set[str] | None) -> int:
        async def restore(taken: tuple[DeliveredMessage, Any], into: str,
                          copy: Message) -> None:
            raw, channel = taken
            await self._confirm([("", into, copy, True)])
            await channel.basic_ack(raw.delivery.delivery_tag)

        async with contextlib.aclosing(self._taken(dead_letter_queue(queue))) as taken:
            return await replay_into(
                queue, ids, ((_incoming(raw, queue).message, (raw, channel))
                             async for raw, channel in taken), restore)

    async def _taken(self, queue: str) -> AsyncIterator[tuple[DeliveredMessage, Any]]:
        """Take the messages of ``queue`` one by one (as many as it held at the start), each
        with the channel it came on; closing the channel returns those not acked."""
        remaining = None
        with contextlib.suppress(aiormq.exceptions.ChannelNotFoundEntity):
            async with self._side_channel() as channel:
                while remaining is None or remaining > 0:
                    raw = await channel.basic_get(queue)
                    if isinstance(raw.delivery, spec.Basic.GetEmpty):
                        break
                    if remaining is None:
                        remaining = int(raw.delivery.message_count) + 1
                    remaining -= 1
                    yield raw, channel

    # -- the rest --------------------------------------------------------------------------

    async def sync(self) -> None:
        """A round trip on the main channel: every ack sent before it has reached the broker."""
        await self._call("basic_qos", prefetch_count=0)

    async def statistics(self) -> BrokerStatistics:
        """With a management URL, every queue of the vhost as the broker's HTTP API describes
        it (tidings serve's includes waiting and processing times); without one, what
        ``queue.declare`` tells of each queue this client used: messages ready, consumers."""
        if self._management is not None:
            queues = await management_statistics(self._management, self._vhost())
        else:
            queues = []
            for name in sorted(self._known):
                ok = await self._passive(name)
                if ok is None:
                    continue
                queues.append(queue_statistics(
                    self._vhost(), name, ready=int(ok.message_count), unacked=0, delayed=0,
                    consumers=int(ok.consumer_count)))
        return broker_statistics(queues)

    def _vhost(self) -> str:
        return self._conn.vhost if self._conn is not None else "/"

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed:
            with contextlib.suppress(Exception):
                await self._conn.close()


_AIORMQ_LOGGERS = ("aiormq.connection", "aiormq.channel")


class _Returned(NotFoundError):
    """A mandatory publish came back unrouted."""


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


class _ConnectionLoss(logging.Filter):
    """aiormq logs a lost connection at ERROR with a traceback; the reconnecting layer reports
    it once, with the reason, and says what it does about it."""

    _SAID_BY_US = ("Unexpected connection close from remote",
                   "Cancelling cause reader exited abnormally",
                   "error when creating transport")  # (each failed attempt: one INFO of ours)

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._SAID_BY_US)


logging.getLogger("aiormq.connection").addFilter(_ConnectionLoss())


_NAME = re.compile(r"[A-Za-z0-9\-_.:]*")
