"""Queue statistics from a broker's management HTTP API, for the ``amqp://`` transport.

``GET /api/queues/{vhost}`` is RabbitMQ's management API, and tidings serve's gateway answers
the same path with RabbitMQ's fields plus its own (waiting and processing time percentiles,
delayed messages, backlog age). One reader serves both: tidings' fields when they are there,
RabbitMQ's otherwise. The standard library's HTTP client runs in a thread, so no dependency
is added for a call made once per ``statistics()``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from tidings.errors import BrokenResourceError
from tidings.statistics import LatencySummary, QueueStatistics

#: RabbitMQ's message_stats names and the counters tidings calls them.
_COUNTERS = (("publish", "published"), ("deliver_get", "delivered"), ("ack", "acked"),
             ("redeliver", "redelivered"))
NO_LATENCY = LatencySummary(0, None, None, None, None)
TIMEOUT_S = 10.0


def _get(url: str) -> Any:
    parts = urlsplit(url)
    bare = urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""),
                       parts.path, parts.query, ""))
    request = urllib.request.Request(bare)
    if parts.username is not None:
        pair = f"{parts.username}:{parts.password or ''}".encode()
        request.add_header("Authorization", f"Basic {base64.b64encode(pair).decode()}")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        return json.load(response)


async def queue_statistics(management_url: str, vhost: str) -> list[QueueStatistics]:
    """Every queue of ``vhost`` the management API lists."""
    url = f"{management_url.rstrip('/')}/api/queues/{quote(vhost, safe='')}"
    try:
        listed = await asyncio.to_thread(_get, url)
    except (OSError, ValueError) as e:
        raise BrokenResourceError(f"management API at {urlsplit(url).hostname} did not answer "
                                  f"{urlsplit(url).path}: {e}") from e
    return [_queue(q, vhost) for q in listed if isinstance(q, dict)]


def _queue(q: dict[str, Any], vhost: str) -> QueueStatistics:
    if "ready" in q and "waiting_time" in q:  # tidings serve: its own statistics
        return QueueStatistics(**{
            **q_fields(q), "waiting_time": LatencySummary(**q["waiting_time"]),
            "processing_time": LatencySummary(**q["processing_time"])})
    stats = q.get("message_stats") or {}
    return QueueStatistics(
        vhost=str(q.get("vhost", vhost)), name=str(q.get("name", "")),
        ready=int(q.get("messages_ready", 0)), unacked=int(q.get("messages_unacknowledged", 0)),
        delayed=0, consumers=int(q.get("consumers", 0)),
        ready_bytes=int(q.get("message_bytes_ready", 0)), oldest_ready_age_s=None,
        counts={ours: int(stats.get(theirs, 0)) for theirs, ours in _COUNTERS},
        rates={ours: float((stats.get(f"{theirs}_details") or {}).get("rate", 0.0))
               for theirs, ours in _COUNTERS},
        waiting_time=NO_LATENCY, processing_time=NO_LATENCY)


def q_fields(q: dict[str, Any]) -> dict[str, Any]:
    names = QueueStatistics.__dataclass_fields__
    return {k: v for k, v in q.items() if k in names and k not in ("waiting_time",
                                                                   "processing_time")}
