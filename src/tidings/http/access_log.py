"""The gateway's access log (one line per request) and the audit records of its changes.

:class:`AccessLogMiddleware` sits outside the credential check, so refused requests are
logged too. Each request gives one line on the logger ``tidings.access``: the client, the
user, the vhost, the method, the path (never the query string: it can carry a token), the
status, the bytes sent and the duration; as JSON (the default) or in the common log format.
Credentials and bodies never appear.

A request that changes who may do what or how the broker is configured (users, permissions,
vhosts, policies, definitions, the quarantine, an operator's move of a state machine
instance) and succeeds also gives an audit record on ``tidings.audit`` (``logs.audit``):
who, from where, what and on which path. The CLI's operating commands go through this same
app, so they are audited as well.
"""

from __future__ import annotations

import re
import time
from urllib.parse import unquote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.logs import ACCESS, audit

#: The changes that are audited: their path, and what the change is of.
AUDITED = tuple((re.compile(p), what) for p, what in (
    (r"^/api/users(/|$)", "user"),
    (r"^/api/permissions/", "permission"),
    (r"^/api/vhosts/", "vhost"),
    (r"^/api/(operator-)?policies/", "policy"),
    (r"^/api/definitions", "definitions"),
    (r"^/api/quarantine", "quarantine"),
    (r"^/api/tidings/keys/", "encryption keys"),
    (r"^/api/machines/.+/move$", "machine instance"),
))
CHANGES = frozenset({"PUT", "POST", "DELETE", "PATCH"})
#: Paths whose second segment is a vhost.
_VHOST_PATH = re.compile(r"^/api/(?:queues|exchanges|bindings|permissions|policies|"
                         r"operator-policies|machines|machine-diagrams|vhosts|streams)/([^/]+)")


def vhost_in(path: str) -> str:
    found = _VHOST_PATH.match(path)
    return unquote(found.group(1)) if found else ""


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, face: str = "http") -> None:
        self.app, self.face = app, face

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent = {"status": 0, "bytes": 0}

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = int(message["status"])
            elif message["type"] == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting)
        finally:
            self._record(scope, sent["status"] or 500, sent["bytes"],
                         time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, size: int, duration_s: float) -> None:
        path = scope.get("path", "")
        method = scope.get("method", "")
        user = str(scope.get("state", {}).get("user", "")) or "-"
        client = scope.get("client")
        where = client[0] if client else "-"
        if ACCESS.handlers:
            ACCESS.info("", extra={"fields": {
                "client": where, "user": user, "vhost": vhost_in(path), "method": method,
                "path": path, "status": status, "bytes": size,
                "duration_ms": round(duration_s * 1000, 3)}})
        if method in CHANGES and status < 400:
            for pattern, what in AUDITED:
                if pattern.search(path):
                    audit(user, self.face, f"{method} {what}", path, client=where)
                    break
