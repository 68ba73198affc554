"""The numbers: ``GET /metrics`` (Prometheus text) and ``GET /api/overview`` (JSON, with
RabbitMQ's management names too), each over the vhosts the caller may see."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tidings.http.gateway import gateway
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


async def api_overview(request: Request) -> JSONResponse:
    gw = gateway(request)
    seen = gw.visible(request)
    extra = gw.server_stats() if gw.server_stats else {}
    if seen is not None and extra:  # count only the caller's vhosts' connections
        mine = gw.visible_connections(seen)
        extra = {**extra, "connections": float(len(mine)),
                 "channels": float(sum(c["channels"] for c in mine))}
    return JSONResponse(overview(gw.broker, extra, seen))
