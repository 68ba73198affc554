"""A state machine's transition as the client hands it to the broker: one step to commit,
and the instance row it writes.

Plain data shared by the client (which builds it from a machine's step) and the broker (which
applies it, ``routing/machines.py``): the instance's new row, the messages the transition
sends, the timers it arms. The event's acknowledgement goes with it. (A cancelled timer is
not looked up among the delayed messages: it is dropped unapplied when it comes.) The row is
JSON in one shape (:func:`instance_row`), which the HTTP API and the CLI read too.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from tidings.message import Message
from tidings.message_batches import pack_publishes, unpack_publishes


@dataclass(frozen=True, slots=True)
class TransitionCommit:
    vhost: str
    machine: str
    key: str
    #: The instance's new row (None: the instance is not changed, as for a dead letter).
    row: bytes | None
    #: Messages it sends: (exchange, message).
    messages: tuple[tuple[str, Message], ...] = ()
    #: Timers it arms: (queue, message, delay in ms); the message's id names the timer.
    timers: tuple[tuple[str, Message, int], ...] = ()
    #: The instance's version the transition was computed from (0: none yet); the broker
    #: refuses the commit if the instance moved on meanwhile (None: no check).
    expected_version: int | None = None
    #: The version the row carries after the commit.
    version: int | None = None
    #: The transition's name (``source -> target on topic``) for the broker's numbers; with
    #: ``outcome``: "applied", "dead_lettered", or "failed" (only counted: its handler raised).
    transition: str = ""
    outcome: str = "applied"
    #: How long the handler ran, ms (counted with the transition).
    handler_ms: float | None = None


def machine_queue(machine: str) -> str:
    """The queue of a state machine's events (``machine.NAME``): every face checks a
    machine's permissions on it."""
    return f"machine.{machine}"


def transition_name(source: str, target: str, topic: str) -> str:
    """How a transition is named in numbers and pictures: ``source -> target on topic``."""
    return f"{source} -> {target} on {topic}"


#: What a commit can say happened.
OUTCOMES = ("applied", "dead_lettered", "failed")


#: Over AMQP (tidings serve's extension, ``amqp/machines.py``): the server's capability, the
#: operations (routing keys on ``amq.tidings.control``) and their headers.
CAPABILITY = "tidings.machines"
COMMIT, FIND, LIST, DESCRIBE = ("machine-commit", "machine-find", "machine-list",
                                "machine-describe")
FOUND_HEADER, AFTER_HEADER, LIMIT_HEADER = "x-found", "x-after", "x-limit"
TAG_HEADER = "x-delivery-tag"
MACHINE_HEADER, KEY_HEADER = "x-machine", "x-key"
EXPECTED_HEADER, VERSION_HEADER = "x-expected-version", "x-version"
EXCHANGES_HEADER, DELAYS_HEADER = "x-exchanges", "x-delays"
TRANSITION_HEADER, OUTCOME_HEADER, HANDLER_HEADER = "x-transition", "x-outcome", "x-handler-us"
_LENGTH = struct.Struct(">I")
_NO_ROW = 0xFFFFFFFF


def pack_commit(c: TransitionCommit) -> tuple[dict[str, Any], bytes]:
    """``c`` as the headers and body of a ``machine-commit``: the row (4-byte length, or
    0xFFFFFFFF for none), then its messages and timers packed as a batch's publishes; the
    headers name the messages' exchanges and the timers' delays, in that order."""
    headers: dict[str, Any] = {MACHINE_HEADER: c.machine, KEY_HEADER: c.key,
                               EXCHANGES_HEADER: [e for e, _ in c.messages],
                               DELAYS_HEADER: [d for _, _, d in c.timers]}
    if c.expected_version is not None:
        headers[EXPECTED_HEADER] = c.expected_version
    if c.version is not None:
        headers[VERSION_HEADER] = c.version
    if c.transition:
        headers[TRANSITION_HEADER] = c.transition
    if c.outcome != "applied":
        headers[OUTCOME_HEADER] = c.outcome
    if c.handler_ms is not None:
        headers[HANDLER_HEADER] = int(c.handler_ms * 1000)
    row = c.row
    head = _LENGTH.pack(_NO_ROW) if row is None else _LENGTH.pack(len(row)) + row
    entries = [(m.routing_key, m) for _, m in c.messages]
    entries += [(queue, m) for queue, m, _ in c.timers]
    return headers, head + pack_publishes(entries)


