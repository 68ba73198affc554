"""Topic patterns: ``*`` matches exactly one word, ``#`` matches zero or more words.

Words are separated by ``.``; the empty routing key is one empty word, as in RabbitMQ. Pure
functions; the topic exchange caches results per routing key so the match runs once per key.
"""

from __future__ import annotations

from functools import lru_cache

from tidings.patterns import MAX_TOPIC_BYTES, validate_pattern

__all__ = ["MAX_TOPIC_BYTES", "topic_matches", "validate_pattern"]

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
