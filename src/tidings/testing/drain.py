"""Waiting in a test until the work is done: :func:`drain`, what Dramatiq's
``StubBroker.join`` gives its users.

A test sends messages or publishes events, lets the client's handlers run (``await
client.start()``), and then needs to know when they are finished before it asserts. Sleeping
is slow and flaky; :func:`drain` returns as soon as every queue it watches has nothing ready,
nothing delayed (retries with backoff included) and nothing delivered but unsettled, and
raises ``TimeoutError`` naming what is left when that does not happen in time.

It reads the broker's own counts, which are exact on ``memory://`` and on a data directory
(the embedded broker); over a remote engine it is as exact as that engine's statistics.
"""

from __future__ import annotations

import asyncio

from tidings.client.client import Client
from tidings.errors import InvalidArgumentError

#: How often the counts are read while waiting.
POLL_S = 0.005


async def drain(client: Client, *queues: str, timeout_s: float = 10.0) -> None:
    """Wait until ``queues`` (by default every queue the client's subscriptions, handlers
    and tasks consume, once ``client.start()`` has run) hold no ready, delayed or unacked
    message. A message dead-lettered on the way counts as done (it waits in ``<queue>.dead``,
    which is not watched unless named)."""
    watched = set(queues) or {s.queue for s in client.handlers.subscribers if s.queue}
    if not watched:
        raise InvalidArgumentError(
            "drain() has no queue to watch: name the queues, or start the client's "
            "subscriptions first (await client.start())")
    deadline = asyncio.get_running_loop().time() + timeout_s
    settled_once = False
    while True:
        left = await _left(client, watched)
        if not left:
            if settled_once:  # twice in a row: a handler's follow-up work is visible too
                return
            settled_once = True
        else:
            settled_once = False
        if asyncio.get_running_loop().time() >= deadline:
            raise TimeoutError(f"not drained within {timeout_s:g} s: " + "; ".join(
                f"'{name}' has {what}" for name, what in sorted(left.items())))
        await asyncio.sleep(POLL_S)


async def _left(client: Client, watched: set[str]) -> dict[str, str]:
    """What each watched queue still holds, for those that hold anything."""
    statistics = await client.statistics()
    found = {q.name: q for q in statistics.queues if q.name in watched}
    left = {}
    for name in watched:
        q = found.get(name)
        if q is None:
            continue  # (not declared yet, or a private queue already gone: nothing waits)
        if q.ready or q.delayed or q.unacked:
            left[name] = f"{q.ready} ready, {q.delayed} delayed, {q.unacked} unacked"
    return left
