"""Administration: health, the dashboard and the OpenAPI document, connections,
exchanges and bindings, definitions (export / import), the quarantine and the encryption
keys."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from tidings.errors import AccessRefusedError, NotFoundError
from tidings.http import management
from tidings.http import schemas as sch
from tidings.http.endpoints.rabbitmq import binding_json
from tidings.http.errors import BadRequestError
from tidings.http.event_log import is_internal_queue
from tidings.http.gateway import gateway, name_of, vhost_of
from tidings.http.middleware import user_of
from tidings.http.openapi import openapi_document
from tidings.routing.definitions_io import export_definitions, import_definitions

STATIC = Path(__file__).parent.parent / "static"


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def rabbitmqadmin(request: Request) -> JSONResponse:
    """RabbitMQ serves its rabbitmqadmin script here; tidings does not ship RabbitMQ's code,
    so the answer says where to get it (it works against tidings unchanged)."""
    reason = ("tidings does not ship rabbitmqadmin (RabbitMQ's, MPL 2.0): take it from a "
              "RabbitMQ node's /cli/rabbitmqadmin, your distribution's rabbitmq-server "
              "package, or rabbitmq-server's deps/rabbitmq_management/bin/rabbitmqadmin on "
              "GitHub; version 3.10 works against tidings unchanged (docs/operations.md)")
    return JSONResponse({"error": "not_found", "reason": reason, "message": reason},
                        status_code=404)


async def dashboard(request: Request) -> FileResponse:
    return FileResponse(STATIC / "index.html")


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document())


async def list_connections(request: Request) -> JSONResponse:
    gw = gateway(request)
    return JSONResponse(gw.visible_connections(gw.visible(request)))


def _connection(request: Request) -> dict[str, Any]:
    gw, name = gateway(request), unquote(request.path_params["name"])
    for c in gw.visible_connections(gw.visible(request)):
        if c["name"] == name:
            return c
    raise NotFoundError(f"no connection '{name}'")


async def get_connection(request: Request) -> JSONResponse:
    return JSONResponse(_connection(request))


async def close_connection(request: Request) -> Response:
    """Close a connection (RabbitMQ's ``X-Reason`` header says why): its own user, or an
    administrator."""
    gw, found = gateway(request), _connection(request)
    user = user_of(request)
    if found["user"] != user and not gw.users.is_administrator(user):
        raise AccessRefusedError("closing another user's connection needs the administrator "
                                 "tag")
    reason = request.headers.get("x-reason", "Closed via management plugin")
    assert gw.connections is not None
    gw.connections.close(found["name"], reason[:255])
    return Response(status_code=204)


async def list_channels(request: Request) -> JSONResponse:
    gw = gateway(request)
    return JSONResponse(gw.visible_connections(gw.visible(request), "channels"))


async def list_consumers(request: Request) -> JSONResponse:
    gw = gateway(request)
    seen = gw.visible(request)
    if "vhost" in request.path_params:
        wanted = {vhost_of(request)}
        seen = wanted if seen is None else seen & wanted
    return JSONResponse(gw.visible_connections(seen, "consumers"))


# -- exchanges and bindings ------------------------------------------------------------------


async def list_exchanges(request: Request) -> JSONResponse:
    gw = gateway(request)
    return JSONResponse([management.exchange_json(e)
                         for v in gw.vhosts(request) for e in gw.broker.list_exchanges(v)])


async def put_exchange(request: Request) -> JSONResponse:
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    gw.check(request, "configure", "exchange", name, vhost)
    data = sch.obj(await sch.read_json(request, gw.max_body_bytes, required=False))
    ex = gw.broker.declare_exchange(vhost, name, sch.string(data, "type", "direct") or "direct",
                                    durable=sch.boolean(data, "durable", True),
                                    auto_delete=sch.boolean(data, "auto_delete", False),
                                    internal=sch.boolean(data, "internal", False),
                                    arguments=sch.table(data, "arguments"))
    return JSONResponse({"vhost": vhost, "name": ex.name, "type": ex.kind}, status_code=201)


async def delete_exchange(request: Request) -> JSONResponse:
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    gw.check(request, "configure", "exchange", name, vhost)
    gw.broker.delete_exchange(vhost, name,
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
    gw = gateway(request)
    return JSONResponse([
        binding_json(b) for v in gw.vhosts(request) for b in gw.broker.list_bindings(v)
        if not is_internal_queue(b.destination)
    ])


async def change_binding(request: Request) -> JSONResponse:
    gw, vhost = gateway(request), vhost_of(request)
    data = sch.obj(await sch.read_json(request, gw.max_body_bytes))
    source, dest, key, to_exchange, args = binding_fields(data)
    gw.check(request, "read", "exchange", source, vhost)
    gw.check(request, "write", "exchange" if to_exchange else "queue", dest, vhost)
    if request.method == "POST":
        gw.broker.bind(vhost, source, dest, key, args, to_exchange=to_exchange)
        return JSONResponse({"bound": True}, status_code=201)
    gw.broker.unbind(vhost, source, dest, key, args, to_exchange=to_exchange)
    return JSONResponse({"unbound": True})


# -- definitions and the quarantine ----------------------------------------------------------


async def list_quarantine(request: Request) -> JSONResponse:
    """Stored records that could not be read (administrator: they may hold anyone's)."""
    gw = gateway(request)
    if not gw.users.is_administrator(user_of(request)):
        raise AccessRefusedError("the quarantine needs the administrator tag")
    await gw.broker.sync()
    return JSONResponse([
        {"id": r.id, "vhost": r.vhost, "queue": r.queue, "seq": r.seq, "reason": r.reason,
         "quarantined_at": r.quarantined_at, "data_base64": base64.b64encode(r.data).decode()}
        for r in gw.broker.quarantined()
    ])


async def get_keys(request: Request) -> JSONResponse:
    """What the data directory is encrypted under (``tidings keys status``)."""
    gw = gateway(request)
    if not gw.users.is_administrator(user_of(request)):
        raise AccessRefusedError("encryption keys need the administrator tag")
    return JSONResponse((await gw.broker.key_status()).as_dict())


async def rotate_keys(request: Request) -> JSONResponse:
    """Rotate the master key while serving: the keyring is read again from where the server
    took it at start (its key file), never from the request."""
    gw = gateway(request)
    if not gw.users.is_administrator(user_of(request)):
        raise AccessRefusedError("rotating encryption keys needs the administrator tag")
    return JSONResponse((await gw.broker.rotate_keys()).as_dict())


#: Largest definitions document taken (a RabbitMQ export of thousands of queues is megabytes).
DEFINITIONS_BYTES = 32 << 20


async def get_definitions(request: Request) -> JSONResponse:
    """The definitions of the vhosts the caller may see; users and permissions (with their
    password hashes) only for administrators."""
    gw = gateway(request)
    admin = gw.users.is_administrator(user_of(request))
    return JSONResponse(export_definitions(gw.broker, gw.visible(request),
                                           gw.users if admin else None))


async def post_definitions(request: Request) -> JSONResponse:
    gw = gateway(request)
    if not gw.users.is_administrator(user_of(request)):
        raise AccessRefusedError("importing definitions needs the administrator tag")
    data = sch.obj(await sch.read_json(request, max(gw.max_body_bytes, DEFINITIONS_BYTES)))
    return JSONResponse(import_definitions(gw.broker, data, gw.users.list_vhosts(), gw.users))
