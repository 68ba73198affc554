"""The numbers: ``GET /metrics`` (Prometheus text) and ``GET /api/overview`` (JSON, with
RabbitMQ's management names too), each over the vhosts the caller may see."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import tidings
from tidings.errors import AccessRefusedError
from tidings.http.gateway import gateway, name_of, vhost_of
from tidings.http.history import INTERVAL_S
from tidings.http.management import MANAGEMENT_API_VERSION, NODE
from tidings.http.middleware import user_of
from tidings.http.prometheus import CONTENT_TYPE, metrics_text, overview


async def metrics(request: Request) -> Response:
    gw = gateway(request)
    return Response(metrics_text(gw.broker, gw.server_stats, gw.visible(request)),
                    media_type=CONTENT_TYPE)


async def open_metrics(request: Request) -> Response:
    """Every vhost, no credentials: for ``--prometheus-port`` (bind it where only the
    scraper reaches), as RabbitMQ serves its Prometheus endpoint on its own port. Its app
    has no gateway: ``app.state`` holds the broker and the server's numbers."""
    state = request.app.state
    return Response(metrics_text(state.broker, state.server_stats), media_type=CONTENT_TYPE)


async def node_history(request: Request) -> JSONResponse:
    """The node's numbers of the last minutes (every vhost: administrator and monitoring)."""
    gw = gateway(request)
    if gw.visible(request) is not None:
        raise AccessRefusedError("the node's history needs the administrator or monitoring "
                                 "tag (a queue's is at /api/history/queues/{vhost}/{name})")
    return JSONResponse({"interval_s": INTERVAL_S, "samples": list(gw.history.node)})


async def queue_history(request: Request) -> JSONResponse:
    """One queue's numbers of the last minutes: depth, rates, waiting and processing time."""
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    gw.users.check_vhost(user_of(request), vhost)
    gw.broker.describe_queue(vhost, name)  # 404 for a queue that is not there
    return JSONResponse({"interval_s": INTERVAL_S, "samples": gw.history.of_queue(vhost, name)})


async def api_overview(request: Request) -> JSONResponse:
    gw = gateway(request)
    seen = gw.visible(request)
    server = gw.server_stats() if gw.server_stats else {}
    extra = {k: server[k] for k in ("connections", "channels") if k in server}
    if seen is not None and extra:  # count only the caller's vhosts' connections
        mine = gw.visible_connections(seen)
        extra = {"connections": float(len(mine)),
                 "channels": float(sum(c["channels"] for c in mine))}
    body = {**overview(gw.broker, extra, seen), **identity()}
    if seen is None:  # RabbitMQ's node-wide churn counts
        operations = gw.broker.statistics().operations
        body["churn_rates"] = {
            "connection_created": int(server.get("connections_opened", 0)),
            "connection_closed": int(server.get("connections_closed", 0)),
            "channel_created": int(server.get("channels_opened", 0)),
            "channel_closed": int(server.get("channels_closed", 0)),
            "queue_declared": operations.get("queues_declared", 0),
            "queue_created": operations.get("queues_created", 0),
            "queue_deleted": operations.get("queues_deleted", 0)}
    return JSONResponse(body)


def identity() -> dict[str, Any]:
    """Who answers, in RabbitMQ's overview fields: ``product_name`` / ``product_version``
    are tidings; ``rabbitmq_version`` and ``management_version`` name the RabbitMQ
    management API these answers follow (tools gate features on them)."""
    return {
        "product_name": "tidings", "product_version": tidings.__version__,
        "rabbitmq_version": MANAGEMENT_API_VERSION,
        "management_version": MANAGEMENT_API_VERSION,
        "cluster_name": NODE, "node": NODE, "rates_mode": "basic",
        "disable_stats": False, "enable_queue_totals": True,
        "statistics_db_event_queue": 0,
        "exchange_types": [{"name": kind, "description": "", "enabled": True}
                           for kind in ("direct", "fanout", "topic", "headers",
                                        "x-delayed-message")],
    }
