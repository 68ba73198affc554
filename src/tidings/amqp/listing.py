"""What the management API shows of the AMQP server's live connections, channels and
consumers, with RabbitMQ's field names, and closing a connection by its name.

A connection is named as RabbitMQ names it, ``"peer -> local"`` (``"127.0.0.1:50432 ->
127.0.0.1:5672"``); a channel ``"<connection> (<number>)"``. Only connections that have
logged in are shown. The gateway knows this object through its ``ConnectionsView``
protocol, so ``http/`` imports nothing of ``amqp/``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from tidings.errors import ConnectionForcedError
from tidings.values import jsonable


def _name(link: Any) -> str:
    transport = link.transport
    local = transport.get_extra_info("sockname") if transport is not None else None
    here = f"{local[0]}:{local[1]}" if isinstance(local, tuple) else str(local or "?")
    return f"{link.peer} -> {here}"


def _peer(link: Any) -> tuple[str, int]:
    host, _, port = link.peer.rpartition(":")
    return (host or link.peer, int(port) if port.isdigit() else 0)


class AmqpListing:
    """Connections, channels and consumers of one :class:`~tidings.amqp.server.AmqpServer`."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def _links(self) -> Iterable[Any]:
        return [link for link in self.server.links if link.username]

    def connections(self) -> list[dict[str, Any]]:
        out = []
        for link in self._links():
            host, port = _peer(link)
            props = link.conn.client_properties
            transport = link.transport
            local = transport.get_extra_info("sockname") if transport is not None else None
            tls = transport.get_extra_info("ssl_object") if transport is not None else None
            out.append({
                "name": _name(link), "peer_host": host, "peer_port": port,
                "peer": link.peer, "user": link.username, "vhost": link.vhost,
                "client": str(props.get("product", "")),
                "client_properties": jsonable(props),
                "channels": len(link.channels),
                "consumers": sum(len(ch.consumers) for ch in link.channels.values()),
                "blocked": link.blocked, "blocked_by": link.blocked_by,
                "state": "blocked" if link.blocked else "running",
                "protocol": "AMQP 0-9-1", "type": "network", "auth_mechanism": "PLAIN",
                "timeout": link.conn.heartbeat_s, "frame_max": link.conn.frame_max,
                "channel_max": link.conn.channel_max,
                "connected_at": int((time.time() - link.connected_for()) * 1000),
                "host": local[0] if isinstance(local, tuple) else None,
                "port": local[1] if isinstance(local, tuple) else None,
                "ssl": tls is not None, "ssl_protocol": tls.version() if tls else None,
                "ssl_cipher": tls.cipher()[0] if tls and tls.cipher() else None,
                "user_provided_name": props.get("connection_name"),
            })
        return out

    def _channels(self) -> Iterator[tuple[Any, dict[str, Any], int, Any]]:
        """Each open channel: its link, its connection's details, its number, itself."""
        for link in self._links():
            host, port = _peer(link)
            details = {"name": _name(link), "peer_host": host, "peer_port": port}
            for number, ch in sorted(link.channels.items()):
                yield link, details, number, ch

    def channels(self) -> list[dict[str, Any]]:
        return [{
            "name": f"{details['name']} ({number})", "number": number,
            "connection_details": details, "user": link.username, "vhost": link.vhost,
            "consumer_count": len(ch.consumers), "prefetch_count": ch.prefetch_count,
            "global_prefetch_count": ch.session.prefetch_count,
            "messages_unacknowledged": len(ch.session.unacked),
            "confirm": ch.confirming, "transactional": ch.tx is not None, "state": "running",
        } for link, details, number, ch in self._channels()]

    def consumers(self) -> list[dict[str, Any]]:
        return [{
            "consumer_tag": tag,
            "channel_details": {"name": f"{details['name']} ({number})", "number": number,
                                "connection_name": details["name"],
                                "peer_host": details["peer_host"],
                                "peer_port": details["peer_port"], "user": link.username},
            "queue": {"name": consumer.queue.name, "vhost": link.vhost},
            "ack_required": not consumer.no_ack, "prefetch_count": consumer.prefetch_count,
            "exclusive": consumer.exclusive, "arguments": jsonable(consumer.arguments or {}),
            "active": True, "activity_status": "up",
        } for link, details, number, ch in self._channels()
            for tag, consumer in ch.consumers.items()]

    def close(self, name: str, reason: str) -> bool:
        """Close the connection called ``name`` (320 CONNECTION_FORCED with ``reason``, as
        RabbitMQ's management API does); False when there is none."""
        for link in self._links():
            if _name(link) == name:
                link.close(ConnectionForcedError(reason))
                return True
        return False
