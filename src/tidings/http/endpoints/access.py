"""Who may do what, and is the node alive: RabbitMQ's management API for users, permissions
and vhosts, ``whoami``, ``nodes``, ``healthchecks/node`` and ``aliveness-test``.

As in RabbitMQ's management plugin, changing users, permissions and vhosts needs the
``administrator`` tag; anyone logged in may ask who they are. Passwords are hashed off the
event loop (a hash takes milliseconds on purpose); password hashes are never listed.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import tidings
from tidings.auth import UserStore, check_tags
from tidings.errors import AccessRefusedError, NotFoundError
from tidings.http import management
from tidings.http import schemas as sch
from tidings.http.errors import BadRequestError
from tidings.http.event_log import is_internal_queue
from tidings.http.gateway import Gateway, gateway
from tidings.http.management import NODE
from tidings.http.middleware import user_of
from tidings.message import Message
from tidings.resources import max_descriptors, open_descriptors, rss_mb
from tidings.statistics import COUNTERS

_STARTED = time.monotonic()


def _admin(request: Request) -> Gateway:
    gw = gateway(request)
    if not gw.users.is_administrator(user_of(request)):
        raise AccessRefusedError("users, permissions and vhosts need the administrator tag")
    return gw


def _param(request: Request, name: str) -> str:
    return unquote(request.path_params[name])


def _user_json(users: UserStore, name: str) -> dict[str, Any]:
    return {"name": name, "tags": users.tags_of(name), "limits": {}}


async def whoami(request: Request) -> JSONResponse:
    user = user_of(request)
    return JSONResponse(_user_json(gateway(request).users, user))


async def list_users(request: Request) -> JSONResponse:
    users = _admin(request).users
    return JSONResponse([_user_json(users, name) for name in users.list_users()])


async def get_user(request: Request) -> JSONResponse:
    users, name = _admin(request).users, _param(request, "user")
    if name not in users.list_users():
        raise NotFoundError(f"no user '{name}'")
    return JSONResponse(_user_json(users, name))


def _tags(data: dict[str, Any]) -> list[str]:
    """The tags of a user's body (checked, so a bad one changes nothing)."""
    tags = data.get("tags", "")
    if isinstance(tags, str):  # RabbitMQ's form: "administrator,monitoring"
        found = [t.strip() for t in tags.split(",") if t.strip()]
    elif isinstance(tags, list) and all(isinstance(t, str) for t in tags):
        found = list(tags)
    else:
        raise BadRequestError("field 'tags' must be a comma-separated string or a list of "
                              "strings")
    check_tags(found)
    return found


async def put_user(request: Request) -> Response:
    gw, name = _admin(request), _param(request, "user")
    data = sch.obj(await sch.read_json(request, gw.max_body_bytes))
    password = sch.string(data, "password")
    if password is None:
        raise BadRequestError("field 'password' is required (tidings does not take "
                              "RabbitMQ's password_hash here)")
    tags = _tags(data)
    users = gw.users
    existed = name in users.list_users()
    if existed:
        await asyncio.to_thread(users.set_password, name, password)
    else:
        await asyncio.to_thread(users.add_user, name, password)
    users.set_tags(name, tags)
    return Response(status_code=204 if existed else 201)


async def delete_user(request: Request) -> Response:
    gw, name = _admin(request), _param(request, "user")
    if name == user_of(request):
        raise BadRequestError("you cannot delete the user you are logged in as")
    gw.users.delete_user(name)
    return Response(status_code=204)


def _permission_rows(users: UserStore) -> list[dict[str, str]]:
    return [{"user": name, "vhost": vhost, **perms}
            for name in users.list_users()
            for vhost, perms in users.permissions_of(name).items()]


async def list_permissions(request: Request) -> JSONResponse:
    return JSONResponse(_permission_rows(_admin(request).users))


async def user_permissions(request: Request) -> JSONResponse:
    users, name = _admin(request).users, _param(request, "user")
    return JSONResponse([row for row in _permission_rows(users) if row["user"] == name])


async def get_permission(request: Request) -> JSONResponse:
    users = _admin(request).users
    vhost, name = _param(request, "vhost"), _param(request, "user")
    for row in _permission_rows(users):
        if row["user"] == name and row["vhost"] == vhost:
            return JSONResponse(row)
    raise NotFoundError(f"no permissions for user '{name}' in vhost '{vhost}'")


async def put_permission(request: Request) -> Response:
    gw = _admin(request)
    vhost, name = _param(request, "vhost"), _param(request, "user")
    data = sch.obj(await sch.read_json(request, gw.max_body_bytes))
    patterns = [sch.string(data, k, required=True) or "" for k in ("configure", "write", "read")]
    gw.users.set_permissions(name, vhost, *patterns)
    return Response(status_code=201)


