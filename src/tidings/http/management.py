"""RabbitMQ management API field shapes, beside tidings' own fields.

Where the gateway's paths mirror RabbitMQ's management API (``/api/queues``,
``/api/queues/{vhost}``, ``/api/queues/{vhost}/{name}``, ``/api/vhosts``, ``/api/overview``),
its JSON carries the fields the tools people already run read: rabbitmqadmin, KEDA's RabbitMQ
scaler (``messages``, ``messages_ready``, ``message_stats.publish_details.rate``), Grafana's
RabbitMQ dashboards. tidings' own names (those of the Python API's statistics) stay alongside.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from tidings.resources import total_memory_mb
from tidings.routing.front_door import ExchangeInfo
from tidings.statistics import QueueStatistics

#: RabbitMQ's message_stats names for tidings' counters.
_MESSAGE_STATS = (("publish", "published"), ("deliver_get", "delivered"), ("ack", "acked"),
                  ("redeliver", "redelivered"))


#: The node's name in answers (RabbitMQ's ``rabbit@host``).
NODE = f"tidings@{platform.node()}"
#: The RabbitMQ management API whose fields and paths these answers follow.
MANAGEMENT_API_VERSION = "3.10.0"


#: RabbitMQ's default memory high watermark: 40 % of the machine's memory.
DEFAULT_WATERMARK = 0.4


def memory_limit_bytes(server: Mapping[str, float]) -> float:
    """The node's memory limit: the server's watermark, else RabbitMQ's default share."""
    return server.get("memory_limit_bytes") or total_memory_mb() * 2**20 * DEFAULT_WATERMARK


def message_stats(counts: dict[str, int], rates: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for theirs, ours in _MESSAGE_STATS:
        out[theirs] = counts[ours]
        out[f"{theirs}_details"] = {"rate": rates[ours]}
    return out


def totals(ready: int, unacked: int) -> dict[str, int]:
    return {"messages": ready + unacked, "messages_ready": ready,
            "messages_unacknowledged": unacked}


def exchange_json(e: ExchangeInfo) -> dict[str, Any]:
    """An exchange as RabbitMQ's management API lists it."""
    return {"vhost": e.vhost, "name": e.name, "type": e.kind,
            "durable": e.durable, "auto_delete": e.auto_delete, "internal": e.internal,
            "arguments": e.arguments, "policy": e.policy, "user_who_performed_action": ""}


def queue_fields(s: QueueStatistics, queue_type: str) -> dict[str, Any]:
    """Everything a queue listing says: tidings' statistics plus RabbitMQ's fields."""
    ours = asdict(s)
    return {
        **ours,
        **totals(s.ready, s.unacked),
        "message_bytes": s.ready_bytes, "message_bytes_ready": s.ready_bytes,
        "state": "running", "type": queue_type,
        "message_stats": message_stats(s.counts, s.rates),
    }
