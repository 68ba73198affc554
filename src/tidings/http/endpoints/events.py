"""Events in (``POST /events/{topic}``, ``POST /event``) and out (server-sent events on
``GET /events/stream``, a WebSocket on ``/events/ws``)."""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from tidings.http import schemas as sch
from tidings.http.errors import BadRequestError
from tidings.http.event_log import TOO_SLOW, LoggedEvent
from tidings.http.gateway import gateway, topic_of
from tidings.patterns import EVENTS_EXCHANGE, validate_pattern
from tidings.routing.front_door import DEFAULT_VHOST


async def publish_event(request: Request, topic: str, body: bytes,
                        content_type: str | None) -> tuple[str, bool]:
    """Publish one event (once per ``Idempotency-Key``); its id and whether it was a replay."""
    gw = gateway(request)
    gw.check(request, "write", "exchange", EVENTS_EXCHANGE)
    key = request.headers.get("idempotency-key")
    if key:
        seen = gw.idempotency.find(key)
        if seen is not None:
            return seen, True
    gw.broker.declare_exchange(DEFAULT_VHOST, EVENTS_EXCHANGE, "topic")
    message = sch.new_message(body, content_type)
    message.routing_key = topic
    gw.broker.publish(DEFAULT_VHOST, EVENTS_EXCHANGE, message)
    await gw.broker.sync()
    if key:
        gw.idempotency.remember(key, message.message_id or "")
    return message.message_id or "", False


async def post_event_topic(request: Request) -> JSONResponse:
    topic = topic_of(request.path_params["topic"])
    ctype = request.headers.get("content-type") or "application/octet-stream"
    body = await sch.read_body(request, gateway(request).max_body_bytes)
    if ctype.split(";")[0].strip() == "application/json" or ctype.endswith("+json"):
        sch.parse_json(body)
    event_id, replayed = await publish_event(request, topic, body, ctype)
    return JSONResponse({"id": event_id, "topic": topic, "status": "accepted"},
                        status_code=200 if replayed else 202,
                        headers={"Idempotent-Replayed": "true"} if replayed else None)


async def post_event(request: Request) -> JSONResponse:
    data = sch.obj(await sch.read_json(request, gateway(request).max_body_bytes))
    event_type = topic_of(sch.string(data, "type", required=True) or "")
    if "data" not in data:
        raise BadRequestError("field 'data' is required")
    body = json.dumps(data["data"]).encode()
    event_id, replayed = await publish_event(request, event_type, body, "application/json")
    return JSONResponse({"id": event_id, "type": event_type,
                         "message": f"Event '{event_type}' accepted"},
                        status_code=200 if replayed else 202)


async def stream_events(request: Request) -> StreamingResponse:
    gw = gateway(request)
    pattern = request.query_params.get("topic", "#")
    try:
        validate_pattern(pattern)
    except Exception as e:
        raise BadRequestError(str(e)) from e
    gw.check(request, "read", "exchange", EVENTS_EXCHANGE)
    last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    return StreamingResponse(gw.events.stream(pattern, last),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def websocket_events(websocket: WebSocket) -> None:
    """The WebSocket twin of the SSE stream: one JSON text frame per event."""
    gw = gateway(websocket)
    pattern = websocket.query_params.get("topic", "#")
    try:
        validate_pattern(pattern)
        user = str(websocket.scope.get("state", {}).get("user", ""))
        gw.users.check_vhost(user, DEFAULT_VHOST)
        gw.users.check(user, DEFAULT_VHOST, "read", "exchange", EVENTS_EXCHANGE)
    except Exception as e:
        await websocket.close(code=1008, reason=str(e)[:120])
        return
    await websocket.accept()
    last = websocket.query_params.get("last_event_id")
    sender = asyncio.current_task()

    async def until_closed() -> None:  # the client's close must not wait for an event
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        finally:
            if sender is not None:
                sender.cancel()

    watcher = asyncio.get_running_loop().create_task(until_closed())
    try:
        async for item in gw.events.follow(pattern, last):
            if item == TOO_SLOW:
                await websocket.send_json(gw.events.too_slow())
                await websocket.close(code=1013)
                return
            if isinstance(item, LoggedEvent):
                await websocket.send_json(gw.events.as_json(item))
        await websocket.close(code=1001, reason="server shutting down")
    except (WebSocketDisconnect, asyncio.CancelledError):
        return
    finally:
        watcher.cancel()
