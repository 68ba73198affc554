"""Dead letters: where they wait, the copy a DLX receives, and how one is replayed.

The one naming rule of the client API lives here: a queue's dead letters wait in
``<queue>.dead`` (:func:`dead_letter_queue`); every face and transport asks this module.

``x-death`` is a list of tables, newest first, one per (queue, reason) with a ``count``;
``x-first-death-*`` and ``x-last-death-*`` name the first and latest deaths. The dead letter
loses its ``expiration`` (kept as ``original-expiration``) so it does not expire again at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

from tidings.message import Message

H = TypeVar("H")


def dead_letter_message(message: Message, queue: str, reason: str, now: float,
                        routing_key: str | None) -> Message:
    headers: dict[str, Any] = dict(message.headers or {})
    deaths: list[dict[str, Any]] = [dict(d) for d in headers.get("x-death") or []]
    for i, death in enumerate(deaths):
        if death.get("queue") == queue and death.get("reason") == reason:
            death["count"] = int(death.get("count", 1)) + 1
            death["time"] = int(now)
            deaths.insert(0, deaths.pop(i))
            break
    else:
        death = {
            "count": 1,
            "reason": reason,
            "queue": queue,
            "time": int(now),
            "exchange": message.exchange,
            "routing-keys": [message.routing_key],
        }
        if message.expiration is not None:
            death["original-expiration"] = message.expiration
        deaths.insert(0, death)
    headers["x-death"] = deaths
    if "x-first-death-reason" not in headers:
        headers["x-first-death-reason"] = reason
        headers["x-first-death-queue"] = queue
        headers["x-first-death-exchange"] = message.exchange
    headers["x-last-death-reason"] = reason
    headers["x-last-death-queue"] = queue
    headers["x-last-death-exchange"] = message.exchange
    return replace(
        message,
        headers=headers,
        expiration=None,
        routing_key=routing_key if routing_key is not None else message.routing_key,
    )


def dead_letter_queue(queue: str) -> str:
    """Where the client API keeps a queue's dead letters: ``<queue>.dead``."""
    return f"{queue}.dead"


def revive(message: Message, routing_key: str) -> Message:
    """A dead letter made ready to replay: its broker (``x-``) headers, the death history
    included, are dropped and it is addressed to ``routing_key``."""
    message.headers = {k: v for k, v in (message.headers or {}).items()
                       if not k.startswith("x-")} or None
    message.routing_key = routing_key
    return message


async def replay_into(queue: str, ids: set[str] | None,
                      entries: AsyncIterable[tuple[Message, H]],
                      restore: Callable[[H, str, Message], Awaitable[None]]) -> int:
    """Replay the dead letters ``entries`` yields (each with what its transport needs to
    remove it), all or those whose id is in ``ids``: ``restore(handle, queue, copy)`` puts
    the revived copy into ``queue`` and removes the dead letter. Returns how many moved."""
    moved = 0
    async for message, handle in entries:
        if ids is None or message.message_id in ids:
            await restore(handle, queue, revive(message, queue))
            moved += 1
    return moved
