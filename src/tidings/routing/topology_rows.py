"""The rows a store keeps for the durable topology (exchanges, queues, bindings, policies),
and back.

The store keeps them as opaque ``(kind, key) -> bytes``; this module owns the JSON shape.
"""

from __future__ import annotations

import json
from typing import Any

from tidings.codecs import json_tagged, json_untagged
from tidings.routing.exchange import Binding, Exchange
from tidings.routing.policies import Policy, make_policy

SEP = "\x1f"


def exchange_record(ex: Exchange) -> tuple[str, bytes]:
    data = {"kind": ex.kind, "auto_delete": ex.auto_delete, "internal": ex.internal,
            "arguments": json_tagged(ex.arguments)}
    return f"{ex.vhost}{SEP}{ex.name}", json.dumps(data).encode()


def queue_record(vhost: str, name: str, auto_delete: bool,
                 arguments: dict[str, Any]) -> tuple[str, bytes]:
    data = {"auto_delete": auto_delete, "arguments": json_tagged(arguments)}
    return f"{vhost}{SEP}{name}", json.dumps(data).encode()


def binding_record(vhost: str, b: Binding) -> tuple[str, bytes]:
    data = {"source": b.source, "destination": b.destination, "routing_key": b.routing_key,
            "arguments": json_tagged(b.args), "to_exchange": b.to_exchange}
    raw = json.dumps(data, sort_keys=True)
    return f"{vhost}{SEP}{raw}", raw.encode()


def policy_kind(operator: bool) -> str:
    return "operator-policy" if operator else "policy"


def policy_record(p: Policy) -> tuple[str, bytes]:
    data = {"pattern": p.pattern, "definition": p.definition, "priority": p.priority,
            "apply-to": p.apply_to}
    return f"{p.vhost}{SEP}{p.name}", json.dumps(data).encode()


def load_policy(kind: str, key: str, data: bytes) -> Policy:
    vhost, name = split_key(key)
    d = load(data)
    return make_policy(vhost, name, d["pattern"], d["definition"], d["priority"],
                       d["apply-to"], operator=kind == policy_kind(True))


def split_key(key: str) -> tuple[str, str]:
    vhost, _, name = key.partition(SEP)
    return vhost, name


def load(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("definition record is not a JSON object")
    if "arguments" in value:  # (byte arrays and timestamps are tagged in JSON)
        value["arguments"] = json_untagged(value["arguments"])
    return value
