"""RabbitMQ management API operations that rabbitmqadmin and other operators' tools call, with
RabbitMQ's paths and JSON: one exchange, bindings by their source and destination (and
``properties_key``), publish to an exchange and get from a queue.

As in RabbitMQ, the default exchange is written ``amq.default`` in a path. A publish here is
durable when it returns (RabbitMQ's is not confirmed); a get takes up to ``count`` messages
and then acks or requeues / rejects them all, as its ``ackmode`` says.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import quote, unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tidings.errors import NotFoundError
from tidings.http import management
from tidings.http import schemas as sch
from tidings.http.errors import BadRequestError
from tidings.http.event_log import is_internal_queue
from tidings.http.gateway import gateway, name_of, vhost_of
from tidings.http.middleware import user_of
from tidings.message import Message
from tidings.routing.front_door import BindingInfo

ACK_MODES = ("ack_requeue_false", "ack_requeue_true", "reject_requeue_true",
             "reject_requeue_false")
#: Properties as RabbitMQ's management API names them (``type`` is the message type).
_PROPERTIES = ("content_type", "content_encoding", "priority", "correlation_id", "reply_to",
               "expiration", "message_id", "timestamp", "type", "user_id", "app_id")


def _exchange(name: str) -> str:
    return "" if name == "amq.default" else name


def properties_key(binding: BindingInfo) -> str:
    """RabbitMQ's name for one binding between a source and a destination: ``~`` for an
    empty routing key without arguments, else the quoted key (and ``~`` + a hash of the
    arguments when there are any)."""
    if not binding.routing_key and not binding.arguments:
        return "~"
    key = quote(binding.routing_key, safe="")
    if binding.arguments:
        digest = hashlib.sha256(json.dumps(binding.arguments, sort_keys=True, default=str)
                                .encode()).hexdigest()[:12]
        key = f"{key}~{digest}"
    return key


def binding_json(b: BindingInfo) -> dict[str, Any]:
    return {"vhost": b.vhost, "source": b.source, "destination": b.destination,
            "destination_type": "exchange" if b.to_exchange else "queue",
            "routing_key": b.routing_key, "arguments": b.arguments,
            "properties_key": properties_key(b)}


async def get_exchange(request: Request) -> JSONResponse:
    gw, vhost, name = gateway(request), vhost_of(request), _exchange(name_of(request))
    gw.check(request, "read", "exchange", name or "amq.default", vhost)
    for e in gw.broker.list_exchanges(vhost):
        if e.name == name:
            return JSONResponse({**management.exchange_json(e), "name": e.name or "amq.default"})
    raise NotFoundError(f"no exchange '{name}' in vhost '{vhost}'")


def _ends(request: Request) -> tuple[str, str, str, bool]:
    params = request.path_params
    kind = params["kind"]
    if kind not in ("q", "e"):
        raise NotFoundError(f"no binding destination type '{kind}' (q or e)")
    return (vhost_of(request), _exchange(unquote(params["source"])),
            unquote(params["destination"]), kind == "e")


def _between(request: Request) -> list[BindingInfo]:
    vhost, source, destination, to_exchange = _ends(request)
    gw = gateway(request)
    gw.check(request, "read", "exchange", source or "amq.default", vhost)
    return [b for b in gw.broker.list_bindings(vhost)
            if b.source == source and b.destination == destination
            and b.to_exchange == to_exchange and not is_internal_queue(b.destination)]


async def list_bindings_between(request: Request) -> JSONResponse:
    return JSONResponse([binding_json(b) for b in _between(request)])


async def post_binding(request: Request) -> Response:
    gw = gateway(request)
    vhost, source, destination, to_exchange = _ends(request)
    data = sch.obj(await sch.read_json(request, gw.max_body_bytes, required=False))
    key = sch.string(data, "routing_key", "") or ""
    arguments = sch.table(data, "arguments") or {}
    gw.check(request, "read", "exchange", source or "amq.default", vhost)
    gw.check(request, "write", "exchange" if to_exchange else "queue", destination, vhost)
    gw.broker.bind(vhost, source, destination, key, arguments, to_exchange=to_exchange)
    made = BindingInfo(vhost=vhost, source=source, destination=destination,
                       to_exchange=to_exchange, routing_key=key, arguments=arguments,
                       durable=False)
    return Response(status_code=201, headers={"Location": properties_key(made)})


async def delete_binding(request: Request) -> Response:
    gw = gateway(request)
    vhost, source, destination, to_exchange = _ends(request)
    wanted = request.path_params["props"]
    for b in _between(request):
        if properties_key(b) == wanted:
            gw.check(request, "write", "exchange" if to_exchange else "queue", destination,
                     vhost)
            gw.broker.unbind(vhost, source, destination, b.routing_key, b.arguments,
                             to_exchange=to_exchange)
            return Response(status_code=204)
    raise NotFoundError(f"no binding '{wanted}' from '{source}' to '{destination}' in "
                        f"vhost '{vhost}'")


def _message(data: dict[str, Any]) -> Message:
    props = sch.obj(data.get("properties", {}), "field 'properties'")
    encoding = sch.string(data, "payload_encoding", "string")
    payload = sch.string(data, "payload", "") or ""
    if encoding == "string":
        body = payload.encode()
    elif encoding == "base64":
        try:
            body = base64.b64decode(payload, validate=True)
        except ValueError as e:
            raise BadRequestError("field 'payload' is not valid base64") from e
    else:
        raise BadRequestError("field 'payload_encoding' must be 'string' or 'base64'")
    mode = sch.integer(props, "delivery_mode", 1, 1, 2)
    message = Message(body, headers=sch.table(props, "headers") or None,
                      persistent=mode == 2)
    message.priority = sch.integer(props, "priority", None, 0, 255)
    message.timestamp = sch.integer(props, "timestamp", None, 0, 2**63 - 1)
    for name in ("content_type", "content_encoding", "correlation_id", "reply_to",
                 "expiration", "message_id", "type", "user_id", "app_id"):
        setattr(message, name, sch.string(props, name))
    return message


async def publish(request: Request) -> JSONResponse:
    gw, vhost, name = gateway(request), vhost_of(request), _exchange(name_of(request))
    gw.check(request, "write", "exchange", name or "amq.default", vhost)
    data = sch.obj(await sch.read_json(request, gw.max_body_bytes))
    message = _message(data)
    message.routing_key = sch.string(data, "routing_key", required=True) or ""
    if message.user_id is not None and message.user_id != user_of(request):
        raise BadRequestError(f"user_id property set to '{message.user_id}' but "
                              f"authenticated user was '{user_of(request)}'")
    result = gw.broker.publish(vhost, name, message)
    await gw.broker.sync()
    return JSONResponse({"routed": result.routed > 0})


def _properties_json(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"delivery_mode": 2 if message.persistent else 1}
    for name in _PROPERTIES:
        value = getattr(message, name)
        if value is not None:
            out[name] = value
    if message.headers:
        out["headers"] = sch.message_to_json(message)["headers"]
    return out


def _payload(body: bytes, encoding: str) -> tuple[str, str]:
    if encoding == "auto":
        try:
            return body.decode(), "string"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode(), "base64"


def _message_json(message: Message, encoding: str, truncate: int | None,
                  **extra: Any) -> dict[str, Any]:
    """A message as RabbitMQ's get answers it."""
    body = message.body
    payload, used = _payload(body[:truncate] if truncate is not None else body, encoding)
    return {"payload_bytes": len(body), **extra, "exchange": message.exchange,
            "routing_key": message.routing_key, "properties": _properties_json(message),
            "payload": payload, "payload_encoding": used}


