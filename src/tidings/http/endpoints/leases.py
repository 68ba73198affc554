"""Settling what ``receive`` handed out, by receipt: ack, nack (requeue, delay) and extend
the lease (which also restarts the broker's consumer-timeout clock)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from tidings.http import schemas as sch
from tidings.http.gateway import gateway
from tidings.http.lease_table import MAX_VISIBILITY_MS
from tidings.http.middleware import user_of


async def ack(request: Request) -> JSONResponse:
    gateway(request).leases.ack(user_of(request), request.path_params["receipt"])
    return JSONResponse({"status": "acked"})


async def nack(request: Request) -> JSONResponse:
    gw = gateway(request)
    data = sch.obj(await sch.read_json(request, gw.max_body_bytes, required=False))
    gw.leases.nack(user_of(request), request.path_params["receipt"],
                   sch.boolean(data, "requeue", True),
                   sch.integer(data, "delay_ms", None, 1, 2**31))
    return JSONResponse({"status": "nacked"})


async def extend(request: Request) -> JSONResponse:
    gw = gateway(request)
    data = sch.obj(await sch.read_json(request, gw.max_body_bytes, required=False))
    visibility = sch.integer(data, "visibility_ms", 30_000, 1, MAX_VISIBILITY_MS) or 30_000
    gw.leases.extend(user_of(request), request.path_params["receipt"], visibility)
    return JSONResponse({"status": "extended", "visibility_ms": visibility})
