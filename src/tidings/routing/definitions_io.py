"""Export and import of a broker's definitions in RabbitMQ's definitions format.

``export_definitions`` lists the durable vhosts, exchanges, queues and bindings (what a restart
keeps) with RabbitMQ's field names, so a file exported from RabbitMQ's management API imports
here and the other way round for these four sections (users and permissions live in
``users.json``; RabbitMQ's ``policies`` and ``parameters`` have no equivalent and are skipped
with a note). ``import_definitions`` declares each idempotently: what exists and is equivalent
is left alone; what differs is refused with the usual 406 naming the argument.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from tidings.errors import InvalidArgumentError
from tidings.routing.front_door import FrontDoor

#: Sections of RabbitMQ's format that tidings reads.
SECTIONS = ("vhosts", "exchanges", "queues", "bindings")
#: The fields read from each section's entries, their JSON types, and which are required.
_FIELDS: dict[str, dict[str, tuple[type, bool]]] = {
    "vhosts": {"name": (str, True)},
    "exchanges": {"name": (str, True), "vhost": (str, False), "type": (str, False),
                  "durable": (bool, False), "auto_delete": (bool, False),
                  "internal": (bool, False), "arguments": (dict, False)},
    "queues": {"name": (str, True), "vhost": (str, False), "durable": (bool, False),
               "auto_delete": (bool, False), "arguments": (dict, False)},
    "bindings": {"source": (str, True), "destination": (str, True), "vhost": (str, False),
                 "destination_type": (str, False), "routing_key": (str, False),
                 "arguments": (dict, False)},
}
_TYPE_NAMES: dict[type, str] = {str: "a string", bool: "true or false", dict: "an object"}


def _plain(value: Any) -> Any:
    """An argument as RabbitMQ's definitions JSON holds it: byte arrays as text, timestamps
    and decimals as strings."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


def export_definitions(broker: FrontDoor, vhosts: set[str] | None = None) -> dict[str, Any]:
    """The durable definitions of ``vhosts`` (None: all), skipping the built-in exchanges and
    exclusive queues, as RabbitMQ exports them."""
    shown = [v for v in broker.vhost_names() if vhosts is None or v in vhosts]
    return {
        "vhosts": [{"name": v} for v in shown],
        "exchanges": [
            {"name": e.name, "vhost": v, "type": e.kind, "durable": True,
             "auto_delete": e.auto_delete, "internal": e.internal, "arguments": _plain(e.arguments)}
            for v in shown for e in broker.list_exchanges(v)
            if e.durable and e.name and not e.name.startswith("amq.")
        ],
        "queues": [
            {"name": q.name, "vhost": v, "durable": True, "auto_delete": q.auto_delete,
             "arguments": _plain(q.arguments)}
            for v in shown for q in broker.list_queues(v) if q.durable and not q.exclusive
        ],
        "bindings": [
            {"source": b.source, "vhost": v, "destination": b.destination,
             "destination_type": "exchange" if b.to_exchange else "queue",
             "routing_key": b.routing_key, "arguments": _plain(b.arguments)}
            for v in shown for b in broker.list_bindings(v) if b.durable
        ],
    }


def check_definitions(data: Any, known_vhosts: Collection[str]) -> None:
    """Refuse (``InvalidArgumentError``, naming the entry and field) a definitions document
    whose sections are not lists of objects, whose fields have the wrong types, or that puts
    something in a vhost that neither exists (``known_vhosts``) nor is in its own ``vhosts``
    section: as RabbitMQ, an import never creates a vhost it was not asked to."""
    if not isinstance(data, dict):
        raise InvalidArgumentError("definitions must be a JSON object")
    for section, fields in _FIELDS.items():
        entries = data.get(section, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InvalidArgumentError(f"field '{section}' must be a list of objects")
        for i, entry in enumerate(entries):
            for name, (kind, required) in fields.items():
                value = entry.get(name)
                if value is None and not required:
                    continue
                if value is None:
                    raise InvalidArgumentError(f"{section}[{i}] lacks the field '{name}'")
                if not isinstance(value, kind):
                    raise InvalidArgumentError(f"{section}[{i}].{name} must be {_TYPE_NAMES[kind]}")
    declared = {v["name"] for v in data.get("vhosts", [])}
    for section in SECTIONS[1:]:
        for i, entry in enumerate(data.get(section, [])):
            vhost = entry.get("vhost", "/")
            if vhost not in declared and vhost not in known_vhosts:
                raise InvalidArgumentError(
                    f"{section}[{i}] is in vhost '{vhost}', which does not exist and is not "
                    f"in the file's 'vhosts'")


def import_definitions(broker: FrontDoor, data: dict[str, Any],
                       known_vhosts: Collection[str] = ()) -> dict[str, int]:
    """Declare everything in ``data`` (checked first, see :func:`check_definitions`: nothing
    is declared from a document that fails); returns how many of each section were applied.
    ``known_vhosts`` are vhosts that exist outside the broker (the user store's)."""
    check_definitions(data, {*broker.vhost_names(), *known_vhosts})
    counts = dict.fromkeys(SECTIONS, 0)
    for v in data.get("vhosts", []):
        broker.declare_vhost(str(v["name"]))
        counts["vhosts"] += 1
    for e in data.get("exchanges", []):
        broker.declare_vhost(e.get("vhost", "/"))
        broker.declare_exchange(e.get("vhost", "/"), e["name"], e.get("type", "direct"),
                                durable=e.get("durable", True),
                                auto_delete=e.get("auto_delete", False),
                                internal=e.get("internal", False),
                                arguments=e.get("arguments") or {})
        counts["exchanges"] += 1
    for q in data.get("queues", []):
        broker.declare_vhost(q.get("vhost", "/"))
        broker.declare_queue(q.get("vhost", "/"), q["name"], durable=q.get("durable", True),
                             auto_delete=q.get("auto_delete", False),
                             arguments=q.get("arguments") or {})
        counts["queues"] += 1
    for b in data.get("bindings", []):
        broker.bind(b.get("vhost", "/"), b["source"], b["destination"],
                    b.get("routing_key", ""), b.get("arguments") or {},
                    to_exchange=b.get("destination_type") == "exchange")
        counts["bindings"] += 1
    return counts
