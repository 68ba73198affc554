"""The topic pattern language's syntax, on the ground floor: ``*`` and ``#`` as whole words.

Every face checks a pattern before it reaches the broker (the client when a handler is
decorated, the HTTP gateway for a stream), so the syntax lives here; matching is the router's
job (:mod:`tidings.routing.topic`).
"""

from __future__ import annotations

from tidings.errors import InvalidArgumentError

#: Longest pattern or key accepted (AMQP short strings are at most 255 bytes).
MAX_TOPIC_BYTES = 255


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid topic pattern, else raise InvalidArgumentError."""
    if len(pattern.encode()) > MAX_TOPIC_BYTES:
        raise InvalidArgumentError(f"topic pattern '{pattern[:40]}...' is longer than 255 bytes")
    for word in pattern.split("."):
        if word not in ("*", "#") and ("*" in word or "#" in word):
            raise InvalidArgumentError(
                f"bad topic pattern '{pattern}': '*' and '#' must be whole words"
            )
    return pattern
