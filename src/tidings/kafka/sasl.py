"""SASL on the Kafka face: SaslHandshake picks a mechanism, SaslAuthenticate carries its
tokens (after a v0 handshake the tokens come bare, see :mod:`tidings.kafka.protocol`).

A login name ``vhost:user`` chooses the vhost (else the listener's ``--kafka-vhost``), as
RabbitMQ's MQTT plugin does. PLAIN checks the password against tidings' users file (the same
users as AMQP and HTTP, the same hashing off the event loop and delays for a peer that keeps
failing); SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, by ``scramp``) prove it against the
salted keys the users file keeps for each user, never the password. A user must have
permissions on the vhost. One exchange per connection; a failed one ends the connection
once its answer is sent.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from scramp import ScramException, ScramMechanism

from tidings.auth import SCRAM_MECHANISMS, UserStore
from tidings.errors import AccessRefusedError, TidingsError

__all__ = ["MECHANISMS", "SaslExchange", "SaslFailed"]

MECHANISMS = ("PLAIN", *SCRAM_MECHANISMS)


class SaslFailed(AccessRefusedError):
    """The exchange failed: the message goes to the client, then the connection ends."""


@dataclass
class SaslExchange:
    """One connection's authentication: the chosen mechanism, and the user once proven."""

    users: UserStore
    vhost: str
    peer_host: str | None
    mechanism: str | None = None
    user: str | None = None
    _scram: Any = field(default=None, repr=False)
    _scram_user: str = ""

    def choose(self, mechanism: str) -> bool:
        if mechanism not in MECHANISMS or self.mechanism is not None:
            return False
        self.mechanism = mechanism
        return True

    async def step(self, token: bytes) -> bytes:
        """The answer to one token; raises :class:`SaslFailed`."""
        if self.mechanism is None or self.user is not None:
            raise SaslFailed("SaslAuthenticate needs a SaslHandshake first, and comes once")
        try:
            if self.mechanism == "PLAIN":
                return await self._plain(token)
            return self._scram_step(token)
        except (ScramException, TidingsError, UnicodeDecodeError, ValueError) as e:
            self.mechanism = None
            raise SaslFailed(f"authentication failed: {e}") from None

    async def _plain(self, token: bytes) -> bytes:
        parts = token.split(b"\0")
        if len(parts) != 3:
            raise SaslFailed("a PLAIN token is authzid NUL user NUL password")
        _, username, password = (p.decode() for p in parts)
        user = await self.users.authenticate_async(self._who(username), password,
                                                   self.peer_host)
        self._admit(user)
        return b""

    def _scram_step(self, token: bytes) -> bytes:
        if self._scram is None:
            mechanism = ScramMechanism(self.mechanism)
            fake = mechanism.make_auth_info(secrets.token_urlsafe(16), iteration_count=4096)

            def credentials(username: str) -> tuple[bytes, bytes, bytes, int]:
                # An unknown user (or one without SCRAM keys) gets made-up ones: the proof
                # fails as for a wrong password, and the names that exist stay unsaid.
                self._scram_user = self._who(username)
                found = self.users.scram_credentials(self._scram_user, str(self.mechanism))
                return found if found is not None else fake
            self._scram = mechanism.make_server(credentials)
            self._scram.set_client_first(token.decode())
            return str(self._scram.get_server_first()).encode()
        self._scram.set_client_final(token.decode())
        answer = str(self._scram.get_server_final()).encode()
        self._admit(self.users.admit(self._scram_user, self.peer_host))
        return answer

    def _who(self, name: str) -> str:
        """The user a login name means. ``vhost:user`` logs in to another vhost than the
        listener's (RabbitMQ's convention for protocols without vhosts) when ``name`` itself
        is no user and the vhost exists."""
        users = self.users.reload()
        if ":" in name and name not in users.users:
            vhost, user = name.split(":", 1)
            if vhost in users.vhosts:
                self.vhost = vhost
                return user
        return name

    def _admit(self, user: str) -> None:
        self.users.check_vhost(user, self.vhost)
        self.user = user
