"""The Kafka listener: its sockets (plain and TLS), the dispatch of each request to what
answers it on the connection's vhost (topics, produce, fetch, groups, offsets; see
:mod:`tidings.kafka.vhost`) under the connection's user's permissions
(:mod:`tidings.kafka.access`), logins (:mod:`tidings.kafka.sasl`), and the bounds that hold
over all connections (unfinished request bytes, idle connections). Each connection is a
:class:`~tidings.kafka.link.KafkaLink`, which keeps the answers in request order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import ssl
from collections.abc import Callable
from typing import Any

from kio.schema.errors import ErrorCode

from tidings.auth import UserStore
from tidings.errors import TidingsError
from tidings.kafka.access import Access
from tidings.kafka.errors import GroupError, TopicError
from tidings.kafka.link import KafkaLink
from tidings.kafka.protocol import (
    RAW_SASL,
    KafkaProtocolError,
    KafkaRequest,
    api_versions_refusal,
    make,
    nested,
    produce_refusal,
    response_schema,
)
from tidings.kafka.sasl import MECHANISMS, SaslFailed
from tidings.kafka.settings import KafkaSettings
from tidings.kafka.topics import NO_THROTTLE
from tidings.kafka.versions import (
    API_VERSIONS,
    CONSUMER_GROUP_HEARTBEAT,
    CREATE_TOPICS,
    DELETE_GROUPS,
    DELETE_TOPICS,
    DESCRIBE_CONFIGS,
    DESCRIBE_GROUPS,
    FETCH,
    FIND_COORDINATOR,
    HEARTBEAT,
    INIT_PRODUCER_ID,
    JOIN_GROUP,
    LEAVE_GROUP,
    LIST_GROUPS,
    LIST_OFFSETS,
    METADATA,
    OFFSET_COMMIT,
    OFFSET_FETCH,
    PRODUCE,
    SASL_AUTHENTICATE,
    SASL_HANDSHAKE,
    SUPPORTED,
    SYNC_GROUP,
)
from tidings.kafka.vhost import KafkaVhost
from tidings.routing.front_door import FrontDoor

__all__ = ["KafkaServer"]

log = logging.getLogger("tidings.kafka")



class KafkaServer:
    """One Kafka listener (plain and, optionally, TLS) on one vhost of the broker."""

    def __init__(self, broker: FrontDoor, settings: KafkaSettings,
                 users: UserStore | None = None) -> None:
        self.broker = broker
        self.settings = settings
        #: The users file (None: no logins, every request allowed: embedded tests only).
        self.users = users
        #: What answers each vhost's requests, made when a connection first uses it.
        self.vhosts: dict[str, KafkaVhost] = {}
        self.links: set[KafkaLink] = set()
        #: Bytes of requests begun but not whole yet, over every connection.
        self.buffered_bytes = 0
        self._idle_sweeper: asyncio.Task[None] | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._answers: dict[int, Callable[[KafkaLink, KafkaRequest, Any], Any]] = {
            PRODUCE: lambda link, r, schema: link.on.producing.produce(
                r.body, schema, link.access),
            FETCH: lambda link, r, schema: link.on.fetching.fetch(r.body, schema, link.access),
            LIST_OFFSETS: lambda link, r, schema: link.on.fetching.list_offsets(
                r.body, schema, link.access),
            METADATA: lambda link, r, schema: link.on.topics.metadata(
                r.api_version, r.body, schema, link.port, link.access),
            API_VERSIONS: lambda link, r, schema: self._api_versions(schema),
            INIT_PRODUCER_ID: lambda link, r, schema: link.on.producing.init_producer_id(
                r.body, schema),
            DESCRIBE_CONFIGS: lambda link, r, schema: link.on.topics.describe_configs(
                r.body, schema, link.access),
            CREATE_TOPICS: lambda link, r, schema: self._durable(
                link.on.topics.create_topics(r.body, schema, link.access)),
            DELETE_TOPICS: self._delete_topics,
            FIND_COORDINATOR: lambda link, r, schema: link.on.groups.find_coordinator(
                r.body, schema, link.port, link.access.check_group),
            JOIN_GROUP: lambda link, r, schema: link.on.groups.join(
                r.body, schema, r.api_version, r.client_id or "", link.host,
                link.access.check_group),
            SYNC_GROUP: lambda link, r, schema: link.on.groups.sync(
                r.body, schema, link.access.check_group),
            HEARTBEAT: lambda link, r, schema: link.on.groups.heartbeat(
                r.body, schema, link.access.check_group),
            LEAVE_GROUP: lambda link, r, schema: link.on.groups.leave(
                r.body, schema, link.access.check_group),
            LIST_GROUPS: lambda link, r, schema: link.on.groups.list_groups(
                r.body, schema, link.access.may_see_group,
                link.on.offsets.committed_groups()),
            DESCRIBE_GROUPS: lambda link, r, schema: link.on.groups.describe_groups(
                r.body, schema, link.access.check_group, link.on.offsets.committed_groups),
            DELETE_GROUPS: lambda link, r, schema: self._durable(link.on.groups.delete_groups(
                r.body, schema, link.access.check_group_delete, link.on.offsets.delete_group)),
            OFFSET_COMMIT: lambda link, r, schema: self._group_and_topic(
                link, r.body, schema, link.on.offsets.commit),
            OFFSET_FETCH: lambda link, r, schema: self._group_and_topic(
                link, r.body, schema, link.on.offsets.fetch),
            SASL_HANDSHAKE: self._sasl_handshake,
            SASL_AUTHENTICATE: self._sasl_authenticate,
        }

    def vhost(self, name: str) -> KafkaVhost:
        """What serves ``name``'s topics and groups."""
        found = self.vhosts.get(name)
        if found is None:
            self.broker.declare_vhost(name)  # (a vhost of the users file, as AMQP's open)
            found = self.vhosts[name] = KafkaVhost(
                self.broker, dataclasses.replace(self.settings, vhost=name))
        return found

    async def listen(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Start listening (TLS only with ``tls``); returns the bound port (``port`` 0 picks
        one). The plain listener's advertised port is ``settings.port`` (0: the bound one);
        a TLS listener advertises its bound port."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: KafkaLink(self, advertised), host, port,
                                          ssl=tls)
        self._servers.append(server)
        if self._idle_sweeper is None:
            self._idle_sweeper = loop.create_task(self._close_idle())
        bound = int(server.sockets[0].getsockname()[1])
        if not self.settings.port and tls is None:
            self.settings.port = bound
        advertised = bound if tls is not None else self.settings.port
        return bound

    async def _close_idle(self) -> None:
        """Close connections with nothing open and no request for
        ``connections_max_idle_ms`` (Kafka's ``connections.max.idle.ms``): clients open a
        new one when they next need it; a peer gone without a word stops holding one."""
        idle_s = self.settings.connections_max_idle_ms / 1000
        every_s = min(max(idle_s / 4, 0.05), 5.0)
        sweeps = math.ceil(idle_s / every_s)
        while True:
            await asyncio.sleep(every_s)
            # Counted in sweeps (the link only zeroes a counter on traffic), not read from
            # the clock on every chunk a link receives or writes.
            for link in list(self.links):
                link.quiet_sweeps = 0 if link.busy else link.quiet_sweeps + 1
                if link.quiet_sweeps > sweeps:
                    log.info("kafka connection %s closed: idle for over %.0f s", link.peer,
                             idle_s)
                    link.close()

    async def close(self) -> None:
        if self._idle_sweeper is not None:
            self._idle_sweeper.cancel()
        for each in self.vhosts.values():
            each.coordinator.close()
        for server in self._servers:
            server.close()
        for link in list(self.links):
            link.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    # -- who a connection is -------------------------------------------------------------------

    def access_of(self, peer_host: str | None) -> Access:
        """A new connection's access before it logs in: everything without a users file,
        the anonymous user (guest, from where guest may connect) unless SASL is required,
        else nothing."""
        users = self.users
        user = None
        if users is not None and not self.settings.require_sasl:
            user = users.anonymous(peer_host)
            if user is not None:
                try:
                    users.check_vhost(user, self.settings.vhost)
                except TidingsError:
                    user = None
        return Access(users, self.settings.vhost, user)

    # -- answering --------------------------------------------------------------------------

    def answer(self, link: KafkaLink, request: KafkaRequest) -> Any:
        """The response entity (or an awaitable of it; None: no response)."""
        key = request.api_key
        if request.refused is not None:
            if key == API_VERSIONS:
                return api_versions_refusal()
            if key == CONSUMER_GROUP_HEARTBEAT:
                return make(response_schema(request), throttle_time=NO_THROTTLE,
                            error_code=ErrorCode.unsupported_version,
                            error_message=request.refused, member_id=None, member_epoch=-1,
                            heartbeat_interval=NO_THROTTLE, assignment=None)
            return produce_refusal(request)
        if link.access.user is None and self.users is not None and key not in _BEFORE_LOGIN:
            raise KafkaProtocolError(f"{request.name} before SASL authentication (this "
                                     f"listener needs a login)")
        schema = None if request.api_version == RAW_SASL else response_schema(request)
        return self._answers[key](link, request, schema)

    def _api_versions(self, schema: type) -> Any:
        version_type = nested(schema, "ApiVersion")
        versions = tuple(make(version_type, api_key=k, min_version=lo, max_version=hi)
                         for k, (lo, hi) in sorted(SUPPORTED.items()))
        return make(schema, error_code=ErrorCode.none, throttle_time=NO_THROTTLE,
                    api_keys=versions)

    def _delete_topics(self, link: KafkaLink, request: KafkaRequest, schema: type) -> Any:
        for name in request.body.topic_names:
            if link.access.may("configure", name):
                link.on.producing.forget(name)
        return self._durable(link.on.topics.delete_topics(request.body, schema, link.access))

    @staticmethod
    def _group_and_topic(link: KafkaLink, body: Any, schema: type,
                         answer: Callable[[Any, type, Callable[[str], None]], Any]) -> Any:
        """OffsetCommit and OffsetFetch: the group must be usable, each topic readable."""
        try:
            link.access.check_group(body.group_id)
        except GroupError as e:
            refused, why = e.error_code, str(e)

            def check(topic: str) -> None:
                raise TopicError(refused, why)
            return answer(body, schema, check)
        return answer(body, schema, lambda topic: link.access.check_topic("read", topic))

    async def _durable(self, response: Any) -> Any:
        """``response`` once the changes behind it are on disk."""
        await self.broker.sync()
        return response

    # -- SASL ----------------------------------------------------------------------------------

    def _sasl_handshake(self, link: KafkaLink, request: KafkaRequest, schema: type) -> Any:
        if link.sasl is None or link.sasl.mechanism is not None:  # no logins, or a second
            code = ErrorCode.illegal_sasl_state
        elif link.sasl.choose(request.body.mechanism):
            code = ErrorCode.none
            link.connection.raw_sasl = request.api_version == 0
        else:
            code = ErrorCode.unsupported_sasl_mechanism
        return make(schema, error_code=code, mechanisms=MECHANISMS)

    async def _sasl_authenticate(self, link: KafkaLink, request: KafkaRequest,
                                 schema: type) -> Any:
        raw = request.api_version == RAW_SASL
        token = request.body if raw else request.body.auth_bytes
        try:
            if link.sasl is None:
                raise SaslFailed("this listener has no logins")
            answer = await link.sasl.step(token)
        except SaslFailed as e:
            log.warning("kafka connection %s: %s", link.peer, e)
            link.close_after_answer = True
            if raw:
                return None  # a bare token has no way to say why: the connection ends
            return make(schema, error_code=ErrorCode.sasl_authentication_failed,
                        error_message=str(e), auth_bytes=b"", session_lifetime=NO_THROTTLE)
        if link.sasl is not None and link.sasl.user is not None:  # (the vhost it named)
            link.access = Access(self.users, link.sasl.vhost, link.sasl.user)
            link.on = self.vhost(link.sasl.vhost)
        elif raw:
            link.connection.raw_sasl = True  # SCRAM's second token comes bare too
        if raw:
            return answer
        return make(schema, error_code=ErrorCode.none, error_message=None, auth_bytes=answer,
                    session_lifetime=NO_THROTTLE)


#: What a connection may ask before it logs in, where logging in is needed.
_BEFORE_LOGIN = frozenset({API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE})
