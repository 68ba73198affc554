"""Quarantine: stored records that cannot be read are moved aside, never allowed to stop a queue.

The record codec round-trips every value a face accepts, so a record should always decode; this
is the defence in depth for the one that does not (a bug, a damaged file, a record from a
future version). Wherever a record is read (recovery, paging, browsing, delayed buckets) it is
decoded through :func:`decode_or_quarantine`: an unreadable one is removed from its queue and
kept, bytes untouched, as a definition of kind ``quarantine``, in the same loop turn and so in
the same transaction. It is logged once with its queue and position; the operator lists and
exports what is there (``tidings quarantine``, ``GET /api/quarantine``) and drops it when done.

Kept as definitions because the store already keeps opaque bytes by ``(kind, key)`` durably;
the store needs no new operation and knows nothing of what a quarantined record is.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass

from tidings.codecs import RecordError, decode_record
from tidings.message import Record
from tidings.storage.base import Store
from tidings.values import header_problem

log = logging.getLogger("tidings.quarantine")

KIND = "quarantine"
#: How the store key of a quarantined definition row starts (then its kind and key).
DEFINITION = "\x00definition:"
_LEN = struct.Struct(">I")
_SEP = "\x1d"


@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    """One record moved aside: where it was, why, when (wall-clock seconds), and its bytes."""

    id: str
    store_key: str
    seq: int
    reason: str
    quarantined_at: float
    data: bytes

    @property
    def vhost(self) -> str:
        if self.store_key.startswith(DEFINITION):
            return ""
        return self.store_key.partition("\x1f")[0] if "\x1f" in self.store_key else ""

    @property
    def queue(self) -> str:
        """The queue it came from; for a definition row, ``definition <kind> <key>``."""
        if self.store_key.startswith(DEFINITION):
            kind, _, key = self.store_key[len(DEFINITION):].partition(_SEP)
            return f"definition {_definition(kind, key)}"
        return self.store_key.partition("\x1f")[2] if "\x1f" in self.store_key \
            else self.store_key


def decode_or_quarantine(store: Store, key: str, seq: int, data: bytes,
                         now: float) -> Record | None:
    """The record, or None after moving it to the quarantine (it is then gone from ``key``).
    A record whose headers no face could deliver (a lone surrogate, stored before such input
    was refused at the edge) is quarantined too: delivered, it closed every AMQP consumer."""
    try:
        record = decode_record(data)
    except RecordError as e:
        put(store, key, seq, data, str(e), now)
        return None
    headers = record.message.headers
    if headers and (problem := header_problem(headers)):
        put(store, key, seq, data, f"its headers cannot be delivered: {problem}", now)
        return None
    return record


def put(store: Store, key: str, seq: int, data: bytes, reason: str, now: float) -> None:
    meta = json.dumps({"key": key, "seq": seq, "reason": reason, "at": now}).encode()
    store.put_definition(KIND, f"{key}{_SEP}{seq}", _LEN.pack(len(meta)) + meta + data)
    store.remove(key, seq)
    log.error("record %d of %s could not be read and was moved to the quarantine: %s",
              seq, _describe(key), reason)


def put_definition(store: Store, kind: str, key: str, data: bytes, reason: str,
                   now: float) -> None:
    """Move a definition row that cannot be applied (damaged, or from another version) to the
    quarantine, with the reason, in the same transaction; logged once."""
    where = f"{DEFINITION}{kind}{_SEP}{key}"
    meta = json.dumps({"key": where, "seq": -1, "reason": reason, "at": now}).encode()
    store.put_definition(KIND, where, _LEN.pack(len(meta)) + meta + data)
    store.delete_definition(kind, key)
    log.error("the definition of %s could not be read and was moved to the quarantine: %s",
              _definition(kind, key), reason)


def records(store: Store) -> list[QuarantinedRecord]:
    """What the quarantine holds, in the order records were stored."""
    out = []
    for ident, raw in store.definitions(KIND):
        (n,) = _LEN.unpack_from(raw)
        meta = json.loads(raw[4 : 4 + n])
        out.append(QuarantinedRecord(ident, meta["key"], meta["seq"], meta["reason"],
                                     meta["at"], bytes(raw[4 + n :])))
    return sorted(out, key=lambda r: r.seq)


def drop(store: Store, ident: str) -> None:
    store.delete_definition(KIND, ident)


def _definition(kind: str, key: str) -> str:
    """``queue 'jobs' in vhost '/'`` for a definition row's kind and key."""
    vhost, sep, name = key.partition("\x1f")
    return f"{kind} '{name}' in vhost '{vhost}'" if sep else f"{kind} '{key}'"


def _describe(key: str) -> str:
    vhost, sep, queue = key.partition("\x1f")
    if not sep:
        return "the delayed messages" if key.startswith("\x00delayed") else f"store key {key!r}"
    return f"queue '{queue}' in vhost '{vhost}'"