def unpack_commit(vhost: str, headers: dict[str, Any], body: bytes) -> TransitionCommit:
    """A ``machine-commit``'s transition; ValueError unless headers and body agree whole."""
    machine, key = _text(headers, MACHINE_HEADER), _text(headers, KEY_HEADER)
    exchanges = [_as_text(e, EXCHANGES_HEADER) for e in _list(headers, EXCHANGES_HEADER)]
    delays = [_count(d, DELAYS_HEADER) for d in _list(headers, DELAYS_HEADER)]
    if len(body) < _LENGTH.size:
        raise ValueError("the body ends before the row's length")
    (size,) = _LENGTH.unpack_from(body)
    row: bytes | None = None
    pos = _LENGTH.size
    if size != _NO_ROW:
        if pos + size > len(body):
            raise ValueError("the row runs past the body")
        row, pos = bytes(body[pos:pos + size]), pos + size
    entries = unpack_publishes(bytes(body[pos:]))
    if len(entries) != len(exchanges) + len(delays):
        raise ValueError(f"{len(entries)} messages packed, {len(exchanges)} exchanges and "
                         f"{len(delays)} delays named")
    n = len(exchanges)
    outcome = str(headers.get(OUTCOME_HEADER) or "applied")
    if outcome not in OUTCOMES:
        raise ValueError(f"header '{OUTCOME_HEADER}' must be one of {', '.join(OUTCOMES)}")
    handler_us = _optional_count(headers, HANDLER_HEADER)
    return TransitionCommit(
        vhost, machine, key, row,
        tuple((exchanges[i], m) for i, (_, m) in enumerate(entries[:n])),
        tuple((rk, m, delays[i]) for i, (rk, m) in enumerate(entries[n:])),
        expected_version=_optional_count(headers, EXPECTED_HEADER),
        version=_optional_count(headers, VERSION_HEADER),
        transition=_as_text(headers.get(TRANSITION_HEADER, ""), TRANSITION_HEADER)[:255],
        outcome=outcome, handler_ms=None if handler_us is None else handler_us / 1000)


def pack_instances(rows: list[tuple[str, bytes]]) -> bytes:
    """Instance rows as one body: per row its key and row, each with a 4-byte length."""
    parts: list[bytes] = []
    for key, row in rows:
        raw = key.encode()
        parts += [_LENGTH.pack(len(raw)), raw, _LENGTH.pack(len(row)), row]
    return b"".join(parts)


def unpack_instances(body: bytes) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(body):
        parts: list[bytes] = []
        for _ in range(2):
            if pos + _LENGTH.size > len(body):
                raise ValueError("instance rows cut short")
            (size,) = _LENGTH.unpack_from(body, pos)
            pos += _LENGTH.size
            if pos + size > len(body):
                raise ValueError("instance rows cut short")
            parts.append(bytes(body[pos:pos + size]))
            pos += size
        out.append((parts[0].decode(), parts[1]))
    return out


def _as_text(value: Any, name: str) -> str:
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode()
    if not isinstance(value, str):
        raise ValueError(f"header '{name}' must hold text")
    return value


def _text(headers: dict[str, Any], name: str) -> str:
    return _as_text(headers.get(name), name)


def _list(headers: dict[str, Any], name: str) -> list[Any]:
    value = headers.get(name, [])
    if not isinstance(value, list):
        raise ValueError(f"header '{name}' must be a list")
    return value


def _count(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"header '{name}' must hold counts >= 0")
    return value


def _optional_count(headers: dict[str, Any], name: str) -> int | None:
    value = headers.get(name)
    return None if value is None else _count(value, name)


#: Operator moves an instance remembers (the newest).
AUDIT_KEPT = 20


def instance_row(state: str, data: Any, version: int, history: int, seen: list[str],
                 timers: dict[str, tuple[str, str]], written_by: int,
                 updated_at: float, audit: list[dict[str, Any]] | None = None,
                 recent: list[dict[str, Any]] | None = None) -> bytes:
    """An instance as the broker keeps it: JSON the client writes and every face reads
    (``updated_at``: when it entered its state, epoch seconds; ``audit``: operator moves;
    ``recent``: its last transitions)."""
    return json.dumps({"state": state, "data": data, "version": version, "history": history,
                       "seen": seen, "timers": {k: list(v) for k, v in timers.items()},
                       "written_by": written_by, "updated_at": round(updated_at, 3),
                       "audit": (audit or [])[-AUDIT_KEPT:], "recent": recent or []},
                      separators=(",", ":")).encode()


def moved_row(row: bytes, state: str, by: str, reason: str, now: float) -> tuple[bytes, int]:
    """An operator's move of a stuck instance to ``state``: a new version, its timers
    disarmed, and an audit record (who, when, from, to, why). Returns the row and its
    version."""
    d = read_row(row)
    audit = [*d.get("audit", []), {"at": round(now, 3), "by": by, "from": d["state"],
                                   "to": state, "reason": reason}]
    version = int(d["version"]) + 1
    return instance_row(state, d["data"], version, int(d["history"]), list(d["seen"]), {},
                        int(d["written_by"]), now, audit, d["recent"]), version


def read_row(row: bytes) -> dict[str, Any]:
    """An instance row's fields (``timers`` as name -> (id, state))."""
    d = json.loads(row)
    if not isinstance(d, dict) or "state" not in d:
        raise ValueError("not an instance row")
    d["timers"] = {k: (v[0], v[1]) for k, v in d.get("timers", {}).items()}
    d.setdefault("updated_at", 0.0)
    d.setdefault("audit", [])
    d.setdefault("recent", [])
    return d  # type: ignore[no-any-return]


def state_numbers(rows: list[dict[str, Any]], now: float) -> dict[str, dict[str, Any]]:
    """Per state: its instances, and how long the one longest in it has been there (s)."""
    out: dict[str, dict[str, Any]] = {}
    for d in rows:
        entry = out.setdefault(d["state"], {"instances": 0, "oldest_s": 0.0})
        entry["instances"] += 1
        if d["updated_at"]:
            entry["oldest_s"] = round(max(entry["oldest_s"], now - d["updated_at"]), 3)
    return dict(sorted(out.items()))
