"""A queue's dead letters: list, replay (all or by id) and purge. Each needs read on the
queue and on its dead-letter queue; replaying also needs write on the default exchange,
through which the dead letters go back."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from tidings.http import schemas as sch
from tidings.http.errors import BadRequestError
from tidings.http.gateway import gateway, name_of, vhost_of

#: Most dead letters one listing returns.
MAX_LISTED = 10_000


def _checked(request: Request) -> tuple[str, str]:
    """vhost and queue, after checking read on the queue and on its dead-letter queue."""
    gw, vhost, name = gateway(request), vhost_of(request), name_of(request)
    gw.check(request, "read", "queue", name, vhost)
    gw.check(request, "read", "queue", gw.broker.dead_letter_queue(vhost, name), vhost)
    return vhost, name


async def list_dead_letters(request: Request) -> JSONResponse:
    vhost, name = _checked(request)
    limit_text = request.query_params.get("limit", "100")
    if not limit_text.isdigit():
        raise BadRequestError("query parameter 'limit' must be a whole number")
    messages = gateway(request).broker.dead_letters(vhost, name,
                                                    min(int(limit_text), MAX_LISTED))
    return JSONResponse([sch.message_to_json(m) for m in messages])


async def replay_dead_letters(request: Request) -> JSONResponse:
    vhost, name = _checked(request)
    gw = gateway(request)
    gw.check(request, "write", "exchange", "amq.default", vhost)  # replayed through it
    data = sch.obj(await sch.read_json(request, gw.max_body_bytes, required=False))
    ids = data.get("ids")
    if ids is not None and (not isinstance(ids, list) or
                            not all(isinstance(i, str) for i in ids)):
        raise BadRequestError("field 'ids' must be a list of message ids")
    replayed = gw.broker.replay_dead_letters(vhost, name, set(ids) if ids is not None else None)
    await gw.broker.sync()
    return JSONResponse({"replayed": replayed})


async def purge_dead_letters(request: Request) -> JSONResponse:
    vhost, name = _checked(request)  # purging is reading, as in RabbitMQ
    return JSONResponse({"purged": gateway(request).broker.purge_dead_letters(vhost, name)})
