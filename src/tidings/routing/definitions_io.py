"""Export and import of a broker's definitions in RabbitMQ's definitions format.

``export_definitions`` writes the durable vhosts, exchanges, queues and bindings (what a
restart keeps), the policies and operator policies, and (given the users) users with their
password hashes and permissions, with RabbitMQ's field names: a file exported from RabbitMQ's
management API imports here, and one exported here imports into tidings again.

``import_definitions`` is all or nothing: :func:`plan_import` checks the whole document
against the broker as it is (field types, vhosts, queue arguments, exchange types, equivalence
with what exists, binding ends, policies, users' hashes and tags, permissions) before anything
is applied, and a document that fails changes nothing. What tidings does not take is skipped
with a line saying so: server-named ``amq.gen-`` queues (their names belong to connections that
are gone) and bindings to them, RabbitMQ's built-in ``amq.*`` exchanges, runtime parameters
(federation, shovels) and topic permissions. The result says what was applied and what was
skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from tidings.auth import UserStore, exported_hash, imported_hash
from tidings.errors import ConfigError, InvalidArgumentError, TidingsError
from tidings.patterns import validate_pattern
from tidings.routing.arguments import parse_queue_arguments
from tidings.routing.exchange import Exchange, freeze_arguments
from tidings.routing.front_door import FrontDoor, Policy, make_policy

#: Sections of RabbitMQ's format that tidings applies, in the order it applies them.
SECTIONS = ("users", "vhosts", "permissions", "policies", "operator_policies", "exchanges",
            "queues", "bindings")
#: Sections it reads and skips, with the reason given.
SKIPPED_SECTIONS = {
    "topic_permissions": "topic permissions are not enforced by tidings",
    "parameters": "runtime parameters (federation upstreams, shovels) have no effect in "
                  "tidings",
    "global_parameters": "global parameters (cluster_name) are not imported",
}
#: The fields read from each section's entries, their JSON types, and which are required.
_FIELDS: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "users": {"name": (str, True), "password_hash": (str, False),
              "hashing_algorithm": (str, False), "tags": ((str, list), False)},
    "vhosts": {"name": (str, True)},
    "permissions": {"user": (str, True), "vhost": (str, True), "configure": (str, True),
                    "write": (str, True), "read": (str, True)},
    "policies": {"name": (str, True), "vhost": (str, False), "pattern": (str, True),
                 "definition": (dict, True), "priority": (int, False),
                 "apply-to": (str, False)},
    "exchanges": {"name": (str, True), "vhost": (str, False), "type": (str, False),
                  "durable": (bool, False), "auto_delete": (bool, False),
                  "internal": (bool, False), "arguments": (dict, False)},
    "queues": {"name": (str, True), "vhost": (str, False), "durable": (bool, False),
               "auto_delete": (bool, False), "arguments": (dict, False)},
    "bindings": {"source": (str, True), "destination": (str, True), "vhost": (str, False),
                 "destination_type": (str, False), "routing_key": (str, False),
                 "arguments": (dict, False)},
}
_FIELDS["operator_policies"] = _FIELDS["policies"]
_TYPE_NAMES = {str: "a string", bool: "true or false", dict: "an object", int: "an integer"}
#: Server-named queues: RabbitMQ exports them, but their names belong to gone connections.
SERVER_NAMED = "amq.gen-"


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


def _policy_json(p: Policy) -> dict[str, Any]:
    return {"vhost": p.vhost, "name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
            "definition": p.definition, "priority": p.priority}


def export_definitions(broker: FrontDoor, vhosts: set[str] | None = None,
                       users: UserStore | None = None) -> dict[str, Any]:
    """The durable definitions of ``vhosts`` (None: all), skipping the built-in exchanges and
    exclusive queues, as RabbitMQ exports them; with ``users``, users and permissions too."""
    shown = [v for v in broker.vhost_names() if vhosts is None or v in vhosts]
    out: dict[str, Any] = {"product_name": "tidings", "rabbit_version": "3.10.0",
                           "rabbitmq_version": "3.10.0"}
    if users is not None:
        out["users"] = []
        for name in users.list_users():
            password_hash, algorithm = exported_hash(users.stored_hash(name))
            out["users"].append({"name": name, "password_hash": password_hash,
                                 "hashing_algorithm": algorithm,
                                 "tags": users.tags_of(name), "limits": {}})
        out["permissions"] = [{"user": name, "vhost": v, **perms}
                              for name in users.list_users()
                              for v, perms in users.permissions_of(name).items()
                              if vhosts is None or v in vhosts]
    out.update({
        "vhosts": [{"name": v} for v in shown],
        "policies": [_policy_json(p) for v in shown for p in broker.list_policies(v)],
        "operator_policies": [_policy_json(p) for v in shown
                              for p in broker.list_policies(v, operator=True)],
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
    })
    return out


@dataclass
class ImportPlan:
    """What an import will do: the checked entries of each section, and what it skips."""

    steps: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {s: [] for s in SECTIONS})
    policies: list[Policy] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _check_shape(data: Any) -> None:
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
                if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                    kinds = kind if isinstance(kind, tuple) else (kind,)
                    raise InvalidArgumentError(
                        f"{section}[{i}].{name} must be "
                        f"{' or '.join(_TYPE_NAMES.get(k, 'a list') for k in kinds)}")


def plan_import(broker: FrontDoor, data: Any, known_vhosts: Collection[str] = (),
                users: UserStore | None = None) -> ImportPlan:
    """Check a whole definitions document; :class:`InvalidArgumentError` names the first
    entry that cannot be applied. As RabbitMQ, an import never creates a vhost it was not
    asked to (``known_vhosts``: those that exist outside the broker, the user store's)."""
    _check_shape(data)
    plan = ImportPlan()
    for section, reason in SKIPPED_SECTIONS.items():
        if data.get(section):
            plan.skipped.append(f"{section}: {len(data[section])} skipped ({reason})")
    vhosts = {*broker.vhost_names(), *known_vhosts}
    declared = {str(v["name"]) for v in data.get("vhosts", [])}
    plan.steps["vhosts"] = list(data.get("vhosts", []))

    def vhost_of(section: str, i: int, entry: dict[str, Any]) -> str:
        vhost = str(entry.get("vhost", "/"))
        if vhost not in vhosts and vhost not in declared:
            raise InvalidArgumentError(f"{section}[{i}] is in vhost '{vhost}', which does not "
                                       f"exist and is not in the file's 'vhosts'")
        return vhost

    def entries(section: str) -> list[tuple[int, dict[str, Any], str]]:
        return [(i, e, vhost_of(section, i, e)) for i, e in enumerate(data.get(section, []))]

    _plan_users(plan, data, users, vhosts | declared)
    for section in ("policies", "operator_policies"):
        for i, p, vhost in entries(section):
            plan.policies.append(_entry(
                section, i, make_policy, vhost, p["name"], p["pattern"], p["definition"],
                p.get("priority", 0), p.get("apply-to", "all"),
                operator=section == "operator_policies"))
    exchanges = {(v, e.name): e for v in broker.vhost_names() for e in broker.list_exchanges(v)}
    kinds = {key: e.kind for key, e in exchanges.items()}
    kinds.update(_plan_exchanges(plan, entries("exchanges"), exchanges))
    queues = {(v, q.name): q for v in broker.vhost_names() for q in broker.list_queues(v)}
    known, skipped = _plan_queues(plan, entries("queues"), queues)
    _plan_bindings(plan, entries("bindings"), kinds, known, skipped)
    return plan


Entries = list[tuple[int, dict[str, Any], str]]


def _plan_exchanges(plan: ImportPlan, entries: Entries, exchanges: dict[tuple[str, str], Any]
                    ) -> dict[tuple[str, str], str]:
    """Check the file's exchanges; the kinds of those it names, by (vhost, name)."""
    kinds: dict[tuple[str, str], str] = {}
    for i, e, vhost in entries:
        name, kind = e["name"], e.get("type", "direct")
        if name.startswith("amq.") or not name:
            plan.skipped.append(f"exchanges[{i}] '{name}' in vhost '{vhost}': built in")
            continue
        args = e.get("arguments") or {}
        found = exchanges.get((vhost, name))
        if found is not None:
            _same("exchange", name, vhost, [
                ("type", found.kind, kind), ("durable", found.durable, e.get("durable", True)),
                ("auto_delete", found.auto_delete, e.get("auto_delete", False)),
                ("internal", found.internal, e.get("internal", False)),
                ("arguments", freeze_arguments(found.arguments), freeze_arguments(args))])
        else:
            _entry("exchanges", i, Exchange, name, kind, vhost, arguments=args)
        kinds[(vhost, name)] = kind
        plan.steps["exchanges"].append(e)
    return kinds


def _plan_queues(plan: ImportPlan, entries: Entries, queues: dict[tuple[str, str], Any]
                 ) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Check the file's queues; the queues known after the import, and those skipped."""
    known: set[tuple[str, str]] = set(queues)
    skipped: set[tuple[str, str]] = set()
    for i, q, vhost in entries:
        name, args = q["name"], q.get("arguments") or {}
        if name.startswith(SERVER_NAMED):
            plan.skipped.append(f"queues[{i}] '{name}' in vhost '{vhost}': a server-named "
                                f"queue (its connection is gone)")
            skipped.add((vhost, name))
            continue
        if len(name.encode()) > 255:
            raise InvalidArgumentError(f"queues[{i}]: name is longer than 255 bytes")
        options = _entry("queues", i, parse_queue_arguments, name, args)
        found = queues.get((vhost, name))
        if found is not None:
            _same("queue", name, vhost, [
                ("durable", found.durable, q.get("durable", True)),
                ("auto_delete", found.auto_delete, q.get("auto_delete", False)),
                *[(k, found.arguments.get(k), args.get(k))
                  for k in sorted(set(found.arguments) | set(args)) if k.startswith("x-")]])
        elif options.queue_type != "classic" and (not q.get("durable", True)
                                                   or q.get("auto_delete", False)):
            raise InvalidArgumentError(f"queues[{i}] '{name}': a {options.queue_type} queue "
                                       f"must be durable and not auto-delete")
        known.add((vhost, name))
        plan.steps["queues"].append(q)
    return known, skipped


def _plan_bindings(plan: ImportPlan, entries: Entries, kinds: dict[tuple[str, str], str],
                   queues: set[tuple[str, str]], skipped: set[tuple[str, str]]) -> None:
    for i, b, vhost in entries:
        to_exchange = b.get("destination_type", "queue") == "exchange"
        source, destination = b["source"], b["destination"]
        if not to_exchange and (vhost, destination) in skipped:
            plan.skipped.append(f"bindings[{i}] to '{destination}' in vhost '{vhost}': its "
                                f"queue is skipped")
            continue
        if b.get("destination_type", "queue") not in ("queue", "exchange"):
            raise InvalidArgumentError(f"bindings[{i}].destination_type must be queue or "
                                       f"exchange")
        if source == "":
            plan.skipped.append(f"bindings[{i}] from the default exchange: every queue has it")
            continue
        if (vhost, source) not in kinds:
            raise InvalidArgumentError(f"bindings[{i}]: no exchange '{source}' in vhost "
                                       f"'{vhost}', here or in the file")
        if (vhost, destination) not in (kinds if to_exchange else queues):
            raise InvalidArgumentError(
                f"bindings[{i}]: no {'exchange' if to_exchange else 'queue'} '{destination}' "
                f"in vhost '{vhost}', here or in the file")
        if kinds[(vhost, source)] == "topic":
            _entry("bindings", i, validate_pattern, b.get("routing_key", ""))
        plan.steps["bindings"].append(b)


def _plan_users(plan: ImportPlan, data: dict[str, Any], users: UserStore | None,
                vhosts: set[str]) -> None:
    if users is None:
        for section in ("users", "permissions"):
            if data.get(section):
                plan.skipped.append(f"{section}: {len(data[section])} skipped (no users file "
                                    f"here)")
        return
    for i, u in enumerate(data.get("users", [])):
        tags = u.get("tags", [])
        if isinstance(tags, str):  # RabbitMQ before 3.10 wrote "administrator,monitoring"
            tags = [t for t in tags.split(",") if t]
        stored = _entry("users", i, imported_hash, u.get("password_hash", ""),
                        u.get("hashing_algorithm"))
        plan.steps["users"].append({"name": u["name"], "stored": stored, "tags": tags})
    plan.steps["permissions"] = list(data.get("permissions", []))
    for i, p in enumerate(plan.steps["permissions"]):
        if p["vhost"] not in vhosts:
            raise InvalidArgumentError(f"permissions[{i}] is in vhost '{p['vhost']}', which "
                                       f"does not exist and is not in the file's 'vhosts'")


def _entry(section: str, i: int, check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``check(*args, **kwargs)``, with a refusal naming the entry."""
    try:
        return check(*args, **kwargs)
    except TidingsError as e:
        raise InvalidArgumentError(f"{section}[{i}]: {e}") from None


def _same(kind: str, name: str, vhost: str, pairs: list[tuple[str, Any, Any]]) -> None:
    for field_name, current, received in pairs:
        if current != received:
            raise InvalidArgumentError(
                f"{kind} '{name}' in vhost '{vhost}' exists with {field_name} {current!r}; "
                f"the file says {received!r}")


def import_definitions(broker: FrontDoor, data: Any, known_vhosts: Collection[str] = (),
                       users: UserStore | None = None) -> dict[str, Any]:
    """Check everything in ``data`` (:func:`plan_import`), then apply it; returns what was
    imported per section and the lines of what was skipped."""
    plan = plan_import(broker, data, known_vhosts, users)
    s = plan.steps
    if users is not None and (s["users"] or s["permissions"] or s["vhosts"]):
        try:
            users.import_users([(u["name"], u["stored"], u["tags"]) for u in s["users"]],
                               [(p["user"], p["vhost"], p["configure"], p["write"], p["read"])
                                for p in s["permissions"]],
                               [str(v["name"]) for v in s["vhosts"]])
        except ConfigError as e:
            raise InvalidArgumentError(str(e)) from None
    for v in s["vhosts"]:
        broker.declare_vhost(str(v["name"]))
    for p in plan.policies:
        broker.declare_vhost(p.vhost)
        broker.set_policy(p)
    for e in s["exchanges"]:
        broker.declare_vhost(e.get("vhost", "/"))
        broker.declare_exchange(e.get("vhost", "/"), e["name"], e.get("type", "direct"),
                                durable=e.get("durable", True),
                                auto_delete=e.get("auto_delete", False),
                                internal=e.get("internal", False),
                                arguments=e.get("arguments") or {})
    for q in s["queues"]:
        broker.declare_vhost(q.get("vhost", "/"))
        broker.declare_queue(q.get("vhost", "/"), q["name"], durable=q.get("durable", True),
                             auto_delete=q.get("auto_delete", False),
                             arguments=q.get("arguments") or {}, reserved_ok=True)
    for b in s["bindings"]:
        broker.bind(b.get("vhost", "/"), b["source"], b["destination"],
                    b.get("routing_key", ""), b.get("arguments") or {},
                    to_exchange=b.get("destination_type") == "exchange")
    applied = {section: len(s[section]) for section in SECTIONS}
    applied["policies"] = sum(not p.operator for p in plan.policies)
    applied["operator_policies"] = sum(p.operator for p in plan.policies)
    return {"imported": applied, "skipped": plan.skipped}