async def browse_messages(request: Request) -> JSONResponse:
    """The first ready messages of a queue, left in place and not marked redelivered (tidings'
    own: RabbitMQ's get takes them and puts them back): what the dashboard's queue page shows."""
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    gw.check(request, "read", "queue", name, vhost)
    limit_text = request.query_params.get("limit", "10")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
        raise BadRequestError("query parameter 'limit' must be a whole number from 1 to 100")
    messages = gw.broker.browse(vhost, name, int(limit_text))
    return JSONResponse([_message_json(m, "auto", 2048) for m in messages])


async def get_messages(request: Request) -> JSONResponse:
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    gw.check(request, "read", "queue", name, vhost)
    data = sch.obj(await sch.read_json(request, gw.max_body_bytes))
    count = sch.integer(data, "count", 1, 1, 1000) or 1
    mode = sch.string(data, "ackmode", required=True)
    if mode not in ACK_MODES:
        raise BadRequestError(f"field 'ackmode' must be one of {', '.join(ACK_MODES)}")
    encoding = sch.string(data, "encoding", "auto") or "auto"
    if encoding not in ("auto", "base64"):
        raise BadRequestError("field 'encoding' must be 'auto' or 'base64'")
    truncate = sch.integer(data, "truncate", None, 0, 2**31)
    session = gw.leases.session(user_of(request), vhost)
    got = []
    while len(got) < count and (d := gw.broker.get(session, name)) is not None:
        got.append(d)
    out = []
    for d in got:
        out.append(_message_json(d.message, encoding, truncate, redelivered=d.redelivered,
                                 message_count=d.message_count))
        if mode == "ack_requeue_false":
            session.ack(d.delivery_tag)
        else:
            session.nack(d.delivery_tag, requeue=mode.endswith("_true"))
    if mode != "ack_requeue_true":
        await gw.broker.sync()
    return JSONResponse(out)
