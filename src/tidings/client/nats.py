"""The NATS JetStream engine (``nats://``) of the engine core, on nats-py: only JetStream calls.

The delivery rules (limits, TTL, leases, the nack ladder, dead letters) are the core's
(:mod:`tidings.client.engine`); here is how they land on JetStream.

How tidings' concepts map onto JetStream (docs/nats.md says it for users):

- **A queue** is a stream ``TQ_<name>`` on the subject ``tidings.q.<name>`` with work-queue
  retention (an acknowledged message leaves it) and file storage, read through one durable
  pull consumer ``tidings`` shared by every consumer of the queue (competing consumers).
  Queue names are escaped so that any name is a valid stream name and subject token.
- **Events** go to the stream ``TIDINGS_EVENTS`` (subjects ``tidings.ev.>``, interest
  retention: an event is kept until every subscribed group has it). A topic ``a.b`` is the
  subject ``tidings.ev.a.b._``: the closing ``_`` token lets the AMQP pattern ``a.#`` (zero or
  more words) be the single NATS filter ``tidings.ev.a.>``. Binding a queue to a pattern
  creates a durable consumer with that filter; the queue then reads from its own stream and
  from each such consumer. A ``#`` that is not the last word has no NATS form: the consumer
  filters on the words before it and the client drops what the whole pattern does not match.
- **Send and publish** wait for JetStream's acknowledgement (the message is stored). The
  message id travels as ``Nats-Msg-Id``, so a send retried after a lost acknowledgement is
  stored once (inside the stream's duplicate window, two minutes).
- **Settlement**: ack; nack with requeue is a NAK (with a delay, JetStream's NAK delay);
  reject and the delivery limit write the message to ``<queue>.dead`` and then ack it;
  ``extend`` is an in-progress ack. Deliveries held by a live process are renewed before
  their ack wait ends (the core's leases); a dead consumer's come
  back after ``consumer_timeout_ms`` (30 s by default).
- **Delays**: NATS 2.9 cannot schedule a message, so delayed sends go to the stream
  ``TIDINGS_DELAYED`` with their due time; every connected client runs a mover that NAKs a
  message with the time it still has to wait and, once due, publishes it to its queue (with a
  derived ``Nats-Msg-Id``, so a mover that dies in between cannot duplicate it) before acking.
- **Priorities** do not exist in JetStream: declaring one raises NotSupportedError.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api

from tidings.client.nats_pull import TRANSIENT, Feed, Pull, pull_status, quietly
from tidings.client.nats_streams import JetStreamLogs
from tidings.client.nats_subjects import (
    CONSUMER,
    DELAYED_STREAM,
    DUE_HEADER,
    EVENTS_STREAM,
    META_HEADER,
    MOVER,
    MSG_ID_HEADER,
    QUEUE_STREAM_PREFIX,
    TARGET_HEADER,
    escape,
    event_consumer,
    event_filter,
    event_subject,
    queue_subject,
    stream_name,
    topic_of,
    unescape,
)
from tidings.client.remote import (
    RETRY_FOR_S,
    QueueRules,
    broker_statistics,
    message_of,
    queue_statistics,
    redact,
    retrying,
)
from tidings.client.tokens import Stored, Token
from tidings.client.transport import Capabilities, QueueSpec
from tidings.codecs import encode_meta
from tidings.errors import (
    AccessRefusedError,
    BrokenResourceError,
    NotFoundError,
    NotSupportedError,
    PreconditionFailedError,
    TidingsError,
)
from tidings.message import Message
from tidings.patterns import topic_matches
from tidings.statistics import BrokerStatistics

log = logging.getLogger("tidings.client.nats")

#: Pending deliveries JetStream allows one consumer (across all pulls of all processes).
MAX_ACK_PENDING = 100_000
#: A private (exclusive) queue's consumer the server removes if no client has pulled for this
#: long (its client died without deleting it).
PRIVATE_INACTIVE_S = 600.0

NO_PRIORITIES = ("JetStream delivers a stream in order and has no message priorities; send "
                 "urgent work to a queue of its own and give it more workers")


def nats_capabilities(broker: str = "NATS JetStream") -> Capabilities:
    return Capabilities(
        broker, priorities=False, latency_statistics=False,
        reasons=(("priorities", NO_PRIORITIES),
                 ("latency_statistics", "JetStream counts messages but does not time them"),
                 ("machines", "JetStream cannot update an instance, publish a transition's "
                              "messages and ack its event as one step (a crash between them "
                              "applies an event twice or loses its messages): run the machine "
                              "on tidings serve or a data directory")))


class _Reader:
    """A consumer's reading of one queue: a pull loop per feed (the queue's own stream and
    each event subscription bound to it), sharing the consumer's room."""

    def __init__(self, engine: NatsEngine, queue: str, room: Callable[[], int],
                 arrived: Callable[[Token], None]) -> None:
        self.engine, self.queue, self.room, self.arrived = engine, queue, room, arrived
        self.pulls: list[Pull] = []

    def add(self, feed: Feed) -> None:
        pull = Pull(self.engine.nc, feed, self.room, self._deliver)
        self.pulls.append(pull)
        pull.start()

    def _deliver(self, msg: Msg, feed: Feed) -> None:
        token = self.engine.token_of(msg, feed, self.queue)
        if token is None:  # an event this queue's pattern does not want
            asyncio.get_running_loop().create_task(quietly(msg.ack()))
        else:
            self.arrived(token)

    def wake(self) -> None:
        for pull in self.pulls:
            pull.wake.set()

    async def stop(self) -> None:
        for pull in self.pulls:
            await pull.stop()
        self.engine.readers.discard(self)