async def delete_permission(request: Request) -> Response:
    gw = _admin(request)
    vhost, name = _param(request, "vhost"), _param(request, "user")
    gw.users.clear_permissions(name, vhost)
    return Response(status_code=204)


def _vhost_json(gw: Gateway, name: str) -> dict[str, Any]:
    queues = [q for q in gw.broker.statistics({name}).queues if not is_internal_queue(q.name)]
    counts = {k: sum(q.counts[k] for q in queues) for k in COUNTERS}
    rates = {k: sum(q.rates[k] for q in queues) for k in COUNTERS}
    return {"name": name, "description": "", "tags": [], "tracing": False,
            "default_queue_type": "classic", "metadata": {"description": "", "tags": []},
            "cluster_state": {NODE: "running"},
            "message_stats": management.message_stats(counts, rates),
            **management.totals(sum(q.ready for q in queues), sum(q.unacked for q in queues))}


async def list_vhosts(request: Request) -> JSONResponse:
    """The vhosts the caller may see (those of the users file: deleting one removes it)."""
    gw = gateway(request)
    known = set(gw.users.list_vhosts())
    return JSONResponse([_vhost_json(gw, v) for v in gw.vhosts(request) if v in known])


async def get_vhost(request: Request) -> JSONResponse:
    gw, name = gateway(request), _param(request, "vhost")
    seen = gw.visible(request)
    if name not in gw.users.list_vhosts() or (seen is not None and name not in seen):
        raise NotFoundError(f"no vhost '{name}'")
    return JSONResponse(_vhost_json(gw, name))


async def put_vhost(request: Request) -> Response:
    gw, name = _admin(request), _param(request, "vhost")
    if name in gw.users.list_vhosts():
        return Response(status_code=204)
    gw.users.add_vhost(name)
    gw.broker.declare_vhost(name)
    return Response(status_code=201)


async def delete_vhost(request: Request) -> Response:
    gw, name = _admin(request), _param(request, "vhost")
    gw.users.delete_vhost(name)  # (404 when there is none)
    gw.broker.delete_vhost(name)
    return Response(status_code=204)


def _node_json(gw: Gateway) -> dict[str, Any]:
    """This node as RabbitMQ's ``/api/nodes`` shows one: memory, disk, descriptors, sockets
    and their limits and alarms (the server's numbers where a server runs)."""
    server = gw.server_stats() if gw.server_stats else {}
    fds, sockets = open_descriptors()
    limit = max_descriptors()
    mem_limit = management.memory_limit_bytes(server)
    return {"name": NODE, "type": "disc", "running": True, "os_pid": str(os.getpid()),
            "mem_used": int(rss_mb(os.getpid()) * 1024 * 1024), "mem_limit": int(mem_limit),
            "mem_alarm": bool(server.get("memory_alarm")),
            "disk_free": int(server.get("disk_free_bytes", 0)),
            "disk_free_limit": int(server.get("disk_free_limit_bytes", 0)),
            "disk_free_alarm": bool(server.get("disk_alarm")),
            "fd_used": fds, "fd_total": limit, "sockets_used": sockets, "sockets_total": limit,
            "processors": os.cpu_count() or 1, "partitions": [],
            "uptime": int((time.monotonic() - _STARTED) * 1000),
            "product": "tidings", "version": tidings.__version__}


async def list_nodes(request: Request) -> JSONResponse:
    return JSONResponse([_node_json(gateway(request))])


async def get_node(request: Request) -> JSONResponse:
    if _param(request, "node") != NODE:
        raise NotFoundError(f"no node '{_param(request, 'node')}' (this one is '{NODE}')")
    return JSONResponse(_node_json(gateway(request)))


async def no_parameters(request: Request) -> JSONResponse:
    """Runtime parameters (federation upstreams, shovels): tidings has none to list."""
    return JSONResponse([])


async def global_parameters(request: Request) -> JSONResponse:
    return JSONResponse([{"name": "cluster_name", "value": NODE}])


async def node_health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def aliveness(request: Request) -> JSONResponse:
    """RabbitMQ's aliveness test: a message through the queue ``aliveness-test`` of the vhost
    (needs configure, write and read there, as in RabbitMQ)."""
    gw, vhost = gateway(request), _param(request, "vhost")
    for permission in ("configure", "write", "read"):
        gw.check(request, permission, "queue", "aliveness-test", vhost)
    broker = gw.broker
    broker.declare_queue(vhost, "aliveness-test", durable=False)
    message = Message(b"test_message", routing_key="aliveness-test", persistent=False)
    broker.publish(vhost, "", message)
    session = gw.leases.session(user_of(request), vhost)
    delivery = broker.get(session, "aliveness-test", no_ack=True)
    if delivery is None or delivery.message.body != b"test_message":
        return JSONResponse({"status": "failed", "reason": "the test message did not come "
                                                           "back"}, status_code=503)
    return JSONResponse({"status": "ok"})
