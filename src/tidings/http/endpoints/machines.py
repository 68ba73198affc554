"""State machine instances over HTTP: which machines have instances, how many are in each
state, one page of them, and one instance whole (``/api/machines``, tidings' own).

Reading a machine needs read permission on its queue (``machine.NAME``). Instances are the
rows the client writes (``transitions.py``); their data is shown as the machine stored it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tidings.errors import NotFoundError
from tidings.http import schemas as sch
from tidings.http.errors import BadRequestError
from tidings.http.gateway import Gateway, gateway, name_of, vhost_of
from tidings.http.middleware import user_of
from tidings.machine_diagram import svg
from tidings.transitions import (
    TransitionCommit,
    machine_queue,
    moved_row,
    read_row,
    state_numbers,
)

#: Largest page of instances.
MAX_PAGE_SIZE = 500


Rows = list[tuple[str, dict[str, Any]]]


def _rows(gw: Gateway, request: Request, vhost: str, name: str) -> Rows:
    gw.check(request, "read", "queue", machine_queue(name), vhost)
    known = vhost in gw.broker.vhost_names() and name in gw.broker.machine_names(vhost)
    if not known:
        raise NotFoundError(f"no machine '{name}' in vhost '{vhost}'")
    return [(key, read_row(row)) for key, row in gw.broker.list_instances(vhost, name)]


def _summary(vhost: str, name: str, rows: Rows) -> dict[str, Any]:
    numbers = state_numbers([d for _, d in rows], time.time())
    return {"vhost": vhost, "name": name, "instances": len(rows),
            "states": {state: n["instances"] for state, n in numbers.items()},
            "oldest_s": {state: n["oldest_s"] for state, n in numbers.items()}}


def _description(gw: Gateway, vhost: str, name: str) -> dict[str, Any] | None:
    raw = gw.broker.machine_description(vhost, name)
    try:
        found = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


async def machine_diagram(request: Request) -> Response:
    """The machine's picture (SVG) with the instances each state holds now."""
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    rows = _rows(gw, request, vhost, name)
    description = _description(gw, vhost, name)
    if description is None:
        raise NotFoundError(f"machine '{name}' has no description: it is drawn from the one "
                            f"its runner registers when it starts")
    counts = _summary(vhost, name, rows)["states"]
    numbers = gw.broker.machine_statistics(vhost, name)["transitions"]
    rates = {t: n["rate"] for t, n in numbers.items()}
    return Response(svg(description, counts, rates), media_type="image/svg+xml")


async def list_machines(request: Request) -> JSONResponse:
    gw = gateway(request)
    return JSONResponse([
        {**_summary(v, name, [(k, read_row(r)) for k, r in gw.broker.list_instances(v, name)]),
         **gw.broker.machine_statistics(v, name)}
        for v in gw.vhosts(request) for name in gw.broker.machine_names(v)])


async def get_machine(request: Request) -> JSONResponse:
    """Counts per state and one page of instances (``state``, ``page``, ``page_size``)."""
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    rows = _rows(gw, request, vhost, name)
    params = dict(request.query_params)
    page = sch.integer(params, "page", 1, 1, 10**9) or 1
    size = sch.integer(params, "page_size", 100, 1, MAX_PAGE_SIZE) or 100
    wanted = params.get("state")
    chosen = sorted((k, d) for k, d in rows if wanted is None or d["state"] == wanted)
    shown = chosen[(page - 1) * size:page * size]
    return JSONResponse({**_summary(vhost, name, rows),
                         **gw.broker.machine_statistics(vhost, name),
                         "description": _description(gw, vhost, name),
                         "filtered_count": len(chosen),
                         "page": page, "page_size": size,
                         "items": [{"key": k, "state": d["state"], "version": d["version"],
                                    "history": d["history"], "written_by": d["written_by"]}
                                   for k, d in shown]})


async def get_instance(request: Request) -> JSONResponse:
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    key = request.path_params["key"]
    gw.check(request, "read", "queue", machine_queue(name), vhost)
    row = gw.broker.find_instance(vhost, name, key) \
        if vhost in gw.broker.vhost_names() else None
    if row is None:
        raise NotFoundError(f"no instance '{key}' of machine '{name}' in vhost '{vhost}'")
    d = read_row(row)
    return JSONResponse({"key": key, "machine": name, "vhost": vhost, **{
        k: d[k] for k in ("state", "data", "version", "history", "written_by", "audit")},
        "timers": {t: {"id": i, "armed_in": s} for t, (i, s) in d["timers"].items()},
        "recent_events": d["seen"][-10:], "recent_transitions": d["recent"]})


async def move_instance(request: Request) -> JSONResponse:
    """An operator moves a stuck instance to a state (``{"state", "reason"}``): configure
    permission on the machine's queue; recorded in the instance's audit with who and why.
    The broker does not know the machine's states: a state its definition lacks takes no
    event."""
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    key = request.path_params["key"]
    gw.check(request, "configure", "queue", machine_queue(name), vhost)
    data = sch.obj(await sch.read_json(request, gw.max_body_bytes))
    state = sch.string(data, "state", required=True) or ""
    reason = sch.string(data, "reason", required=True) or ""
    if not state or len(state) > 255 or not reason:
        raise BadRequestError("fields 'state' (1 to 255 characters) and 'reason' are needed")
    row = gw.broker.find_instance(vhost, name, key) \
        if vhost in gw.broker.vhost_names() else None
    if row is None:
        raise NotFoundError(f"no instance '{key}' of machine '{name}' in vhost '{vhost}'")
    moved, version = moved_row(row, state, user_of(request), reason[:1000], time.time())
    session = gw.leases.session(user_of(request), vhost)
    gw.broker.commit_transition(session, None, TransitionCommit(
        vhost, name, key, moved, expected_version=version - 1, version=version))
    await gw.broker.sync()
    return JSONResponse({"key": key, "state": state, "version": version})
