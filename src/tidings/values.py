"""What every face checks of a value it accepts, in one place per kind of value.

Whatever one face accepts, every other face must be able to deliver: a header that AMQP cannot
encode, a string that is not UTF-8 (a lone surrogate from a JSON ``"\\ud800"`` escape) or a
value nested deeper than a stack can walk would otherwise be accepted by one face and break
every consumer of the queue on another. The checks here are iterative, so no input can exhaust
the stack, and they return the reason (naming the field) rather than raising, so each face
answers in its own convention (HTTP 400, AMQP 406 or 502, ``InvalidArgumentError``).
"""

from __future__ import annotations

import base64
from typing import Any

#: Deepest nesting of tables and arrays accepted in headers (RabbitMQ's x-death is 3 deep).
MAX_HEADER_DEPTH = 16
#: Deepest nesting accepted in a JSON request body or event (arrays and objects).
MAX_JSON_DEPTH = 64
#: Largest message body any face accepts (RabbitMQ's ``max_message_size`` defaults to 128 MiB;
#: ours is lower because Python holds a body two or three times over while it is assembled and
#: stored). The same on every face: AMQP, HTTP and the embedded broker.
MAX_MESSAGE_BYTES = 64 * 2**20
_INT64 = (-(2**63), 2**63 - 1)


def text_problem(text: str, what: str) -> str | None:
    """Why ``text`` cannot be sent as UTF-8 (a lone surrogate), or None."""
    try:
        text.encode()
    except UnicodeEncodeError as e:
        return f"{what} holds a lone surrogate (U+{ord(text[e.start]):04X}), which is not UTF-8"
    return None


def printable(text: str) -> str:
    """``text`` safe to write anywhere: lone surrogates shown as ``\\udXXX`` escapes."""
    return text.encode(errors="backslashreplace").decode()


def json_problem(value: Any, what: str, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why a parsed JSON ``value`` cannot travel through every face, or None: nesting deeper
    than ``max_depth``, or a key or string holding a lone surrogate. Inner values are named
    by their path (``field 'headers.a'``)."""
    return _problem(value, what, max_depth, field_table=False)


def header_problem(headers: dict[str, Any], what: str = "headers") -> str | None:
    """Why ``headers`` cannot travel as an AMQP field table, or None: nesting beyond
    :data:`MAX_HEADER_DEPTH`, a key that is not a string of at most 255 bytes, an integer
    beyond 64 bits, a string that is not UTF-8."""
    return _problem(headers, what, MAX_HEADER_DEPTH, field_table=True)


def _problem(value: Any, what: str, max_depth: int, *, field_table: bool) -> str | None:
    """The one walk behind both checks: iterative, so no input can exhaust the stack; with
    ``field_table``, AMQP's rules for keys and integers too."""
    pending: list[tuple[Any, int, str]] = [(value, 1, "")]
    while pending:
        item, depth, path = pending.pop()
        name = f"field '{path}'" if path else what
        if isinstance(item, str):
            if problem := text_problem(item, name):
                return problem
        elif isinstance(item, dict | list | tuple):
            if depth > max_depth:
                return f"{name} is nested deeper than {max_depth} levels"
            if not isinstance(item, dict):
                pending.extend((inner, depth + 1, f"{path}[{i}]") for i, inner in enumerate(item))
                continue
            for key, inner in item.items():
                if field_table and (not isinstance(key, str) or
                                    len(key.encode(errors="replace")) > 255):
                    return f"{name} has a key that is not a string of at most 255 bytes"
                if isinstance(key, str) and (problem := text_problem(key, f"a key of {name}")):
                    return problem
                pending.append((inner, depth + 1, f"{path}.{key}" if path else str(key)))
        elif field_table and isinstance(item, int) and not isinstance(item, bool) and \
                not _INT64[0] <= item <= _INT64[1]:
            return f"{name} is an integer beyond 64 bits"
    return None


def jsonable(value: Any) -> Any:
    """``value`` as JSON can carry it: bytes as base64, text made printable, keys as text,
    anything else as its string."""
    if isinstance(value, dict):
        return {printable(k) if isinstance(k, str) else str(k): jsonable(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, str):
        return printable(value)  # (a header stored before it was checked at the edge)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return str(value)
