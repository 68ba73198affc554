"""Policies and operator policies: RabbitMQ's ``/api/policies`` and ``/api/operator-policies``.

As in RabbitMQ's management plugin, reading or changing them needs the ``policymaker`` tag (or
``administrator``) and, for one vhost, access to it. A definition key that has no effect in
tidings is accepted and said: in the answer to the ``PUT`` (``warnings``), in the listing and
in the server's log, never silently.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tidings.errors import AccessRefusedError, InvalidArgumentError, NotFoundError
from tidings.http import schemas as sch
from tidings.http.errors import BadRequestError
from tidings.http.gateway import Gateway, gateway, name_of, vhost_of
from tidings.http.middleware import user_of
from tidings.routing.front_door import Policy, make_policy

log = logging.getLogger("tidings.http")
POLICY_TAGS = ("administrator", "policymaker")


def _operator(request: Request) -> bool:
    return request.url.path.startswith("/api/operator-policies")


def _policymaker(request: Request, vhost: str | None = None) -> Gateway:
    gw = gateway(request)
    user = user_of(request)
    if not gw.users.is_administrator(user) and \
            not set(POLICY_TAGS).intersection(gw.users.tags_of(user)):
        raise AccessRefusedError("policies need the policymaker or administrator tag")
    if vhost is not None:
        gw.users.check_vhost(user, vhost)
    return gw


def policy_json(p: Policy) -> dict[str, Any]:
    return {"vhost": p.vhost, "name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
            "definition": p.definition, "priority": p.priority, "warnings": list(p.warnings)}


async def list_policies(request: Request) -> JSONResponse:
    only = request.path_params.get("vhost")
    gw = _policymaker(request, vhost_of(request) if only else None)
    vhosts = [vhost_of(request)] if only else gw.vhosts(request)
    return JSONResponse([policy_json(p) for v in vhosts if v in gw.broker.vhost_names()
                         for p in gw.broker.list_policies(v, operator=_operator(request))])


async def get_policy(request: Request) -> JSONResponse:
    vhost, name, operator = vhost_of(request), name_of(request), _operator(request)
    gw = _policymaker(request, vhost)
    for p in gw.broker.list_policies(vhost, operator=operator) \
            if vhost in gw.broker.vhost_names() else []:
        if p.name == name:
            return JSONResponse(policy_json(p))
    raise NotFoundError(f"no {'operator policy' if operator else 'policy'} '{name}' in vhost "
                        f"'{vhost}'")


async def put_policy(request: Request) -> Response:
    vhost, name, operator = vhost_of(request), name_of(request), _operator(request)
    gw = _policymaker(request, vhost)
    data = sch.obj(await sch.read_json(request, gw.max_body_bytes))
    definition = data.get("definition")
    if isinstance(definition, str):  # a JSON text, as some scripts send it
        definition = sch.parse_json(definition.encode(), "field 'definition'")
    try:
        policy = make_policy(vhost, name, data.get("pattern"), definition,
                             data.get("priority", 0),
                             data.get("apply-to", data.get("apply_to", "all")),
                             operator=operator)
    except InvalidArgumentError as e:
        raise BadRequestError(str(e)) from None
    gw.broker.declare_vhost(vhost)
    existed = any(p.name == name for p in gw.broker.list_policies(vhost, operator=operator))
    gw.broker.set_policy(policy)
    if policy.warnings:
        for warning in policy.warnings:
            log.warning("policy '%s' in vhost '%s': %s", name, vhost, warning)
        return JSONResponse({"warnings": list(policy.warnings)},
                            status_code=200 if existed else 201)
    return Response(status_code=204 if existed else 201)


async def delete_policy(request: Request) -> Response:
    vhost, name = vhost_of(request), name_of(request)
    gw = _policymaker(request, vhost)
    if vhost not in gw.broker.vhost_names():
        raise NotFoundError(f"no vhost '{vhost}'")
    gw.broker.delete_policy(vhost, name, operator=_operator(request))
    return Response(status_code=204)
