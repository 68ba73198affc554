"""``build_app(broker, users)``: the gateway's route table.

Endpoints live in :mod:`tidings.http.endpoints`, grouped by concern (events, queues, leases,
dead letters, admin, metrics), as module-level functions of a request; they convert HTTP to
front-door calls (through :mod:`tidings.http.schemas`) and back, and find the broker, the
users and the limits in ``app.state.gateway`` (:class:`tidings.http.gateway.Gateway`). Every
error is a :class:`TidingsError` turned into JSON by :mod:`tidings.http.errors`. A vhost in a
path is written ``%2F`` for ``/``, as in RabbitMQ's management API.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from tidings.auth import UserStore
from tidings.http.access_log import AccessLogMiddleware
from tidings.http.endpoints import (
    access,
    admin,
    dead_letters,
    events,
    leases,
    machines,
    metrics,
    policies,
    queues,
    rabbitmq,
)
from tidings.http.errors import EXCEPTION_HANDLERS
from tidings.http.event_log import STREAM_BUFFER
from tidings.http.gateway import DEFAULT_MAX_BODY_BYTES, ConnectionsView, Gateway
from tidings.http.middleware import AuthMiddleware, EncodedSlashMiddleware
from tidings.routing.front_door import FrontDoor

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ROUTES", "build_app", "build_metrics_app"]

_Q = "/api/queues/{vhost}/{name}"
#: Bindings from an exchange to a queue (``q``) or an exchange (``e``), RabbitMQ's paths.
_B = "/api/bindings/{vhost}/e/{source}/{kind}/{destination}"

ROUTES: list[BaseRoute] = [
    # admin
    Route("/healthz", admin.healthz),
    Route("/", admin.dashboard),
    Route("/cli/rabbitmqadmin", admin.rabbitmqadmin),
    Route("/openapi.json", admin.openapi),
    Route("/api/connections", admin.list_connections),
    Route("/api/connections/{name}", admin.get_connection, methods=["GET"]),
    Route("/api/connections/{name}", admin.close_connection, methods=["DELETE"]),
    Route("/api/channels", admin.list_channels),
    Route("/api/consumers", admin.list_consumers),
    Route("/api/consumers/{vhost}", admin.list_consumers),
    Route("/api/definitions", admin.get_definitions, methods=["GET"]),
    Route("/api/definitions", admin.post_definitions, methods=["POST"]),
    Route("/api/quarantine", admin.list_quarantine, methods=["GET"]),
    Route("/api/tidings/keys", admin.get_keys, methods=["GET"]),
    Route("/api/tidings/keys/rotate", admin.rotate_keys, methods=["POST"]),
    Route("/api/exchanges", admin.list_exchanges),
    Route("/api/exchanges/{vhost}/{name}", rabbitmq.get_exchange, methods=["GET"]),
    Route("/api/exchanges/{vhost}/{name}", admin.put_exchange, methods=["PUT"]),
    Route("/api/exchanges/{vhost}/{name}/publish", rabbitmq.publish, methods=["POST"]),
    Route("/api/exchanges/{vhost}/{name}", admin.delete_exchange, methods=["DELETE"]),
    Route("/api/bindings", admin.list_bindings, methods=["GET"]),
    Route("/api/bindings/{vhost}", admin.change_binding, methods=["POST", "DELETE"]),
    Route(_B, rabbitmq.list_bindings_between, methods=["GET"]),
    Route(_B, rabbitmq.post_binding, methods=["POST"]),
    Route(f"{_B}/{{props}}", rabbitmq.delete_binding, methods=["DELETE"]),
    # users, permissions, vhosts, the node (RabbitMQ's management API)
    Route("/api/whoami", access.whoami),
    Route("/api/users", access.list_users),
    Route("/api/users/{user}", access.get_user, methods=["GET"]),
    Route("/api/users/{user}", access.put_user, methods=["PUT"]),
    Route("/api/users/{user}", access.delete_user, methods=["DELETE"]),
    Route("/api/users/{user}/permissions", access.user_permissions),
    Route("/api/permissions", access.list_permissions),
    Route("/api/permissions/{vhost}/{user}", access.get_permission, methods=["GET"]),
    Route("/api/permissions/{vhost}/{user}", access.put_permission, methods=["PUT"]),
    Route("/api/permissions/{vhost}/{user}", access.delete_permission, methods=["DELETE"]),
    Route("/api/vhosts/{vhost}", access.get_vhost, methods=["GET"]),
    Route("/api/vhosts/{vhost}", access.put_vhost, methods=["PUT"]),
    Route("/api/vhosts/{vhost}", access.delete_vhost, methods=["DELETE"]),
    Route("/api/nodes", access.list_nodes),
    Route("/api/nodes/{node}", access.get_node),
    Route("/api/healthchecks/node", access.node_health),
    Route("/api/aliveness-test/{vhost}", access.aliveness),
    *[route for base in ("/api/policies", "/api/operator-policies") for route in (
        Route(base, policies.list_policies),
        Route(f"{base}/{{vhost}}", policies.list_policies),
        Route(f"{base}/{{vhost}}/{{name}}", policies.get_policy, methods=["GET"]),
        Route(f"{base}/{{vhost}}/{{name}}", policies.put_policy, methods=["PUT"]),
        Route(f"{base}/{{vhost}}/{{name}}", policies.delete_policy, methods=["DELETE"]),
    )],
    Route("/api/parameters", access.no_parameters),
    Route("/api/parameters/{component}", access.no_parameters),
    Route("/api/parameters/{component}/{vhost}", access.no_parameters),
    Route("/api/global-parameters", access.global_parameters),
    # metrics
    Route("/metrics", metrics.metrics),
    Route("/api/overview", metrics.api_overview),
    Route("/api/machines", machines.list_machines),
    Route("/api/machine-diagrams/{vhost}/{name}", machines.machine_diagram),
    Route("/api/machines/{vhost}/{name}", machines.get_machine),
    Route("/api/machines/{vhost}/{name}/{key}", machines.get_instance),
    Route("/api/machines/{vhost}/{name}/{key}/move", machines.move_instance, methods=["POST"]),
    Route("/api/history", metrics.node_history),
    Route("/api/history/queues/{vhost}/{name}", metrics.queue_history),
    # events
    Route("/events/stream", events.stream_events),
    WebSocketRoute("/events/ws", events.websocket_events),
    Route("/events/{topic}", events.post_event_topic, methods=["POST"]),
    Route("/event", events.post_event, methods=["POST"]),
    # queues
    Route("/api/queues", queues.list_queues),
    Route("/api/queues/{vhost}", queues.list_queues, methods=["GET"]),
    Route("/api/vhosts", access.list_vhosts),
    Route("/api/streams", queues.list_streams),
    Route("/api/streams/{vhost}/{name}", queues.get_stream),
    Route(_Q, queues.get_queue, methods=["GET"]),
    Route(_Q, queues.put_queue, methods=["PUT"]),
    Route(_Q, queues.delete_queue, methods=["DELETE"]),
    Route(f"{_Q}/contents", queues.purge_queue, methods=["DELETE"]),
    Route(f"{_Q}/messages", queues.send, methods=["POST"]),
    Route(f"{_Q}/receive", queues.receive, methods=["POST"]),
    Route(f"{_Q}/get", rabbitmq.get_messages, methods=["POST"]),
    Route(f"{_Q}/messages", rabbitmq.browse_messages, methods=["GET"]),
    # dead letters
    Route(f"{_Q}/dead-letters", dead_letters.list_dead_letters, methods=["GET"]),
    Route(f"{_Q}/dead-letters", dead_letters.purge_dead_letters, methods=["DELETE"]),
    Route(f"{_Q}/dead-letters/replay", dead_letters.replay_dead_letters, methods=["POST"]),
    # leases
    Route("/api/receipts/{receipt}/ack", leases.ack, methods=["POST"]),
    Route("/api/receipts/{receipt}/nack", leases.nack, methods=["POST"]),
    Route("/api/receipts/{receipt}/extend", leases.extend, methods=["POST"]),
    Mount("/static", StaticFiles(directory=admin.STATIC), name="static"),
]


def build_app(broker: FrontDoor, users: UserStore, *,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
              server_stats: Callable[[], dict[str, float]] | None = None,
              connections: ConnectionsView | None = None,
              stream_buffer: int = STREAM_BUFFER, face: str = "http") -> Starlette:
    """The gateway app; call ``app.state.gateway.events.start()`` inside the running loop.
    ``face`` names who uses it in the audit log (``cli``: the CLI's own process)."""
    gw = Gateway(broker, users, max_body_bytes, server_stats, connections)
    gw.events.stream_buffer = stream_buffer
    app = Starlette(
        routes=ROUTES,
        middleware=[Middleware(EncodedSlashMiddleware), Middleware(AccessLogMiddleware, face=face),
                    Middleware(AuthMiddleware, users=users)],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    )
    app.state.gateway = gw
    return app


def build_metrics_app(broker: FrontDoor,
                      server_stats: Callable[[], dict[str, float]] | None = None) -> Starlette:
    """Only ``GET /metrics``, every vhost, without credentials: for ``--prometheus-port``."""
    app = Starlette(routes=[Route("/metrics", metrics.open_metrics)],
                    exception_handlers=EXCEPTION_HANDLERS)  # type: ignore[arg-type]
    app.state.broker, app.state.server_stats = broker, server_stats
    return app
