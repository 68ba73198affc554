"""Queues over REST: list, describe, declare, delete and purge queues; send to a queue;
receive from it with a lease (long-polling up to ``wait_ms``)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse

from tidings.errors import PreconditionFailedError
from tidings.http import management
from tidings.http import schemas as sch
from tidings.http.errors import BadRequestError
from tidings.http.event_log import is_internal_queue
from tidings.http.gateway import Gateway, gateway, name_of, vhost_of
from tidings.http.lease_table import MAX_VISIBILITY_MS
from tidings.http.management import NODE
from tidings.http.middleware import user_of
from tidings.routing.front_door import Delivery, Session

#: Longest a receive may wait for a message.
MAX_WAIT_MS = 30_000
#: RabbitMQ's largest page of a listing; the longest name filter taken.
MAX_PAGE_SIZE = 500
MAX_FILTER_CHARS = 255


def queue_json(gw: Gateway, vhost: str, name: str) -> dict[str, Any]:
    q = gw.broker.describe_queue(vhost, name)
    return {
        **management.queue_fields(gw.broker.queue_statistics(vhost, name), q.queue_type),
        "durable": q.durable, "auto_delete": q.auto_delete, "exclusive": q.exclusive,
        "arguments": q.arguments, "policy": q.policy, "operator_policy": q.operator_policy,
        "effective_policy_definition": q.effective_policy_definition, "node": NODE,
        **_change_rates(gw.history.of_queue(vhost, name)),
    }


def _change_rates(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """RabbitMQ's ``messages_details`` and kin: how fast each count changed per second,
    between the server's last two samples of the queue (0.0 before there are two)."""
    rates = {"messages": 0.0, "messages_ready": 0.0, "messages_unacknowledged": 0.0}
    if len(samples) >= 2:
        a, b = samples[-2], samples[-1]
        span = max(b["t"] - a["t"], 1e-9)
        ready = (b["ready"] - a["ready"]) / span
        unacked = (b["unacked"] - a["unacked"]) / span
        rates = {"messages": ready + unacked, "messages_ready": ready,
                 "messages_unacknowledged": unacked}
    return {f"{k}_details": {"rate": round(v, 3)} for k, v in rates.items()}


