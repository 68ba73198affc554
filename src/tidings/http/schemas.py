"""HTTP bodies ⇄ :class:`tidings.message.Message`, and checked request fields.

The one place HTTP shapes are converted. Validation errors name the field:
``field 'max' must be an integer between 1 and 1000``.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from starlette.requests import Request

from tidings.http.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from tidings.message import Message
from tidings.values import header_problem, json_problem, jsonable

JSON_TYPES = ("application/json",)


async def read_body(request: Request, limit_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the limit of "
                                   f"{limit_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit_bytes: int, *, required: bool = True) -> Any:
    raw = await read_body(request, limit_bytes)
    if not raw.strip():
        if required:
            raise BadRequestError("request body is empty: a JSON object is expected")
        return {}
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if ctype and ctype not in JSON_TYPES and not ctype.endswith("+json"):
        raise UnsupportedMediaTypeError(f"content type '{ctype}' is not JSON")
    return parse_json(raw)


def parse_json(raw: bytes, what: str = "request body") -> Any:
    """JSON that every face can deliver: valid, no lone surrogates, at most
    :data:`~tidings.values.MAX_JSON_DEPTH` deep."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequestError(f"{what} is not valid JSON: {e}") from e
    except RecursionError as e:
        raise BadRequestError(f"{what} is nested too deeply") from e
    if problem := json_problem(value, what):
        raise BadRequestError(problem)
    return value


def obj(value: Any, what: str = "request body") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestError(f"{what} must be a JSON object")
    return value


def integer(data: dict[str, Any], name: str, default: int | None, low: int,
            high: int) -> int | None:
    value = data.get(name, default)
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit() \
            and len(value) <= 20:  # RabbitMQ's management API takes "5" for 5 too
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequestError(f"field '{name}' must be an integer between {low} and {high}")
    return value


def boolean(data: dict[str, Any], name: str, default: bool) -> bool:
    """A boolean field; ``"true"`` / ``"false"`` as strings too, as RabbitMQ's management API
    takes them (rabbitmqadmin sends them so)."""
    value = data.get(name, default)
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    if not isinstance(value, bool):
        raise BadRequestError(f"field '{name}' must be true or false")
    return value


def string(data: dict[str, Any], name: str, default: str | None = None,
           required: bool = False) -> str | None:
    value = data.get(name, default)
    if value is None:
        if required:
            raise BadRequestError(f"field '{name}' is required")
        return None
    if not isinstance(value, str):
        raise BadRequestError(f"field '{name}' must be a string")
    return value


def table(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequestError(f"field '{name}' must be a JSON object")
    if problem := header_problem(value, f"field '{name}'"):
        raise BadRequestError(problem)
    return value


def new_message(body: bytes, content_type: str | None, headers: dict[str, Any] | None = None,
                message_id: str | None = None, persistent: bool = True) -> Message:
    return Message(body, headers=headers or None, persistent=persistent,
                   content_type=content_type, message_id=message_id or uuid.uuid4().hex,
                   timestamp=int(time.time()))


def message_from_json(data: dict[str, Any]) -> Message:
    """``{"body": ... | "json": ... | "body_base64": ..., "headers", "priority", ...}``."""
    given = [k for k in ("body", "json", "body_base64") if k in data]
    if len(given) != 1:
        raise BadRequestError("give exactly one of 'body' (text), 'json' (any JSON value) "
                              "or 'body_base64'")
    if "json" in data:
        body, ctype = json.dumps(data["json"]).encode(), "application/json"
    elif "body" in data:
        text = string(data, "body")
        body, ctype = (text or "").encode(), "text/plain; charset=utf-8"
    else:
        try:
            body = base64.b64decode(string(data, "body_base64") or "", validate=True)
        except ValueError as e:
            raise BadRequestError("field 'body_base64' is not valid base64") from e
        ctype = None
    headers = table(data, "headers")
    message = new_message(body, string(data, "content_type", ctype), headers,
                          string(data, "message_id"), boolean(data, "persistent", True))
    message.priority = integer(data, "priority", None, 0, 255)
    ttl = integer(data, "ttl_ms", None, 0, 2**31)
    message.expiration = None if ttl is None else str(ttl)
    message.correlation_id = string(data, "correlation_id")
    message.reply_to = string(data, "reply_to")
    return message


def message_to_json(message: Message, **extra: Any) -> dict[str, Any]:
    body = message.body
    out: dict[str, Any] = {"id": message.message_id, **extra}
    ctype = message.content_type or ""
    try:  # a body another face accepted may be JSON this one cannot send as JSON (a "\ud800"
        # escape, nesting past the parser's recursion): then it goes as text or base64
        if ctype.startswith("application/json"):
            value = json.loads(body)
            if json_problem(value, "body"):
                raise ValueError("not JSON that can be sent on")
            out["json"] = value
        else:
            out["body"] = body.decode()
    except (ValueError, UnicodeDecodeError, RecursionError):
        try:
            out["body"] = body.decode()
        except UnicodeDecodeError:
            out["body_base64"] = base64.b64encode(body).decode()
    out.update({
        "routing_key": message.routing_key, "exchange": message.exchange,
        "headers": jsonable(message.headers or {}), "content_type": message.content_type,
        "timestamp": message.timestamp, "priority": message.priority,
    })
    return out


