"""``tidings keys``: what a data directory is encrypted under, rotation and rewriting.

The queue store (``tidings.sqlite3``) keeps its data keys in a table; each stream segment
keeps its own beside it (``storage/segment_keys.py``).

- :func:`status`: the store's data keys, the master key wrapping each, and how many messages
  and definitions are sealed under each data key or still plain; the stream segments per
  master key, and those still plain.
- :func:`rotate`: every data key (the store's and every segment's) rewrapped by the keyring's
  active master key, and a new store data key for the writes to come; no record is
  rewritten, so it takes a moment whatever the size. Afterwards the old master keys can
  leave the keyring. A running server takes the same steps while it serves
  (``Broker.rotate_keys``): ``tidings keys rotate`` asks it to.
- :func:`rewrite` (server stopped): every record not sealed under the newest data key (the
  plain ones written before encryption was on, those under older data keys) sealed again
  under it, and every plain stream segment rewritten sealed; then the database is vacuumed
  and its write-ahead log truncated, so no old bytes stay in its files.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidings.storage import segment_keys
from tidings.storage.keys import Keyring, Sealer, SealError, data_key_of
from tidings.storage.lock import DirectoryLock
from tidings.storage.segments import SegmentLog
from tidings.storage.sqlite import (
    DB_NAME,
    add_data_key,
    definition_place,
    message_place,
    read_data_keys,
    rotate_data_keys,
    schema,
)

STREAMS = "streams"


@dataclass
class KeyStatus:
    #: Data key number -> the master key id wrapping it.
    data_keys: dict[int, str] = field(default_factory=dict)
    #: Records per data key number (None: plain), for messages and for definitions.
    messages: dict[int | None, int] = field(default_factory=dict)
    definitions: dict[int | None, int] = field(default_factory=dict)
    #: Stream segments holding records, per master key id wrapping their data key (None:
    #: plain).
    segments: dict[str | None, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        def named(counts: dict[Any, int], what: str) -> dict[str, int]:
            return {("plain" if k is None else f"{what} {k}"): v for k, v in counts.items()}

        return {"data_keys": {str(k): v for k, v in self.data_keys.items()},
                "messages": named(self.messages, "data key"),
                "definitions": named(self.definitions, "data key"),
                "stream_segments": named(self.segments, "master key")}


@dataclass
class Rotated:
    #: Store data keys rewrapped, the new one's number, stream segments rewrapped, and the
    #: master key that wraps them now.
    data_keys: int
    new_data_key: int
    segments: int
    master_key: str

    def as_dict(self) -> dict[str, int | str]:
        return {"data_keys_rewrapped": self.data_keys, "new_data_key": self.new_data_key,
                "segments_rewrapped": self.segments, "master_key": self.master_key}


def _connect(directory: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(directory / DB_NAME, isolation_level=None, timeout=30)
    conn.executescript(schema())
    return conn


def status(directory: Path, locked: bool = True) -> KeyStatus:
    """``locked``: take the directory's lock (False: a running server asks, on its own)."""
    lock = DirectoryLock(directory) if locked else None
    conn = _connect(directory)
    try:
        found = KeyStatus({n: master for n, master, _ in read_data_keys(conn)})
        for table, counts in (("messages", found.messages),
                              ("definitions", found.definitions)):
            for (data,) in conn.execute(f"SELECT substr(data, 1, 3) FROM {table}"):
                number = data_key_of(bytes(data))
                counts[number] = counts.get(number, 0) + 1
        for path, _ in segment_keys.segment_files(directory / STREAMS):
            master = segment_keys.master_of(path)
            if master is not None or path.stat().st_size:
                found.segments[master] = found.segments.get(master, 0) + 1
        return found
    finally:
        conn.close()
        if lock is not None:
            lock.release()


def rotate(directory: Path, keyring: Keyring) -> Rotated:
    """Rotate a directory no process holds (see the module's docstring)."""
    lock = DirectoryLock(directory)
    conn = _connect(directory)
    try:
        streams = directory / STREAMS
        segment_keys.check_all(streams, keyring)
        rewrapped, _, number = rotate_data_keys(conn, keyring)
        return Rotated(rewrapped, number, segment_keys.rewrap_all(streams, keyring),
                       keyring.active)
    finally:
        conn.close()
        lock.release()


def rewrite(directory: Path, keyring: Keyring) -> tuple[int, int, int]:
    """Seal every record not under the newest data key with it, and every plain stream
    segment; returns how many records, how many did not open (damaged: left as they are),
    and how many segments."""
    lock = DirectoryLock(directory)
    conn = _connect(directory)
    try:
        done, damaged = _reseal_records(conn, keyring)
        # the old bytes leave the file's free pages and the write-ahead log
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        segments = 0
        streams = directory / STREAMS
        for stream in sorted(streams.iterdir()) if streams.is_dir() else []:
            if stream.is_dir():
                log = SegmentLog(stream, keyring=keyring)
                try:
                    segments += log.seal_plain()
                finally:
                    log.close()
        return done, damaged, segments
    finally:
        conn.close()
        lock.release()


def _reseal_records(conn: sqlite3.Connection, keyring: Keyring) -> tuple[int, int]:
    conn.execute("BEGIN IMMEDIATE")
    rows = read_data_keys(conn)
    keys = {n: keyring.unwrap(n, m, w) for n, m, w in rows}
    if not keys:
        number, key = add_data_key(conn, keyring)
        keys[number] = key
    sealer = Sealer(keys, max(keys))
    done = damaged = 0
    tables = (("SELECT seq, queue, data FROM messages",
               "UPDATE messages SET data = ? WHERE seq = ? AND queue = ?", message_place),
              ("SELECT key, kind, data FROM definitions",
               "UPDATE definitions SET data = ? WHERE key = ? AND kind = ?",
               lambda kind, key: definition_place(kind, key)))
    for select, update, place_of in tables:
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
    return done, damaged
