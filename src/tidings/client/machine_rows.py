"""How a state machine's instances and events look to the broker: an instance as the row the
broker keeps (``transitions.instance_row``) and back, a message as the event a machine sees,
and the headers timers and dead letters carry. Shared by the runner and the replay."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from tidings.client.machine import Event, Instance, Machine, dump_data, load_data
from tidings.message import Delivery
from tidings.transitions import instance_row, read_row

D = TypeVar("D")
VHOST = "/"
#: The header that names a timer's topic (``timer:NAME``) on its message.
TOPIC_HEADER = "x-machine-topic"
KEY_HEADER = "x-machine-key"
REASON_HEADER = "x-machine-reason"
def encode_instance(instance: Instance[Any], now: float) -> bytes:
    return instance_row(instance.state, dump_data(instance.data), instance.version,
                        instance.history, instance.seen, instance.timers, instance.written_by,
                        now, instance.audit, instance.recent)


def decode_instance(machine: Machine[D], key: str, row: bytes) -> Instance[D]:
    d = read_row(row)
    return Instance(key, d["state"], load_data(machine.data_type, d["data"]), d["version"],
                    d["history"], list(d["seen"]), d["timers"], d["written_by"], d["audit"],
                    list(d["recent"]))


def event_of(delivery: Delivery) -> Event:
    m = delivery.message
    headers = m.headers or {}
    topic = str(headers.get(TOPIC_HEADER) or m.routing_key)
    body: Any = None
    if m.body:
        try:
            body = json.loads(m.body)
        except (ValueError, UnicodeDecodeError):
            body = m.body
    return Event(topic, m.message_id or f"seq-{delivery.delivery_tag}", body, dict(headers))