class NatsEngine:
    """The :class:`~tidings.client.engine.Engine` of NATS JetStream."""

    def __init__(self, url: str, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url
        self._ssl = ssl_context
        self.nc: NatsClient = NatsClient()
        self.js: Any = None
        self.capabilities = nats_capabilities()
        self._feeds: dict[str, list[Feed]] = {}
        self._private: list[tuple[str, str | None]] = []  # streams / consumers to delete
        self.readers: set[_Reader] = set()
        self._mover: Pull | None = None
        self._events_ready = False
        self._refused: asyncio.Future[str] | None = None
        self._outbox: list[tuple[list[tuple[str, bytes, dict[str, str]]],
                                 asyncio.Future[BaseException | None]]] = []
        self._flush_soon = False
        #: The stream verbs (client/nats_streams.py).
        self.logs = JetStreamLogs(self)

    # -- connection ------------------------------------------------------------------------

    async def open(self) -> None:
        parts = urlsplit(self.url)
        options: dict[str, Any] = {
            "servers": [self.url], "allow_reconnect": True, "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25, "connect_timeout": 5,
            "error_cb": self._error, "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected,
        }
        if self._ssl is not None or parts.scheme == "tls":
            options["tls"] = self._ssl or ssl.create_default_context()
        try:
            # nats-py retries a first connection as long as reconnections: refuse fast instead
            _, writer = await asyncio.wait_for(asyncio.open_connection(
                parts.hostname or "127.0.0.1", parts.port or 4222), 5)
            writer.close()
            await self._first_connect(options)
        except nats.errors.Error as e:
            if "authorization" in str(e).lower():
                raise AccessRefusedError(f"login refused by {redact(self.url)}: {e}") from e
            raise BrokenResourceError(f"cannot connect to {redact(self.url)}: {e!r}") from e
        except (TimeoutError, OSError) as e:
            raise BrokenResourceError(f"cannot connect to {redact(self.url)}: {e!r}") from e
        self.js = self.nc.jetstream(timeout=5)
        try:
            info = await self.js.account_info()
        except nats.js.errors.Error as e:
            await self.nc.close()
            raise NotSupportedError(
                f"NATS at {redact(self.url)}", "use JetStream",
                f"start nats-server with -js (JetStream is off: {e})") from e
        del info
        version = str(getattr(self.nc, "_server_info", {}).get("version", ""))
        self.capabilities = nats_capabilities(f"NATS {version} JetStream".replace("  ", " "))
        await self._start_mover()

    async def _first_connect(self, options: dict[str, Any]) -> None:
        """Connect, or fail at the first refusal of the login (nats-py would retry it)."""
        loop = asyncio.get_running_loop()
        self._refused = loop.create_future()
        connecting = loop.create_task(self.nc.connect(**options))
        done, _ = await asyncio.wait({connecting, self._refused}, timeout=15,
                                     return_when=asyncio.FIRST_COMPLETED)
        if connecting in done:
            connecting.result()
            return
        await quietly(self.nc.close())
        connecting.cancel()
        if self._refused in done:
            raise AccessRefusedError(
                f"login refused by {redact(self.url)}: {self._refused.result()}")
        raise BrokenResourceError(f"cannot connect to {redact(self.url)} within 15 s")

    async def _error(self, error: Exception) -> None:
        log.debug("NATS: %r", error)
        refused = self._refused
        if (refused is not None and not refused.done() and not self.nc.is_connected
                and "authorization" in str(error).lower()):
            refused.set_result(str(error).strip() or "authorization violation")

    async def _disconnected(self) -> None:
        if not self.nc.is_closed:
            log.warning("connection to NATS at %s lost; reconnecting", redact(self.url))

    async def _reconnected(self) -> None:
        log.warning("reconnected to NATS at %s", redact(self.url))

    def _broker(self) -> str:
        return self.capabilities.broker

    async def jetstream(self, call: Callable[[], Any], what: str) -> Any:
        try:
            return await retrying(call, TRANSIENT, what)
        except nats.js.errors.NotFoundError as e:
            raise NotFoundError(f"{what}: not found on {self._broker()}") from e
        except nats.js.errors.BadRequestError as e:
            raise PreconditionFailedError(f"{what}: {e.description}") from e
        except nats.js.errors.APIError as e:
            raise TidingsError(f"{what}: {e.description or e}") from e

    async def _pages(self, page: Callable[[int], Any], what: str) -> list[Any]:
        """Every item of a JetStream list (the API answers 256 at a time)."""
        found: list[Any] = []
        while True:
            more = await self.jetstream(lambda: page(len(found)), what)
            found.extend(more or [])
            if not more:
                return found

    # -- declarations ----------------------------------------------------------------------

    async def create_queue(self, name: str, spec: QueueSpec, rules: QueueRules) -> None:
        stream = stream_name(name)
        config = api.StreamConfig(
            name=stream, subjects=[queue_subject(name)], description=rules.dumps(),
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE if spec.durable and not spec.exclusive
            else api.StorageType.MEMORY,
            max_msgs=spec.max_length if spec.max_length is not None else -1,
            discard=api.DiscardPolicy.NEW, duplicate_window=120.0,
            max_age=86_400.0 if spec.exclusive else None)
        await self.declare(config, f"declare queue '{name}'")
        consumer = api.ConsumerConfig(
            durable_name=CONSUMER, ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=rules.consumer_timeout_ms / 1000, max_deliver=-1,
            max_ack_pending=MAX_ACK_PENDING, deliver_policy=api.DeliverPolicy.ALL)
        await self.jetstream(lambda: self.js.add_consumer(stream, config=consumer),
                        f"declare the consumer of queue '{name}'")
        if spec.exclusive:
            self._private.append((stream, None))

    async def declare(self, config: api.StreamConfig, what: str) -> None:
        """Create a JetStream stream, or find it with the same settings."""
        await self.jetstream(lambda: self._add_or_same(config), what)

    async def _add_or_same(self, config: api.StreamConfig) -> Any:
        """Create the stream; an existing one with the same settings is fine, one with other
        settings is a precondition failure (as a redeclare with other arguments in AMQP)."""
        try:
            return await self.js.add_stream(config=config)
        except nats.js.errors.BadRequestError as e:
            if e.err_code != 10058:  # stream name already in use with a different config
                raise
            info = await self.js.stream_info(config.name)
            have = info.config
            if (have.description != config.description or have.storage != config.storage
                    or (have.max_msgs or -1) != (config.max_msgs or -1)):
                raise PreconditionFailedError(
                    f"queue stream '{config.name}' exists with other settings") from e
            return info

    async def read_rules(self, name: str) -> QueueRules:
        info = await self.jetstream(lambda: self.js.stream_info(stream_name(name)),
                                    f"queue '{name}'")
        return QueueRules.loads(info.config.description)

    async def _ensure_events(self) -> None:
        if self._events_ready:
            return
        config = api.StreamConfig(
            name=EVENTS_STREAM, subjects=["tidings.ev.>"],
            retention=api.RetentionPolicy.INTEREST, storage=api.StorageType.FILE,
            duplicate_window=120.0)
        await self.declare(config, "declare the events stream")
        self._events_ready = True

    async def bind(self, queue: str, pattern: str, rules: QueueRules) -> None:
        await self._ensure_events()
        subject, exact = event_filter(pattern)
        durable = event_consumer(queue, pattern)
        config = api.ConsumerConfig(
            durable_name=durable, filter_subject=subject, ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=rules.consumer_timeout_ms / 1000, max_deliver=-1,
            max_ack_pending=MAX_ACK_PENDING, deliver_policy=api.DeliverPolicy.NEW,
            description=json.dumps({"queue": queue, "pattern": pattern}),
            inactive_threshold=PRIVATE_INACTIVE_S if queue.startswith("tidings.private.")
            else None)
        await self.jetstream(lambda: self.js.add_consumer(EVENTS_STREAM, config=config),
                        f"bind queue '{queue}' to '{pattern}'")
        if queue.startswith("tidings.private."):
            self._private.append((EVENTS_STREAM, durable))
        feed = Feed(EVENTS_STREAM, durable, None if exact else pattern)
        feeds = await self._feeds_of(queue)
        if all(f.durable != durable for f in feeds):
            feeds.append(feed)
            for reader in list(self.readers):
                if reader.queue == queue:
                    reader.add(feed)

    async def _feeds_of(self, queue: str) -> list[Feed]:
        """The queue's own stream, then the event consumers bound to it (by any process)."""
        feeds = self._feeds.get(queue)
        if feeds is None:
            feeds = [Feed(stream_name(queue), CONSUMER)]
            prefix = f"{escape(queue)}_Z"
            with contextlib.suppress(NotFoundError):  # no events stream yet
                for info in await self._pages(
                        lambda at: self.js.consumers_info(EVENTS_STREAM, offset=at),
                        "list event subscriptions"):
                    if info.name.startswith(prefix):
                        pattern = json.loads(info.config.description or "{}").get("pattern")
                        exact = pattern is None or event_filter(pattern)[1]
                        feeds.append(Feed(EVENTS_STREAM, info.name,
                                           None if exact else pattern))
            self._feeds[queue] = feeds
        return feeds

    # -- writing ---------------------------------------------------------------------------

    async def store(self, items: list[tuple[str, bytes, dict[str, str]]], what: str) -> None:
        """Publish each ``(subject, payload, headers)`` and wait until JetStream has stored
        it. Every publish of one loop turn goes out together and waits on nats-py's shared
        acknowledgement inbox (one timer for the lot, not a request per message); what is
        not acknowledged is published again, with the same ids, for up to 30 s."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[BaseException | None] = loop.create_future()
        self._outbox.append((items, done))
        if not self._flush_soon:
            self._flush_soon = True
            loop.call_soon(lambda: loop.create_task(self._flush()))
        error = await done
        if error is None:
            return
        if isinstance(error, nats.js.errors.NoStreamResponseError):
            raise NotFoundError(f"{what}: no such queue on {self._broker()}") from error
        if isinstance(error, nats.js.errors.APIError):
            if error.err_code == 10077 or "maximum messages" in str(error.description):
                raise PreconditionFailedError(
                    f"{what}: the queue is full (max_length)") from error
            raise TidingsError(f"{what}: {error.description or error}") from error
        if isinstance(error, TidingsError):
            raise error
        raise BrokenResourceError(f"{what} failed: {error!r}") from error

    async def _flush(self) -> None:
        batch, self._outbox, self._flush_soon = self._outbox, [], False
        flat = [item for items, _ in batch for item in items]
        outcome: list[BaseException | None] = [None] * len(flat)
        waiting = list(range(len(flat)))
        deadline, pause = time.monotonic() + RETRY_FOR_S, 0.05
        while waiting:
            futures: dict[int, asyncio.Future[Any]] = {}
            try:
                for i in waiting:
                    subject, body, headers = flat[i]
                    futures[i] = await self.js.publish_async(subject, body, headers=dict(headers))
            except TRANSIENT as e:  # the connection is being re-established
                outcome_error: BaseException | None = e
            else:
                outcome_error = None
            if futures:
                await asyncio.wait(futures.values(), timeout=5)
            again = []
            for i in waiting:
                future = futures.get(i)
                if future is None or not future.done():
                    if future is not None:
                        future.cancel()
                    again.append(i)
                elif future.exception() is not None:
                    outcome[i] = future.exception()
            waiting = again
            if waiting and time.monotonic() > deadline:
                for i in waiting:
                    outcome[i] = BrokenResourceError(
                        f"not acknowledged within {RETRY_FOR_S:.0f} s: {outcome_error!r}")
                break
            if waiting:
                await asyncio.sleep(pause)
                pause = min(1.0, pause * 2)
        at = 0
        for items, done in batch:
            errors = [e for e in outcome[at:at + len(items)] if e is not None]
            at += len(items)
            if not done.done():
                done.set_result(errors[0] if errors else None)

    def headers_of(self, message: Message, scope: str = "") -> dict[str, str]:
        """The message's NATS headers. ``scope`` qualifies its ``Nats-Msg-Id`` in a stream
        shared by many queues or topics: JetStream deduplicates per stream, and the same id
        sent to two queues within the window must not lose the second."""
        headers = {META_HEADER: encode_meta(message)}
        if message.message_id:
            headers[MSG_ID_HEADER] = f"{scope}|{message.message_id}" if scope else \
                message.message_id
        return headers

    async def append(self, queue: str, messages: Sequence[Message],
                     due_ms: int | None) -> None:
        if due_ms is not None:
            await self._append_delayed(queue, messages, due_ms)
            return
        subject = queue_subject(queue)
        await self.store([(subject, m.body, self.headers_of(m)) for m in messages],
                            f"send to '{queue}'")

    async def _append_delayed(self, queue: str, messages: Sequence[Message],
                              due_ms: int) -> None:
        due = str(due_ms)
        items = []
        for m in messages:
            headers = self.headers_of(m, f"{queue}@{due}")
            headers.update({DUE_HEADER: due, TARGET_HEADER: queue})
            items.append((f"tidings.delay.{escape(queue)}", m.body, headers))
        await self.store(items, f"send to '{queue}' with a delay")

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        subject = event_subject(topic)
        await self._ensure_events()
        await self.store([(subject, m.body, self.headers_of(m, topic)) for m in messages],
                            f"publish to '{topic}'")

    async def _start_mover(self) -> None:
        config = api.StreamConfig(
            name=DELAYED_STREAM, subjects=["tidings.delay.>"],
            retention=api.RetentionPolicy.WORK_QUEUE, storage=api.StorageType.FILE,
            duplicate_window=120.0)
        await self.declare(config, "declare the delay stream")
        consumer = api.ConsumerConfig(
            durable_name=MOVER, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30.0,
            max_deliver=-1, max_ack_pending=MAX_ACK_PENDING)
        await self.jetstream(lambda: self.js.add_consumer(DELAYED_STREAM, config=consumer),
                        "declare the delay mover")
        self._mover = Pull(self.nc, Feed(DELAYED_STREAM, MOVER), lambda: 256,
                            self._due)
        self._mover.start()

    def _due(self, msg: Msg, feed: Feed) -> None:
        asyncio.get_running_loop().create_task(self._move(msg))

    async def _move(self, msg: Msg) -> None:
        """A delayed message: back to wait while it is early, into its queue once due."""
        headers = msg.headers or {}
        try:
            wait_ms = int(headers.get(DUE_HEADER, "0")) - time.time() * 1000
            if wait_ms > 5:
                await msg.nak(delay=wait_ms / 1000)
                return
            queue = headers.get(TARGET_HEADER, "")
            seq = msg.metadata.sequence.stream
            moved = {META_HEADER: headers.get(META_HEADER, ""),
                     MSG_ID_HEADER: f"{headers.get(MSG_ID_HEADER, '')}~d{seq}"}
            try:
                await self.store([(queue_subject(queue), msg.data, moved)],
                                    f"move a delayed message to '{queue}'")
            except NotFoundError:
                log.warning("delayed message for the deleted queue '%s' dropped", queue)
            await msg.ack()
        except Exception as e:  # the mover must live on: the message comes back later
            log.debug("moving a delayed message failed: %r", e)

    # -- reading ---------------------------------------------------------------------------

    def token_of(self, msg: Msg, feed: Feed, queue: str) -> Token | None:
        """A delivery of ``feed`` for ``queue``, or None for an event the queue's pattern does
        not want (a ``#`` NATS cannot express)."""
        message = message_of(msg.data, (msg.headers or {}).get(META_HEADER))
        if feed.stream == EVENTS_STREAM:
            message.routing_key = topic_of(msg.subject)
            if feed.pattern is not None and not topic_matches(feed.pattern, message.routing_key):
                return None
        meta = msg.metadata
        enqueued_ms = meta.timestamp.timestamp() * 1000 if meta.timestamp else time.time() * 1000
        return Token(queue, message, meta.num_delivered - 1, enqueued_ms, msg)

    async def reader(self, queue: str, room: Callable[[], int],
                     arrived: Callable[[Token], None]) -> _Reader:
        reader = _Reader(self, queue, room, arrived)
        for feed in await self._feeds_of(queue):
            reader.add(feed)
        self.readers.add(reader)
        return reader

    async def read_one(self, queue: str) -> Token | None:
        for feed in await self._feeds_of(queue):
            while True:
                msg = await retrying(lambda f=feed: self._next(f), TRANSIENT,
                                     f"get from '{queue}'")
                if msg is None:
                    break  # nothing waiting in this feed
                token = self.token_of(msg, feed, queue)
                if token is not None:
                    return token
                await quietly(msg.ack())
        return None

    async def _next(self, feed: Feed) -> Msg | None:
        """One message of ``feed`` if one is waiting (a pull request that does not wait, on an
        inbox of its own: JetStream delivers under the message's subject, not the inbox's)."""
        inbox = self.nc.new_inbox()
        answer: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

        async def arrived(msg: Msg) -> None:
            if not answer.done():
                answer.set_result(msg)
            elif pull_status(msg) is None and msg.reply:  # for a get that gave up: back it goes
                await quietly(msg.nak())

        sub = await self.nc.subscribe(inbox, cb=arrived)
        try:
            await self.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{feed.stream}.{feed.durable}",
                                  b'{"batch":1,"no_wait":true}', reply=inbox)
            try:
                msg = await asyncio.wait_for(answer, 2)
            except TimeoutError:
                await self._nudge(feed)
                raise
        finally:
            await quietly(sub.unsubscribe())
        return None if pull_status(msg) is not None else msg

    async def _nudge(self, feed: Feed) -> None:
        """NATS 2.9 can leave a consumer that was asked for its info before a purge silent to
        pull requests, until its info is asked again."""
        with contextlib.suppress(Exception):
            await self.js.consumer_info(feed.stream, feed.durable)

    # -- settling --------------------------------------------------------------------------

    async def settle(self, tokens: Sequence[Token]) -> None:
        for token in tokens:
            await token.handle.ack()

    async def rewrite(self, token: Token, queue: str, message: Message, failures: int,
                      due_ms: int | None) -> None:
        """Back to its own queue: a NAK (JetStream counts the failure), with the delay as the
        NAK's. Into another queue: stored there under an id derived from the delivery (so a
        retry after a crash is stored once), then acked."""
        msg = token.handle
        if queue == token.queue:
            delay_ms = None if due_ms is None else max(1, due_ms - int(time.time() * 1000))
            await self._settle_sync(msg, _nak(delay_ms))
            return
        headers = self.headers_of(message)
        headers[MSG_ID_HEADER] = f"{message.message_id or ''}~x{msg.metadata.sequence.stream}"
        await self.store([(queue_subject(queue), message.body, headers)],
                            f"move a message of '{token.queue}' to '{queue}'")
        await msg.ack()

    async def _settle_sync(self, msg: Msg, payload: bytes) -> None:
        """Settle and wait for JetStream to have done it (acks are otherwise sent blind)."""
        assert msg.reply
        await retrying(lambda: self.nc.request(msg.reply, payload, timeout=5), TRANSIENT,
                       "settle a delivery")

    async def renew(self, tokens: Sequence[Token]) -> None:
        for token in tokens:
            await token.handle.in_progress()

    # -- looking at and editing queues -----------------------------------------------------

    async def _stored(self, stream: str, subject: str | None = None):  # type: ignore[no-untyped-def]
        """Every message of ``stream`` (on ``subject``), oldest first, left in place."""
        seq = 0
        while True:
            try:
                raw = await self.jetstream(
                    lambda s=seq: self.js.get_msg(stream, seq=s + 1, subject=subject or ">",
                                                  next=True), f"read stream '{stream}'")
            except NotFoundError:
                return
            seq = raw.seq
            yield raw

    async def scan(self, queue: str, delayed: bool = False) -> AsyncIterator[Stored]:
        sources = [(stream_name(queue), None)]
        if delayed:
            sources.append((DELAYED_STREAM, f"tidings.delay.{escape(queue)}"))
        for stream, subject in sources:
            async for raw in self._stored(stream, subject):
                message = message_of(raw.data or b"", (raw.headers or {}).get(META_HEADER),
                                     queue)
                yield Stored(message, (stream, raw.seq))

    async def remove(self, queue: str, stored: Stored) -> bool:
        stream, seq = stored.handle
        with contextlib.suppress(NotFoundError):
            return bool(await self.jetstream(lambda: self.js.delete_msg(stream, seq),
                                        f"delete a message of '{queue}'"))
        return False

    async def restore(self, stored: Stored, queue: str, message: Message) -> None:
        stream, seq = stored.handle
        headers = self.headers_of(message)
        headers[MSG_ID_HEADER] = f"{message.message_id or ''}~r{seq}"
        await self.store([(queue_subject(queue), message.body, headers)],
                            f"replay a dead letter into '{queue}'")
        await self.jetstream(lambda: self.js.delete_msg(stream, seq),
                        f"remove a replayed dead letter of '{queue}'")

    async def purge(self, queue: str) -> int:
        stream = stream_name(queue)
        info = await self.jetstream(lambda: self.js.stream_info(stream), f"purge '{queue}'")
        await self.jetstream(lambda: self.js.purge_stream(stream), f"purge '{queue}'")
        await self._nudge(Feed(stream, CONSUMER))
        return int(info.state.messages)

    # -- the rest --------------------------------------------------------------------------

    async def sync(self) -> None:
        """Every ack sent so far has reached the server."""
        await retrying(lambda: self.nc.flush(timeout=5), TRANSIENT, "sync")

    async def statistics(self) -> BrokerStatistics:
        """Every queue's counts from its stream and consumers: ready (not yet delivered),
        unacked (delivered, not settled), delayed (waiting in the delay stream), consumers
        (pull requests waiting)."""
        delayed: dict[str, int] = {}
        with contextlib.suppress(NotFoundError):
            info = await self.jetstream(
                lambda: self.js.stream_info(DELAYED_STREAM, subjects_filter="tidings.delay.>"),
                "statistics")
            for subject, count in (info.state.subjects or {}).items():
                delayed[subject.removeprefix("tidings.delay.")] = int(count)
        streams = await self._pages(lambda at: self.js.streams_info(offset=at), "statistics")
        events: dict[str, list[Any]] = {}
        if any(s.config.name == EVENTS_STREAM for s in streams):
            for info in await self._pages(
                    lambda at: self.js.consumers_info(EVENTS_STREAM, offset=at), "statistics"):
                events.setdefault(info.name.split("_Z")[0], []).append(info)
        names = [s.config.name for s in streams
                 if s.config.name.startswith(QUEUE_STREAM_PREFIX)]

        async def info(stream: str) -> Any:
            with contextlib.suppress(NotFoundError):
                return await self.jetstream(lambda: self.js.consumer_info(stream, CONSUMER),
                                       "statistics")
            return None

        own = await asyncio.gather(*(info(n) for n in names))  # one round trip for all
        queues = []
        for stream, mine in zip(names, own, strict=True):
            escaped = stream[len(QUEUE_STREAM_PREFIX):]
            infos = [*events.get(escaped, []), *([mine] if mine is not None else [])]
            queues.append(queue_statistics(
                "/", unescape(escaped), ready=sum(int(i.num_pending or 0) for i in infos),
                unacked=sum(int(i.num_ack_pending or 0) for i in infos),
                delayed=delayed.get(escaped, 0),
                consumers=sum(int(i.num_waiting or 0) for i in infos)))
        return broker_statistics(sorted(queues, key=lambda q: q.name))

    async def close(self) -> None:
        for reader in list(self.readers):
            await reader.stop()
        if self._mover is not None:
            await self._mover.stop()
        if self.nc.is_connected:
            for stream, consumer in self._private:
                with contextlib.suppress(Exception):
                    if consumer is None:
                        await self.js.delete_stream(stream)
                    else:
                        await self.js.delete_consumer(stream, consumer)
        with contextlib.suppress(Exception):
            await self.nc.close()



def _nak(delay_ms: int | None) -> bytes:
    if not delay_ms:
        return b"-NAK"
    return b"-NAK " + json.dumps({"delay": int(delay_ms) * 1_000_000}).encode()
