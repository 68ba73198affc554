"""``build_app(broker, users)``: the gateway's route table and one small handler per endpoint.

Handlers convert HTTP to broker calls (through :mod:`tidings.http.schemas`) and back; every
error is a :class:`TidingsError` turned into JSON by :mod:`tidings.http.errors`. A vhost in a
path is written ``%2F`` for ``/``, as in RabbitMQ's management API.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from tidings.auth import UserStore
from tidings.client.transport import EVENTS_EXCHANGE
from tidings.errors import AccessRefusedError, PreconditionFailedError
from tidings.http import management
from tidings.http import schemas as sch
from tidings.http.errors import EXCEPTION_HANDLERS, BadRequestError
from tidings.http.events import (
    STREAM_BUFFER,
    TOO_SLOW,
    EventLog,
    IdempotencyKeys,
    LoggedEvent,
)
from tidings.http.events import is_internal_queue as internal
from tidings.http.leases import MAX_VISIBILITY_MS, Leases
from tidings.http.metrics import metrics_text, overview
from tidings.http.middleware import AuthMiddleware, EncodedSlashMiddleware, user_of
from tidings.http.openapi import openapi_document
from tidings.patterns import MAX_TOPIC_BYTES, validate_pattern
from tidings.routing.broker import DEFAULT_VHOST, Broker
from tidings.routing.definitions_io import SECTIONS, export_definitions, import_definitions
from tidings.routing.session import Delivery, Session

STATIC = Path(__file__).with_name("static")
#: Largest request body accepted, bytes (``--http-max-body-bytes``).
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: Longest a receive may wait for a message.
MAX_WAIT_MS = 30_000


@dataclass
class Gateway:
    broker: Broker
    users: UserStore
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    server_stats: Callable[[], dict[str, float]] | None = None
    connections: Callable[[], list[dict[str, Any]]] | None = None
    events: EventLog = field(init=False)
    leases: Leases = field(init=False)
    idempotency: IdempotencyKeys = field(default_factory=IdempotencyKeys)

    def __post_init__(self) -> None:
        self.events = EventLog(self.broker)
        self.leases = Leases(self.broker)
        self.closing = asyncio.Event()

    def shutdown(self) -> None:
        """Before the server stops: end streams and long-polls so it need not wait for them."""
        self.closing.set()
        self.events.close()

    def visible(self, request: Request) -> set[str] | None:
        """Vhosts the caller may see in listings (None: all, for administrator/monitoring)."""
        return self.users.visible_vhosts(user_of(request))

    def vhosts(self, request: Request) -> list[str]:
        seen = self.visible(request)
        return [v for v in self.broker.vhosts if seen is None or v in seen]

    def check(self, request: Request, permission: str, kind: str, name: str,
              vhost: str = DEFAULT_VHOST) -> None:
        user = user_of(request)
        self.users.check_vhost(user, vhost)
        if name:
            self.users.check(user, vhost, permission, kind, name)  # type: ignore[arg-type]


def _vhost(request: Request) -> str:
    vhost = unquote(request.path_params.get("vhost", DEFAULT_VHOST))
    return vhost


def _name(request: Request) -> str:
    return unquote(request.path_params["name"])


def _topic(topic: str) -> str:
    if not topic or len(topic.encode()) > MAX_TOPIC_BYTES:
        raise BadRequestError(f"topic must be 1 to {MAX_TOPIC_BYTES} bytes")
    return topic


def routes(gw: Gateway) -> list[Any]:
    broker = gw.broker

    # -- health, overview, metrics, dashboard ------------------------------------------------

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def visible_connections(seen: set[str] | None) -> list[dict[str, Any]]:
        return [c for c in (gw.connections() if gw.connections else [])
                if seen is None or c["vhost"] in seen]

    async def api_overview(request: Request) -> JSONResponse:
        seen = gw.visible(request)
        extra = gw.server_stats() if gw.server_stats else {}
        if seen is not None and extra:  # count only the caller's vhosts' connections
            mine = visible_connections(seen)
            extra = {**extra, "connections": float(len(mine)),
                     "channels": float(sum(c["channels"] for c in mine))}
        return JSONResponse(overview(broker, extra, seen))

    async def list_connections(request: Request) -> JSONResponse:
        return JSONResponse(visible_connections(gw.visible(request)))

    async def metrics(request: Request) -> Response:
        return Response(metrics_text(broker, gw.server_stats, gw.visible(request)),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def dashboard(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(openapi_document())

    # -- events ------------------------------------------------------------------------------

    async def _publish_event(request: Request, topic: str, body: bytes,
                             content_type: str | None) -> tuple[str, bool]:
        gw.check(request, "write", "exchange", EVENTS_EXCHANGE)
        key = request.headers.get("idempotency-key")
        if key:
            seen = gw.idempotency.find(key)
            if seen is not None:
                return seen, True
        broker.declare_exchange(DEFAULT_VHOST, EVENTS_EXCHANGE, "topic")
        message = sch.new_message(body, content_type)
        message.routing_key = topic
        broker.publish(DEFAULT_VHOST, EVENTS_EXCHANGE, message)
        await broker.sync()
        if key:
            gw.idempotency.remember(key, message.message_id or "")
        return message.message_id or "", False

    async def post_event_topic(request: Request) -> JSONResponse:
        topic = _topic(request.path_params["topic"])
        ctype = request.headers.get("content-type") or "application/octet-stream"
        body = await sch.read_body(request, gw.max_body_bytes)
        if ctype.split(";")[0].strip() == "application/json" or ctype.endswith("+json"):
            try:
                json.loads(body)
            except ValueError as e:
                raise BadRequestError(f"request body is not valid JSON: {e}") from e
        event_id, replayed = await _publish_event(request, topic, body, ctype)
        return JSONResponse({"id": event_id, "topic": topic, "status": "accepted"},
                            status_code=200 if replayed else 202,
                            headers={"Idempotent-Replayed": "true"} if replayed else None)

    async def post_event(request: Request) -> JSONResponse:
        data = sch.obj(await sch.read_json(request, gw.max_body_bytes))
        event_type = _topic(sch.string(data, "type", required=True) or "")
        if "data" not in data:
            raise BadRequestError("field 'data' is required")
        body = json.dumps(data["data"]).encode()
        event_id, replayed = await _publish_event(request, event_type, body,
                                                  "application/json")
        return JSONResponse({"id": event_id, "type": event_type,
                             "message": f"Event '{event_type}' accepted"},
                            status_code=200 if replayed else 202)

    async def stream_events(request: Request) -> StreamingResponse:
        pattern = request.query_params.get("topic", "#")
        try:
            validate_pattern(pattern)
        except Exception as e:
            raise BadRequestError(str(e)) from e
        gw.check(request, "read", "exchange", EVENTS_EXCHANGE)
        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        return StreamingResponse(gw.events.stream(pattern, last),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    async def websocket_events(websocket: WebSocket) -> None:
        """The WebSocket twin of the SSE stream: one JSON text frame per event."""
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

    # -- queues ------------------------------------------------------------------------------

    def queue_json(vhost: str, name: str) -> dict[str, Any]:
        q = broker.get_queue(vhost, name)
        return {
            **management.queue_fields(broker.queue_statistics(q), q.options.queue_type),
            "durable": q.durable, "auto_delete": q.auto_delete,
            "exclusive": q.exclusive_owner is not None, "arguments": q.arguments,
        }

    async def list_queues(request: Request) -> JSONResponse:
        vhost = request.path_params.get("vhost") or request.query_params.get("vhost")
        vhost = unquote(vhost) if vhost else None
        vhosts = [v for v in gw.vhosts(request) if vhost is None or v == vhost]
        return JSONResponse([queue_json(v, name) for v in vhosts
                             for name in list(broker.get_vhost(v).queues) if not internal(name)])

    async def list_vhosts(request: Request) -> JSONResponse:
        out = []
        for v in gw.vhosts(request):
            queues = [broker.queue_statistics(q) for q in broker.get_vhost(v).queues.values()
                      if not internal(q.name)]
            out.append({"name": v, **management.totals(sum(q.ready for q in queues),
                                                        sum(q.unacked for q in queues))})
        return JSONResponse(out)

    async def get_queue(request: Request) -> JSONResponse:
        vhost, name = _vhost(request), _name(request)
        gw.check(request, "read", "queue", name, vhost)
        return JSONResponse(queue_json(vhost, name))

    async def put_queue(request: Request) -> JSONResponse:
        vhost, name = _vhost(request), _name(request)
        gw.check(request, "configure", "queue", name, vhost)
        data = sch.obj(await sch.read_json(request, gw.max_body_bytes, required=False))
        arguments = sch.table(data, "arguments")
        dlx = (arguments or {}).get("x-dead-letter-exchange")
        if isinstance(dlx, str):  # dead letters are published there: as RabbitMQ checks
            gw.check(request, "read", "queue", name, vhost)
            gw.check(request, "write", "exchange", dlx or "amq.default", vhost)
        existed = broker.find_queue(vhost, name) is not None
        if vhost not in broker.vhosts and vhost in gw.users.list_vhosts():
            broker.declare_vhost(vhost)
        broker.declare_queue(vhost, name, durable=sch.boolean(data, "durable", True),
                             auto_delete=sch.boolean(data, "auto_delete", False),
                             arguments=arguments)
        return JSONResponse(queue_json(vhost, name), status_code=200 if existed else 201)

    async def delete_queue(request: Request) -> JSONResponse:
        vhost, name = _vhost(request), _name(request)
        gw.check(request, "configure", "queue", name, vhost)
        q = request.query_params
        count = broker.delete_queue(vhost, name, if_unused=q.get("if_unused") == "true",
                                    if_empty=q.get("if_empty") == "true")
        return JSONResponse({"deleted": name, "messages": count})

    async def purge_queue(request: Request) -> JSONResponse:
        vhost, name = _vhost(request), _name(request)
        gw.check(request, "read", "queue", name, vhost)
        return JSONResponse({"purged": broker.purge_queue(vhost, name)})

    async def send(request: Request) -> JSONResponse:
        vhost, name = _vhost(request), _name(request)
        gw.check(request, "write", "exchange", "amq.default", vhost)
        data = sch.obj(await sch.read_json(request, gw.max_body_bytes))
        message = sch.message_from_json(data)
        delay_ms = sch.integer(data, "delay_ms", None, 0, 2**31)
        broker.get_queue(vhost, name)
        message.routing_key = name
        result = broker.publish(vhost, "", message, delay_ms=delay_ms)
        if result.refused:
            raise PreconditionFailedError(f"queue '{name}' in vhost '{vhost}' refused the "
                                          f"message: it is full (x-overflow reject-publish)")
        await broker.sync()
        return JSONResponse({"id": message.message_id, "queue": name}, status_code=201)

    async def receive(request: Request) -> JSONResponse:
        vhost, name = _vhost(request), _name(request)
        gw.check(request, "read", "queue", name, vhost)
        data = sch.obj(await sch.read_json(request, gw.max_body_bytes, required=False))
        count = sch.integer(data, "max", 1, 1, 1000) or 1
        visibility = sch.integer(data, "visibility_ms", 30_000, 1, MAX_VISIBILITY_MS) or 30_000
        wait_ms = sch.integer(data, "wait_ms", 0, 0, MAX_WAIT_MS) or 0
        user = user_of(request)
        session = gw.leases.session(user, vhost)
        got: list[Delivery] = []
        while len(got) < count and (d := broker.get(session, name)) is not None:
            got.append(d)
        if not got and wait_ms:
            got = await wait_for_deliveries(session, name, count, wait_ms)
        return JSONResponse({"messages": [
            sch.message_to_json(d.message, receipt=gw.leases.grant(user, session, d, visibility),
                                redelivered=d.redelivered, delivery_count=d.delivery_count + 1)
            for d in got
        ]})

    async def wait_for_deliveries(session: Session, name: str, count: int,
                                  wait_ms: int) -> list[Delivery]:
        """Long-poll: a temporary consumer, woken by the first delivery (no polling)."""
        got: list[Delivery] = []
        arrived = asyncio.Event()

        def on_delivery(d: Delivery) -> None:
            got.append(d)
            arrived.set()

        consumer = broker.consume(session, name, on_delivery, prefetch_count=count)
        waits = [asyncio.ensure_future(arrived.wait()), asyncio.ensure_future(gw.closing.wait())]
        try:
            await asyncio.wait(waits, timeout=wait_ms / 1000.0,
                               return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the client went away: give the messages back
            broker.cancel(session, consumer.tag)
            for d in got:
                session.nack(d.delivery_tag, requeue=True)
            raise
        finally:
            for waiting in waits:
                waiting.cancel()
        broker.cancel(session, consumer.tag)
        return got

    async def ack(request: Request) -> JSONResponse:
        gw.leases.ack(user_of(request), request.path_params["receipt"])
        return JSONResponse({"status": "acked"})

    async def nack(request: Request) -> JSONResponse:
        data = sch.obj(await sch.read_json(request, gw.max_body_bytes, required=False))
        gw.leases.nack(user_of(request), request.path_params["receipt"],
                       sch.boolean(data, "requeue", True),
                       sch.integer(data, "delay_ms", None, 1, 2**31))
        return JSONResponse({"status": "nacked"})

    async def extend(request: Request) -> JSONResponse:
        data = sch.obj(await sch.read_json(request, gw.max_body_bytes, required=False))
        visibility = sch.integer(data, "visibility_ms", 30_000, 1, MAX_VISIBILITY_MS) or 30_000
        gw.leases.extend(user_of(request), request.path_params["receipt"], visibility)
        return JSONResponse({"status": "extended", "visibility_ms": visibility})

    # -- dead letters ------------------------------------------------------------------------

    def dead_queue_to_read(request: Request) -> tuple[str, str, str]:
        """vhost, queue and its dead-letter queue, after checking read on both."""
        vhost, name = _vhost(request), _name(request)
        gw.check(request, "read", "queue", name, vhost)
        dead = broker.dead_letter_queue(vhost, name)
        gw.check(request, "read", "queue", dead, vhost)
        return vhost, name, dead

    async def list_dead(request: Request) -> JSONResponse:
        vhost, _, dead = dead_queue_to_read(request)
        limit_text = request.query_params.get("limit", "100")
        if not limit_text.isdigit():
            raise BadRequestError("query parameter 'limit' must be a whole number")
        limit = int(limit_text)
        messages = broker.browse(vhost, dead, min(limit, 10_000))
        return JSONResponse([sch.message_to_json(m) for m in messages])

    async def replay_dead(request: Request) -> JSONResponse:
        vhost, name, _ = dead_queue_to_read(request)
        gw.check(request, "write", "exchange", "amq.default", vhost)  # replayed through it
        data = sch.obj(await sch.read_json(request, gw.max_body_bytes, required=False))
        ids = data.get("ids")
        if ids is not None and (not isinstance(ids, list) or
                                not all(isinstance(i, str) for i in ids)):
            raise BadRequestError("field 'ids' must be a list of message ids")
        replayed = broker.replay_dead_letters(vhost, name, set(ids) if ids is not None else None)
        await broker.sync()
        return JSONResponse({"replayed": replayed})

    async def purge_dead(request: Request) -> JSONResponse:
        vhost, _, dead = dead_queue_to_read(request)  # purging is reading, as in RabbitMQ
        return JSONResponse({"purged": broker.purge_queue(vhost, dead)})

    # -- exchanges and bindings --------------------------------------------------------------

    async def list_exchanges(request: Request) -> JSONResponse:
        return JSONResponse([
            {"vhost": v.name, "name": e.name, "type": e.kind, "durable": e.durable,
             "auto_delete": e.auto_delete, "internal": e.internal, "arguments": e.arguments}
            for v in map(broker.get_vhost, gw.vhosts(request)) for e in v.exchanges.values()
        ])

    async def put_exchange(request: Request) -> JSONResponse:
        vhost, name = _vhost(request), _name(request)
        gw.check(request, "configure", "exchange", name, vhost)
        data = sch.obj(await sch.read_json(request, gw.max_body_bytes, required=False))
        ex = broker.declare_exchange(vhost, name, sch.string(data, "type", "direct") or "direct",
                                     durable=sch.boolean(data, "durable", True),
                                     auto_delete=sch.boolean(data, "auto_delete", False),
                                     internal=sch.boolean(data, "internal", False),
                                     arguments=sch.table(data, "arguments"))
        return JSONResponse({"vhost": vhost, "name": ex.name, "type": ex.kind}, status_code=201)

    async def delete_exchange(request: Request) -> JSONResponse:
        vhost, name = _vhost(request), _name(request)
        gw.check(request, "configure", "exchange", name, vhost)
        broker.delete_exchange(vhost, name,
                               if_unused=request.query_params.get("if_unused") == "true")
        return JSONResponse({"deleted": name})

    def binding_fields(data: dict[str, Any]) -> tuple[str, str, str, bool, dict[str, Any]]:
        source = sch.string(data, "source", required=True) or ""
        destination = sch.string(data, "destination", required=True) or ""
        kind = sch.string(data, "destination_type", "queue")
        if kind not in ("queue", "exchange"):
            raise BadRequestError("field 'destination_type' must be 'queue' or 'exchange'")
        return (source, destination, sch.string(data, "routing_key", "") or "",
                kind == "exchange", sch.table(data, "arguments") or {})

    async def list_bindings(request: Request) -> JSONResponse:
        return JSONResponse([
            {"vhost": v.name, "source": b.source, "destination": b.destination,
             "destination_type": "exchange" if b.to_exchange else "queue",
             "routing_key": b.routing_key, "arguments": b.args}
            for v in map(broker.get_vhost, gw.vhosts(request)) for e in v.exchanges.values()
            for b in e.bindings if not internal(b.destination)
        ])

    async def change_binding(request: Request) -> JSONResponse:
        vhost = _vhost(request)
        data = sch.obj(await sch.read_json(request, gw.max_body_bytes))
        source, dest, key, to_exchange, args = binding_fields(data)
        gw.check(request, "read", "exchange", source, vhost)
        gw.check(request, "write", "exchange" if to_exchange else "queue", dest, vhost)
        if request.method == "POST":
            broker.bind(vhost, source, dest, key, args, to_exchange=to_exchange)
            return JSONResponse({"bound": True}, status_code=201)
        broker.unbind(vhost, source, dest, key, args, to_exchange=to_exchange)
        return JSONResponse({"unbound": True})

    async def list_quarantine(request: Request) -> JSONResponse:
        """Stored records that could not be read (administrator: they may hold anyone's)."""
        if not gw.users.is_administrator(user_of(request)):
            raise AccessRefusedError("the quarantine needs the administrator tag")
        await broker.sync()
        return JSONResponse([
            {"id": r.id, "vhost": r.vhost, "queue": r.queue, "seq": r.seq, "reason": r.reason,
             "quarantined_at": r.quarantined_at,
             "data_base64": base64.b64encode(r.data).decode()}
            for r in broker.quarantined()
        ])

    async def get_definitions(request: Request) -> JSONResponse:
        return JSONResponse(export_definitions(broker, gw.visible(request)))

    async def post_definitions(request: Request) -> JSONResponse:
        if not gw.users.is_administrator(user_of(request)):
            raise AccessRefusedError("importing definitions needs the administrator tag")
        data = sch.obj(await sch.read_json(request, gw.max_body_bytes))
        for section in SECTIONS:
            if not isinstance(data.get(section, []), list) or \
                    not all(isinstance(x, dict) for x in data.get(section, [])):
                raise BadRequestError(f"field '{section}' must be a list of objects")
        try:
            return JSONResponse({"imported": import_definitions(broker, data)})
        except KeyError as e:
            raise BadRequestError(f"a definition lacks the field {e}") from e

    q = "/api/queues/{vhost}/{name}"
    return [
        Route("/api/definitions", get_definitions, methods=["GET"]),
        Route("/api/quarantine", list_quarantine, methods=["GET"]),
        Route("/api/definitions", post_definitions, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/", dashboard),
        Route("/openapi.json", openapi),
        Route("/metrics", metrics),
        Route("/api/overview", api_overview),
        Route("/api/connections", list_connections),
        Route("/events/stream", stream_events),
        WebSocketRoute("/events/ws", websocket_events),
        Route("/events/{topic}", post_event_topic, methods=["POST"]),
        Route("/event", post_event, methods=["POST"]),
        Route("/api/queues", list_queues),
        Route("/api/queues/{vhost}", list_queues, methods=["GET"]),
        Route("/api/vhosts", list_vhosts),
        Route(q, get_queue, methods=["GET"]),
        Route(q, put_queue, methods=["PUT"]),
        Route(q, delete_queue, methods=["DELETE"]),
        Route(f"{q}/contents", purge_queue, methods=["DELETE"]),
        Route(f"{q}/messages", send, methods=["POST"]),
        Route(f"{q}/receive", receive, methods=["POST"]),
        Route(f"{q}/dead-letters", list_dead, methods=["GET"]),
        Route(f"{q}/dead-letters", purge_dead, methods=["DELETE"]),
        Route(f"{q}/dead-letters/replay", replay_dead, methods=["POST"]),
        Route("/api/receipts/{receipt}/ack", ack, methods=["POST"]),
        Route("/api/receipts/{receipt}/nack", nack, methods=["POST"]),
        Route("/api/receipts/{receipt}/extend", extend, methods=["POST"]),
        Route("/api/exchanges", list_exchanges),
        Route("/api/exchanges/{vhost}/{name}", put_exchange, methods=["PUT"]),
        Route("/api/exchanges/{vhost}/{name}", delete_exchange, methods=["DELETE"]),
        Route("/api/bindings", list_bindings, methods=["GET"]),
        Route("/api/bindings/{vhost}", change_binding, methods=["POST", "DELETE"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


def build_app(broker: Broker, users: UserStore, *,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
              server_stats: Callable[[], dict[str, float]] | None = None,
              connections: Callable[[], list[dict[str, Any]]] | None = None,
              stream_buffer: int = STREAM_BUFFER) -> Starlette:
    """The gateway app; call ``app.state.gateway.events.start()`` inside the running loop."""
    gw = Gateway(broker, users, max_body_bytes, server_stats, connections)
    gw.events.stream_buffer = stream_buffer
    app = Starlette(
        routes=routes(gw),
        middleware=[Middleware(EncodedSlashMiddleware), Middleware(AuthMiddleware, users=users)],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    )
    app.state.gateway = gw
    return app


def build_metrics_app(broker: Broker,
                      server_stats: Callable[[], dict[str, float]] | None = None) -> Starlette:
    """Only ``GET /metrics``, every vhost, without credentials: for ``--prometheus-port``, as
    RabbitMQ's Prometheus endpoint is served on its own port. Bind it where only the scraper
    reaches."""

    async def metrics(request: Request) -> Response:
        return Response(metrics_text(broker, server_stats),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(routes=[Route("/metrics", metrics)],
                     exception_handlers=EXCEPTION_HANDLERS)  # type: ignore[arg-type]
