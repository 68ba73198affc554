"""What a producer hands over becomes message bytes: bytes pass through, text is UTF-8, anything
else is JSON; headers are checked once here for what every transport and face can deliver."""

from __future__ import annotations

import json
from typing import Any

from tidings.errors import InvalidArgumentError
from tidings.values import header_problem

_BINARY = (bytes, bytearray, memoryview)


def encode_body(body: Any, content_type: str | None) -> tuple[bytes, str | None]:
    """bytes pass through; str is UTF-8 text; anything else is JSON."""
    if isinstance(body, _BINARY):
        return bytes(body), content_type
    if isinstance(body, str):
        return body.encode(), content_type or "text/plain; charset=utf-8"
    try:
        return json.dumps(body, separators=(",", ":")).encode(), content_type or "application/json"
    except TypeError as e:
        raise InvalidArgumentError(
            f"message body of type {type(body).__name__} is not bytes, str or JSON-able"
        ) from e


def check_headers(headers: dict[str, Any]) -> None:
    """Headers every transport and every face can deliver (see :mod:`tidings.values`)."""
    if problem := header_problem(headers):
        raise InvalidArgumentError(problem)