async def list_queues(request: Request) -> JSONResponse:
    """Queues, filtered by ``name`` (a substring, or with ``use_regex=true`` a regular
    expression) and, when ``page`` is given, in RabbitMQ's paged object (``items``,
    ``page_count``, ...), which KEDA's scaler reads with ``useRegex``."""
    gw, params = gateway(request), request.query_params
    vhost = request.path_params.get("vhost") or params.get("vhost")
    vhost = unquote(vhost) if vhost else None
    vhosts = [v for v in gw.vhosts(request) if vhost is None or v == vhost]
    names = [(v, q.name) for v in vhosts for q in gw.broker.list_queues(v)
             if not is_internal_queue(q.name)]
    total = len(names)
    if wanted := params.get("name"):
        names = [(v, n) for v, n in names if _name_matches(n, wanted, params)]
    if "page" not in params:
        return JSONResponse([queue_json(gw, v, n) for v, n in names])
    page = sch.integer(dict(params), "page", 1, 1, 2**31) or 1
    size = sch.integer(dict(params), "page_size", 100, 1, MAX_PAGE_SIZE) or 100
    shown = names[(page - 1) * size:page * size]
    return JSONResponse({
        "items": [queue_json(gw, v, n) for v, n in shown], "page": page, "page_size": size,
        "page_count": max(1, -(-len(names) // size)), "item_count": len(shown),
        "filtered_count": len(names), "total_count": total})


def _name_matches(name: str, wanted: str, params: Any) -> bool:
    if len(wanted) > MAX_FILTER_CHARS:
        raise BadRequestError(f"a name filter has at most {MAX_FILTER_CHARS} characters")
    if params.get("use_regex") != "true":
        return wanted in name
    try:
        return re.search(wanted, name) is not None
    except re.error as e:
        raise BadRequestError(f"name filter is not a regular expression: {e}") from e


async def list_streams(request: Request) -> JSONResponse:
    """Every stream's numbers (records, bytes, offsets, retention, readers' lag)."""
    gw = gateway(request)
    return JSONResponse([asdict(s) for s in gw.broker.statistics(gw.visible(request)).streams])


async def get_stream(request: Request) -> JSONResponse:
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    gw.check(request, "read", "queue", name, vhost)
    return JSONResponse(asdict(gw.broker.stream_statistics(vhost, name)))


async def get_queue(request: Request) -> JSONResponse:
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    gw.check(request, "read", "queue", name, vhost)
    return JSONResponse(queue_json(gw, vhost, name))


async def put_queue(request: Request) -> JSONResponse:
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    gw.check(request, "configure", "queue", name, vhost)
    data = sch.obj(await sch.read_json(request, gw.max_body_bytes, required=False))
    arguments = sch.table(data, "arguments")
    dlx = (arguments or {}).get("x-dead-letter-exchange")
    if isinstance(dlx, str):  # dead letters are published there: as RabbitMQ checks
        gw.check(request, "read", "queue", name, vhost)
        gw.check(request, "write", "exchange", dlx or "amq.default", vhost)
    broker = gw.broker
    if vhost not in broker.vhost_names() and vhost in gw.users.list_vhosts():
        broker.declare_vhost(vhost)
    existed = broker.queue_exists(vhost, name)
    broker.declare_queue(vhost, name, durable=sch.boolean(data, "durable", True),
                         auto_delete=sch.boolean(data, "auto_delete", False),
                         arguments=arguments)
    return JSONResponse(queue_json(gw, vhost, name), status_code=200 if existed else 201)


async def delete_queue(request: Request) -> JSONResponse:
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    gw.check(request, "configure", "queue", name, vhost)
    q = request.query_params
    count = gw.broker.delete_queue(vhost, name, if_unused=q.get("if_unused") == "true",
                                   if_empty=q.get("if_empty") == "true")
    return JSONResponse({"deleted": name, "messages": count})


async def purge_queue(request: Request) -> JSONResponse:
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    gw.check(request, "read", "queue", name, vhost)
    return JSONResponse({"purged": gw.broker.purge_queue(vhost, name)})


async def send(request: Request) -> JSONResponse:
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    gw.check(request, "write", "exchange", "amq.default", vhost)
    data = sch.obj(await sch.read_json(request, gw.max_body_bytes))
    message = sch.message_from_json(data)
    delay_ms = sch.integer(data, "delay_ms", None, 0, 2**31)
    gw.broker.describe_queue(vhost, name)  # 404 for a missing queue
    message.routing_key = name
    result = gw.broker.publish(vhost, "", message, delay_ms=delay_ms)
    if result.refused:
        raise PreconditionFailedError(f"queue '{name}' in vhost '{vhost}' refused the "
                                      f"message: it is full (x-overflow reject-publish)")
    await gw.broker.sync()
    return JSONResponse({"id": message.message_id, "queue": name}, status_code=201)


async def receive(request: Request) -> JSONResponse:
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    gw.check(request, "read", "queue", name, vhost)
    data = sch.obj(await sch.read_json(request, gw.max_body_bytes, required=False))
    count = sch.integer(data, "max", 1, 1, 1000) or 1
    visibility = sch.integer(data, "visibility_ms", 30_000, 1, MAX_VISIBILITY_MS) or 30_000
    wait_ms = sch.integer(data, "wait_ms", 0, 0, MAX_WAIT_MS) or 0
    user = user_of(request)
    session = gw.leases.session(user, vhost)
    got: list[Delivery] = []
    while len(got) < count and (d := gw.broker.get(session, name)) is not None:
        got.append(d)
    if not got and wait_ms:
        got = await wait_for_deliveries(gw, session, name, count, wait_ms)
    return JSONResponse({"messages": [
        sch.message_to_json(d.message, receipt=gw.leases.grant(user, session, d, visibility),
                            redelivered=d.redelivered, delivery_count=d.delivery_count + 1)
        for d in got
    ]})


async def wait_for_deliveries(gw: Gateway, session: Session, name: str, count: int,
                              wait_ms: int) -> list[Delivery]:
    """Long-poll: a temporary consumer, woken by the first delivery (no polling)."""
    got: list[Delivery] = []
    arrived = asyncio.Event()

    def on_delivery(d: Delivery) -> None:
        got.append(d)
        arrived.set()

    consumer = gw.broker.consume(session, name, on_delivery, prefetch_count=count)
    waits = [asyncio.ensure_future(arrived.wait()), asyncio.ensure_future(gw.closing.wait())]
    try:
        await asyncio.wait(waits, timeout=wait_ms / 1000.0, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the client went away: give the messages back
        gw.broker.cancel(session, consumer.tag)
        for d in got:
            session.nack(d.delivery_tag, requeue=True)
        raise
    finally:
        for waiting in waits:
            waiting.cancel()
    gw.broker.cancel(session, consumer.tag)
    return got
