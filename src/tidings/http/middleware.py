"""ASGI middleware: credentials on every request but ``/healthz``; ``%2F`` kept in paths.

Credentials are HTTP Basic (the users of ``users.json``, as over AMQP) or a bearer token from
``tidings tokens create``. The user's name goes into ``scope["state"]["user"]``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from tidings.auth import UserStore
from tidings.errors import TidingsError
from tidings.http.errors import UnauthorizedError, error_response

OPEN_PATHS = frozenset({"/healthz"})


def user_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("user", ""))


class AuthMiddleware:
    def __init__(self, app: ASGIApp, users: UserStore) -> None:
        self.app, self.users = app, users

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            user = await self._authenticate(scope)
        except TidingsError as e:
            if scope["type"] == "websocket":  # refuse the upgrade (the client sees 403)
                await receive()
                await send({"type": "websocket.close", "code": 1008, "reason": str(e)[:120]})
                return
            response = error_response(401, "unauthorized", str(e),
                                      {"WWW-Authenticate": 'Basic realm="tidings"'})
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["user"] = user
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> str:
        header = ""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and credentials:
            return self.users.authenticate_token(credentials.strip())
        if scheme.lower() == "basic" and credentials:
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as e:
                raise UnauthorizedError("malformed Basic credentials") from e
            username, sep, password = decoded.partition(":")
            if not sep:
                raise UnauthorizedError("malformed Basic credentials")
            client = scope.get("client")
            return await self.users.authenticate_async(username, password,
                                                       client[0] if client else None)
        raise UnauthorizedError("credentials required: HTTP Basic or a bearer token")


class EncodedSlashMiddleware:
    """Keep ``%2F`` encoded in the routed path so a vhost like ``/`` fits in one segment."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw: Any = scope.get("raw_path")
        if scope["type"] == "http" and raw and b"%2f" in raw.lower():
            fixed = raw.replace(b"%2F", b"%252F").replace(b"%2f", b"%252F")
            scope = {**scope, "path": unquote(fixed.decode("latin-1").split("?")[0])}
        await self.app(scope, receive, send)
