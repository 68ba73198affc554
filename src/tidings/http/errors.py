"""Every HTTP error is JSON: ``{"error": "<stable code>", "message": "<names the thing>"}``,
with the text again as ``reason`` (RabbitMQ's management API's field).

One table: a :class:`TidingsError` carries its HTTP status and code; Starlette's own
``HTTPException`` (404 for unknown paths, 405 for methods) is mapped to the same shape.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from tidings.errors import TidingsError
from tidings.values import printable

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "access_refused",
               404: "not_found", 405: "method_not_allowed", 406: "not_acceptable",
               409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
               422: "invalid_argument", 429: "too_many_requests"}


class BadRequestError(TidingsError):
    """The request itself is malformed (bad JSON, missing field, wrong type)."""

    reply_code, status, code = 406, 400, "bad_request"


class UnauthorizedError(TidingsError):
    """No credentials, or credentials that do not check out."""

    reply_code, status, code = 403, 401, "unauthorized"


class PayloadTooLargeError(TidingsError):
    reply_code, status, code = 311, 413, "payload_too_large"


class UnsupportedMediaTypeError(TidingsError):
    reply_code, status, code = 406, 415, "unsupported_media_type"


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    text = printable(message)
    # "reason" is RabbitMQ's management API's name for the text (rabbitmqadmin prints it)
    return JSONResponse({"error": code, "message": text, "reason": text}, status_code=status,
                        headers=headers)


async def tidings_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TidingsError)
    headers = {"WWW-Authenticate": 'Basic realm="tidings"'} \
        if isinstance(exc, UnauthorizedError) else None
    return error_response(exc.status, exc.code, str(exc), headers)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail), exc.headers)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(500, "internal_error", f"internal error: {type(exc).__name__}")


EXCEPTION_HANDLERS = {TidingsError: tidings_error, HTTPException: http_error,
                      Exception: internal_error}
