"""The topic pattern language, on the ground floor: ``*`` matches exactly one word, ``#``
zero or more; words are separated by ``.`` and the empty routing key is one empty word, as in
RabbitMQ.

Every face checks a pattern before it reaches the broker (the client when a handler is
decorated, the HTTP gateway for a stream), and the topic exchange, the gateway's event stream
and the NATS and Redis transports all match with :func:`topic_matches`, so both live here.
"""

from __future__ import annotations

from functools import lru_cache

from tidings.errors import InvalidArgumentError

#: The topic exchange every event is published to (on every broker the client API uses).
EVENTS_EXCHANGE = "tidings.events"

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


@lru_cache(maxsize=4096)
def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split("."))


def topic_matches(pattern: str, routing_key: str) -> bool:
    """True when ``routing_key`` matches ``pattern``."""
    p, k = _words(pattern), _words(routing_key)
    # reachable[j]: pattern prefix consumed so far can match key prefix of length j
    reachable = [True] + [False] * len(k)
    for word in p:
        if word == "#":
            seen = False
            for j in range(len(k) + 1):
                seen = seen or reachable[j]
                reachable[j] = seen
        else:
            nxt = [False] * (len(k) + 1)
            for j in range(len(k)):
                if reachable[j] and (word == "*" or word == k[j]):
                    nxt[j + 1] = True
            reachable = nxt
    return reachable[len(k)]
