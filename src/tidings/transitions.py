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
from dataclasses import dataclass
from typing import Any

from tidings.message import Message


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


#: Operator moves an instance remembers (the newest).
AUDIT_KEPT = 20


def instance_row(state: str, data: Any, version: int, history: int, seen: list[str],
                 timers: dict[str, tuple[str, str]], written_by: int,
                 updated_at: float, audit: list[dict[str, Any]] | None = None) -> bytes:
    """An instance as the broker keeps it: JSON the client writes and every face reads
    (``updated_at``: when it entered its state, epoch seconds; ``audit``: operator moves)."""
    return json.dumps({"state": state, "data": data, "version": version, "history": history,
                       "seen": seen, "timers": {k: list(v) for k, v in timers.items()},
                       "written_by": written_by, "updated_at": round(updated_at, 3),
                       "audit": (audit or [])[-AUDIT_KEPT:]},
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
                        int(d["written_by"]), now, audit), version


def read_row(row: bytes) -> dict[str, Any]:
    """An instance row's fields (``timers`` as name -> (id, state))."""
    d = json.loads(row)
    if not isinstance(d, dict) or "state" not in d:
        raise ValueError("not an instance row")
    d["timers"] = {k: (v[0], v[1]) for k, v in d.get("timers", {}).items()}
    d.setdefault("updated_at", 0.0)
    d.setdefault("audit", [])
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
