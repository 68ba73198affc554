"""``tidings keys``: what a data directory's store is encrypted under, rotation and rewriting.

These work on a directory no process holds (they take its lock): stop the server first.

- :func:`status`: the data keys, the master key wrapping each, and how many messages and
  definitions are sealed under each data key or still plain.
- :func:`rotate`: every data key rewrapped by the keyring's active master key, and a new data
  key for the writes to come; no record is rewritten, so it takes a moment whatever the size.
  Afterwards the old master keys can leave the keyring.
- :func:`rewrite`: every record not sealed under the newest data key (the plain ones written
  before encryption was on, those under older data keys) sealed again under it; then the
  file is vacuumed and its write-ahead log truncated, so no old bytes stay on disk.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidings.storage.keys import Keyring, Sealer, SealError, data_key_of
from tidings.storage.lock import DirectoryLock
from tidings.storage.sqlite import (
    DB_NAME,
    add_data_key,
    definition_place,
    message_place,
    read_data_keys,
    schema,
)


@dataclass
class KeyStatus:
    #: Data key number -> the master key id wrapping it.
    data_keys: dict[int, str] = field(default_factory=dict)
    #: Records per data key number (None: plain), for messages and for definitions.
    messages: dict[int | None, int] = field(default_factory=dict)
    definitions: dict[int | None, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        def named(counts: dict[int | None, int]) -> dict[str, int]:
            return {("plain" if k is None else f"data key {k}"): v for k, v in counts.items()}

        return {"data_keys": {str(k): v for k, v in self.data_keys.items()},
                "messages": named(self.messages), "definitions": named(self.definitions)}


def _open(directory: Path) -> tuple[sqlite3.Connection, DirectoryLock]:
    lock = DirectoryLock(directory)
    conn = sqlite3.connect(directory / DB_NAME, isolation_level=None)
    conn.executescript(schema())
    return conn, lock


def status(directory: Path) -> KeyStatus:
    conn, lock = _open(directory)
    try:
        found = KeyStatus({n: master for n, master, _ in read_data_keys(conn)})
        for table, counts in (("messages", found.messages),
                              ("definitions", found.definitions)):
            for (data,) in conn.execute(f"SELECT substr(data, 1, 3) FROM {table}"):
                number = data_key_of(bytes(data))
                counts[number] = counts.get(number, 0) + 1
        return found
    finally:
        conn.close()
        lock.release()


def rotate(directory: Path, keyring: Keyring) -> tuple[int, int]:
    """Rewrap every data key by the active master key and add a new one; returns (data keys
    rewrapped, the new data key's number)."""
    conn, lock = _open(directory)
    try:
        conn.execute("BEGIN IMMEDIATE")
        rows = read_data_keys(conn)
        for number, master, wrapped in rows:
            key = keyring.unwrap(number, master, wrapped)
            active, rewrapped = keyring.wrap(number, key)
            conn.execute("UPDATE data_keys SET master = ?, wrapped = ? WHERE number = ?",
                         (active, rewrapped, number))
        number, _ = add_data_key(conn, keyring)
        conn.execute("COMMIT")
        return len(rows), number
    finally:
        conn.close()
        lock.release()


def rewrite(directory: Path, keyring: Keyring) -> tuple[int, int]:
    """Seal every record not under the newest data key with it; returns how many, and how
    many did not open (damaged: left as they are)."""
    conn, lock = _open(directory)
    try:
        conn.execute("BEGIN IMMEDIATE")
        rows = read_data_keys(conn)
        keys = {n: keyring.unwrap(n, m, w) for n, m, w in rows}
        if not keys:
            number, key = add_data_key(conn, keyring)
            keys[number] = key
        sealer = Sealer(keys, max(keys))
        done = damaged = 0
        tables = (("messages", "SELECT seq, queue, data FROM messages",
                   "UPDATE messages SET data = ? WHERE seq = ? AND queue = ?", message_place),
                  ("definitions", "SELECT key, kind, data FROM definitions",
                   "UPDATE definitions SET data = ? WHERE key = ? AND kind = ?",
                   lambda kind, key: definition_place(kind, key)))
        for _, select, update, place_of in tables:
            for ident, group, data in conn.execute(select).fetchall():
                if data_key_of(bytes(data)) == sealer.current:
                    continue
                place = place_of(group, ident)
                try:
                    plain = sealer.open(bytes(data), place)
                except SealError:
                    damaged += 1
                    continue
                conn.execute(update, (sealer.seal(plain, place), ident, group))
                done += 1
        conn.execute("COMMIT")
        # the old bytes leave the file's free pages and the write-ahead log
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return done, damaged
    finally:
        conn.close()
        lock.release()
