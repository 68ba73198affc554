"""The gateway's shared state and the helpers every endpoint uses.

One :class:`Gateway` per app (``app.state.gateway``): the broker's front door, the users,
the event log, the leases of received messages and the limits. Endpoints are module-level
functions (``tidings.http.endpoints.*``) that find it with :func:`gateway`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

from starlette.requests import HTTPConnection, Request

from tidings.auth import UserStore
from tidings.http.errors import BadRequestError
from tidings.http.event_log import EventLog, IdempotencyKeys
from tidings.http.history import History
from tidings.http.lease_table import Leases
from tidings.http.middleware import user_of
from tidings.patterns import MAX_TOPIC_BYTES
from tidings.routing.front_door import DEFAULT_VHOST, FrontDoor

#: Largest request body accepted, bytes (``--http-max-body-bytes``).
DEFAULT_MAX_BODY_BYTES = 1 << 20


class ConnectionsView(Protocol):
    """What the gateway sees of the AMQP server's connections (``amqp/listing.py``)."""

    def connections(self) -> list[dict[str, Any]]: ...

    def channels(self) -> list[dict[str, Any]]: ...

    def consumers(self) -> list[dict[str, Any]]: ...

    def close(self, name: str, reason: str) -> bool: ...


def _vhost(row: dict[str, Any]) -> str:
    return str(row.get("vhost") or row.get("queue", {}).get("vhost", ""))


@dataclass
class Gateway:
    broker: FrontDoor
    users: UserStore
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    server_stats: Callable[[], dict[str, float]] | None = None
    connections: ConnectionsView | None = None
    events: EventLog = field(init=False)
    leases: Leases = field(init=False)
    history: History = field(init=False)
    idempotency: IdempotencyKeys = field(default_factory=IdempotencyKeys)

    def __post_init__(self) -> None:
        self.events = EventLog(self.broker)
        self.leases = Leases(self.broker)
        self.history = History(self.broker)
        self.closing = asyncio.Event()

    def shutdown(self) -> None:
        """Before the server stops: end streams and long-polls so it need not wait for them."""
        self.closing.set()
        self.events.close()
        self.history.close()

    def visible(self, request: Request) -> set[str] | None:
        """Vhosts the caller may see in listings (None: all, for administrator/monitoring)."""
        return self.users.visible_vhosts(user_of(request))

    def vhosts(self, request: Request) -> list[str]:
        seen = self.visible(request)
        return [v for v in self.broker.vhost_names() if seen is None or v in seen]

    def check(self, request: Request, permission: str, kind: str, name: str,
              vhost: str = DEFAULT_VHOST) -> None:
        user = user_of(request)
        self.users.check_vhost(user, vhost)
        if name:
            self.users.check(user, vhost, permission, kind, name)  # type: ignore[arg-type]

    def visible_connections(self, seen: set[str] | None,
                            kind: str = "connections") -> list[dict[str, Any]]:
        """The server's connections (or ``channels``, ``consumers``) in the vhosts ``seen``."""
        rows = getattr(self.connections, kind)() if self.connections else []
        return [c for c in rows if seen is None or _vhost(c) in seen]


def gateway(connection: HTTPConnection) -> Gateway:
    """The gateway of the app serving ``connection`` (a request or a WebSocket)."""
    found: Gateway = connection.app.state.gateway
    return found


def vhost_of(request: Request) -> str:
    """The vhost in the path (``%2F`` is ``/``, as in RabbitMQ's management API)."""
    return unquote(request.path_params.get("vhost", DEFAULT_VHOST))


def name_of(request: Request) -> str:
    return unquote(request.path_params["name"])


def topic_of(topic: str) -> str:
    if not topic or len(topic.encode()) > MAX_TOPIC_BYTES:
        raise BadRequestError(f"topic must be 1 to {MAX_TOPIC_BYTES} bytes")
    return topic
