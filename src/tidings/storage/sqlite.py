"""SqliteStore: the default durable store, one SQLite file with group commit.

Shape: writes are appended to a list on the event loop's thread (no lock, no syscall). At the
end of a loop turn in which somebody asked for durability (``sync()``: a confirm, an awaited
send), or within ``PACE_S`` for writes nobody waits for (acks, delivery marks), that list is
handed to one writer thread, which takes *everything* handed over since
its last commit and applies it in one transaction: one commit, one fsync (WAL with
``synchronous=FULL``). While it fsyncs, the next batch gathers. Each batch's future resolves on
the loop when its transaction is durable; that is when publisher confirms go out.

Reads (recovery, paging) use a second connection on the loop's thread; WAL lets it read while
the writer writes, and it sees only committed transactions.

``seq`` is the table's rowid: unique across queues and increasing, so removes are by rowid and
paging is an index range scan on ``(queue, seq)``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tidings.errors import ClosedResourceError, ConfigError
from tidings.files import PRIVATE_FILE_MODE, make_private_directory
from tidings.storage.base import TRANSIENT
from tidings.storage.handoff import Handoff, resolve
from tidings.storage.keys import Keyring, Sealer, SealError
from tidings.storage.lock import DirectoryLock

log = logging.getLogger("tidings.storage")

DB_NAME = "tidings.sqlite3"
#: Seconds a write nobody waits for may wait for company before it is committed.
PACE_S = 0.005
#: A failed commit is retried after this many seconds, doubling up to RETRY_MAX_S.
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 2.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    flags INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages (queue, seq);
CREATE TABLE IF NOT EXISTS definitions (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS marks (queue TEXT PRIMARY KEY, delivered_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS data_keys (
    number INTEGER PRIMARY KEY,
    master TEXT NOT NULL,
    wrapped BLOB NOT NULL
);
"""


def schema() -> str:
    return SCHEMA


def message_place(queue: str, seq: int) -> bytes:
    """What a sealed message is bound to: its queue and position."""
    return f"m\x1f{queue}\x1f{seq}".encode()


def definition_place(kind: str, key: str) -> bytes:
    return f"d\x1f{kind}\x1f{key}".encode()


def read_data_keys(conn: sqlite3.Connection) -> list[tuple[int, str, bytes]]:
    return [(int(n), str(m), bytes(w)) for n, m, w in
            conn.execute("SELECT number, master, wrapped FROM data_keys ORDER BY number")]


def add_data_key(conn: sqlite3.Connection, keyring: Keyring) -> tuple[int, bytes]:
    """A new data key, stored wrapped by the keyring's active master key."""
    row = conn.execute("SELECT max(number) FROM data_keys").fetchone()
    number = int(row[0] or 0) + 1
    if number > 0xFFFF:
        raise ConfigError("the store has used every data key number (65535)")
    key = os.urandom(32)
    master, wrapped = keyring.wrap(number, key)
    conn.execute("INSERT INTO data_keys (number, master, wrapped) VALUES (?, ?, ?)",
                 (number, master, wrapped))
    return number, key


def rotate_data_keys(conn: sqlite3.Connection, keyring: Keyring
                     ) -> tuple[int, dict[int, bytes], int]:
    """Rewrap the store's data keys by the active master key and add a new one, in one
    transaction; returns (how many were rewrapped, every data key by number, the new one's
    number)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = read_data_keys(conn)
        keys = {}
        for number, master, wrapped in rows:
            keys[number] = key = keyring.unwrap(number, master, wrapped)
            active, rewrapped = keyring.wrap(number, key)
            conn.execute("UPDATE data_keys SET master = ?, wrapped = ? WHERE number = ?",
                         (active, rewrapped, number))
        number, keys[number] = add_data_key(conn, keyring)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(rows), keys, number


def open_sealer(conn: sqlite3.Connection, keyring: Keyring | None,
                directory: Path) -> Sealer | None:
    """The store's sealer under ``keyring`` (None: encryption off); a store with data keys
    and no keyring, or a keyring that does not open them, stops here with a clear error."""
    rows = read_data_keys(conn)
    if keyring is None:
        if rows:
            masters = ", ".join(sorted({f"'{m}'" for _, m, _ in rows}))
            raise ConfigError(f"the data directory '{directory}' is encrypted (its data keys "
                              f"are wrapped by master key {masters}): give the keyring with "
                              f"--encryption-key-file or TIDINGS_ENCRYPTION_KEY")
        return None
    keys = {number: keyring.unwrap(number, master, wrapped) for number, master, wrapped in rows}
    if not keys:
        number, key = add_data_key(conn, keyring)
        keys[number] = key
    return Sealer(keys, max(keys))

_SQL = {
    "append": "INSERT OR REPLACE INTO messages (seq, queue, flags, data) VALUES (?, ?, ?, ?)",
    "replace": "UPDATE messages SET data = ? WHERE seq = ?",
    "remove": "DELETE FROM messages WHERE seq BETWEEN ? AND ?",
    "remove_after": "DELETE FROM messages WHERE queue = ? AND seq > ?",
    "put_definition": "INSERT OR REPLACE INTO definitions (kind, key, data) VALUES (?, ?, ?)",
    "delete_definition": "DELETE FROM definitions WHERE kind = ? AND key = ?",
    "mark": "INSERT OR REPLACE INTO marks (queue, delivered_seq) VALUES (?, ?)",
}

Op = tuple[str, tuple[Any, ...]]
#: What one write costs in the backlog besides its payload (tuples, SQL work).
OP_OVERHEAD_BYTES = 128


#: SQLite page cache per connection, KiB: the writer's holds the hot index pages; the reader
#: only scans forward when paging in.
WRITER_CACHE_KIB = 65_536
READER_CACHE_KIB = 8_192


def _connect(path: Path, cache_kib: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute(f"PRAGMA cache_size=-{cache_kib}")
    return conn


class SqliteStore:
    durable = True
    keeps_messages = True

    def __init__(self, directory: str | Path,
                 keyring: Keyring | str | None = "environment") -> None:
        """``keyring``: the master keys that encrypt it at rest (``storage/keys.py``); by
        default the environment's (``TIDINGS_ENCRYPTION_KEY``/``_FILE``); None: plain."""
        self.directory = Path(directory)
        make_private_directory(self.directory)
        self._lock = DirectoryLock(self.directory)
        path = self.directory / DB_NAME
        # Created owner-only before SQLite opens it: its -wal and -shm files copy its mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE))
        self._writer = _connect(path, WRITER_CACHE_KIB)
        self._writer.executescript(SCHEMA)
        self._writer.execute("DELETE FROM messages WHERE flags & ?", (TRANSIENT,))
        try:
            ring = Keyring.from_environment() if isinstance(keyring, str) else keyring
            #: The master keys (None: plain); the streams beside the store use them too.
            self.keyring = ring
            #: Seals what is written and opens what is read (None: encryption is off).
            self.sealer = open_sealer(self._writer, ring, self.directory)
        except BaseException:
            self._writer.close()
            self._lock.release()
            raise
        self._reader = _connect(path, READER_CACHE_KIB)
        self._pending: list[Op] = []
        self._marks: dict[str, int] = {}
        self._next_future: asyncio.Future[None] | None = None
        self._last_future: asyncio.Future[None] | None = None
        self._handoff_scheduled = False
        self._pace_timer: asyncio.TimerHandle | None = None
        self._handoff_queue: Handoff[tuple[list[Op], dict[str, int],
                                           asyncio.Future[None] | None, int]] = Handoff()
        self._closed = False
        #: Transactions committed so far (group commit makes this far below the writes).
        self.commits = 0
        # Bytes of writes submitted (loop thread) and written (writer thread); each counter
        # has exactly one writer, so no lock is needed to read the difference.
        self._submitted = 0
        self._written = 0
        #: Why the writer thread cannot commit right now (it retries), or None.
        self._write_error: str | None = None
        self._pending_bytes = 0
        self._thread = threading.Thread(target=self._run_writer, name="tidings-writer", daemon=True)
        self._thread.start()

    # -- writes (event loop thread) -------------------------------------------------------

    def _submit(self, op: Op, size: int = 0) -> None:
        if self._closed:
            raise ClosedResourceError(f"the store in '{self.directory}' is closed")
        self._pending.append(op)
        weight = OP_OVERHEAD_BYTES + size
        self._submitted += weight
        self._pending_bytes += weight
        self._schedule()

    def _schedule(self, soon: bool = False) -> None:
        """Hand the pending writes over: in this loop turn's end when someone waits for them
        (``soon``), else within PACE_S, so writes nobody waits for (acks, delivery marks)
        join the next commit somebody does wait for instead of paying for one of their own."""
        if self._handoff_scheduled and (not soon or self._pace_timer is None):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._handoff()
            return
        self._handoff_scheduled = True
        if soon:
            if self._pace_timer is not None:
                self._pace_timer.cancel()
                self._pace_timer = None
            loop.call_soon(self._handoff)
        else:
            self._pace_timer = loop.call_later(PACE_S, self._handoff)

    def append(self, queue: str, seq: int, data: bytes, flags: int = 0) -> None:
        if self.sealer is not None:
            data = self.sealer.seal(data, message_place(queue, seq))
        self._submit(("append", (seq, queue, flags, data)), len(data))

    def replace(self, queue: str, seq: int, data: bytes) -> None:
        if self.sealer is not None:
            data = self.sealer.seal(data, message_place(queue, seq))
        self._submit(("replace", (data, seq)), len(data))

    def remove(self, queue: str, seq: int) -> None:
        self._submit(("remove", (seq, seq)))

    def remove_after(self, queue: str, seq: int) -> None:
        self._submit(("remove_after", (queue, seq)))

    def mark_delivered(self, queue: str, seq: int) -> None:
        if seq > self._marks.get(queue, -1):
            self._marks[queue] = seq
            self._schedule()

    def put_definition(self, kind: str, key: str, data: bytes) -> None:
        if self.sealer is not None:
            data = self.sealer.seal(data, definition_place(kind, key))
        self._submit(("put_definition", (kind, key, data)))

    def delete_definition(self, kind: str, key: str) -> None:
        self._submit(("delete_definition", (kind, key)))

    def backlog(self) -> int:
        """Bytes of writes submitted but not yet committed (callers slow down when it grows)."""
        return self._submitted - self._written

    def write_error(self) -> str | None:
        return self._write_error

    def sync(self, hurry: bool = True) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if self._pending or self._marks:
            if self._next_future is None:
                self._next_future = loop.create_future()
            self._schedule(soon=hurry)
            return self._next_future
        if self._last_future is not None and not self._last_future.done():
            return self._last_future
        done: asyncio.Future[None] = loop.create_future()
        done.set_result(None)
        return done

    def _handoff(self) -> None:
        self._handoff_scheduled = False
        if self._pace_timer is not None:
            self._pace_timer.cancel()
            self._pace_timer = None
        if not self._pending and not self._marks:
            return
        ops, self._pending = self._pending, []
        weight, self._pending_bytes = self._pending_bytes, 0
        marks, self._marks = self._marks, {}
        future, self._next_future = self._next_future, None
        if future is None:
            try:
                future = asyncio.get_running_loop().create_future()
            except RuntimeError:
                future = None
        if future is not None:
            self._last_future = future
        self._handoff_queue.put((ops, marks, future, weight))

    # -- the writer thread -----------------------------------------------------------------

    def _run_writer(self) -> None:
        while (batch := self._handoff_queue.take()) is not None:
            error = self._write_until_done(batch)
            resolve([item[2] for item in batch if item[2] is not None], error)

    def _write_until_done(self, batch: list[tuple[list[Op], dict[str, int], Any, int]]
                          ) -> BaseException | None:
        """Commit ``batch``; while that fails (a full disk, an I/O error) keep it and try
        again, backing off, so no publish, ack or definition is dropped and nothing waiting
        on it is told it failed. Logged once when writes stop and once when they resume.
        Only a close gives up: then the batch's waiters get the error."""
        delay, failing_since = RETRY_FIRST_S, 0.0
        while True:
            try:
                self._write(batch)
            except Exception as e:
                if self._writer.in_transaction:
                    self._writer.execute("ROLLBACK")
                if self._handoff_queue.closing:
                    log.error("the store in '%s' closed with writes it could not make: %s",
                              self.directory, e)
                    return e
                self._write_error = f"{type(e).__name__}: {e}"
                if not failing_since:
                    failing_since = time.monotonic()
                    log.error("cannot write to the store in '%s': %s; retrying (confirms and "
                              "acks wait, nothing is dropped)", self.directory, e)
                self._handoff_queue.pause(delay)  # a close wakes it
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self._write_error = None
            if failing_since:
                log.warning("writes to the store in '%s' resumed after %.1f s", self.directory,
                            time.monotonic() - failing_since)
            return None

    def _write(self, batch: list[tuple[list[Op], dict[str, int], Any, int]]) -> None:
        conn = self._writer
        conn.execute("BEGIN")
        for ops, marks, _, _ in batch:
            for kind, rows in _runs(ops):
                conn.executemany(_SQL[kind], _ranges(rows) if kind == "remove" else rows)
            if marks:
                conn.executemany(_SQL["mark"], marks.items())
        conn.execute("COMMIT")
        self.commits += 1
        self._written += sum(item[3] for item in batch)

    # -- reads (event loop thread) ---------------------------------------------------------

    def load(self, queue: str, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        cur = self._reader.execute(
            "SELECT seq, data FROM messages WHERE queue = ? AND seq > ? ORDER BY seq LIMIT ?",
            (queue, after_seq, limit),
        )
        if self.sealer is None:
            return cur.fetchall()
        return [(seq, self._open(data, message_place(queue, seq), f"message {seq} of {queue}"))
                for seq, data in cur]

    def _open(self, data: bytes, place: bytes, what: str) -> bytes:
        """A sealed record opened; one that does not open is returned as it is (it is no
        record then: the reader quarantines it, never delivers it)."""
        assert self.sealer is not None
        try:
            return self.sealer.open(data, place)
        except SealError as e:
            log.error("%s in '%s' does not open: %s", what, self.directory, e)
            return bytes(data)

    def count(self, queue: str) -> int:
        cur = self._reader.execute("SELECT count(*) FROM messages WHERE queue = ?", (queue,))
        return int(cur.fetchone()[0])

    def record_sizes(self, queue: str, limit: int) -> list[int]:
        # length() of a BLOB column reads its size from the record header, not the overflow
        # pages, so a queue of large messages is sized without loading them.
        cur = self._reader.execute(
            "SELECT length(data) FROM messages WHERE queue = ? ORDER BY seq LIMIT ?",
            (queue, limit))
        return [int(r[0]) for r in cur]

    def queues(self) -> list[str]:
        return [r[0] for r in self._reader.execute("SELECT DISTINCT queue FROM messages")]

    def definitions(self, kind: str) -> list[tuple[str, bytes]]:
        cur = self._reader.execute("SELECT key, data FROM definitions WHERE kind = ?", (kind,))
        if self.sealer is None:
            return cur.fetchall()
        out = []
        for key, data in cur:
            try:
                out.append((key, self.sealer.open(data, definition_place(kind, key))))
            except SealError as e:  # (left in place, skipped: never read as garbage)
                log.error("definition '%s' of kind '%s' in '%s' does not open: %s; skipped",
                          key, kind, self.directory, e)
        return out

    def delivered_marks(self) -> dict[str, int]:
        return dict(self._reader.execute("SELECT queue, delivered_seq FROM marks").fetchall())

    def max_seq(self) -> int:
        row = self._reader.execute("SELECT max(seq) FROM messages").fetchone()
        return int(row[0] or 0)

    def rotate_keys(self, keyring: Keyring) -> tuple[int, int]:
        """Rewrap the data keys by ``keyring``'s active master key and seal new writes
        under a new data key, while the store serves (on its own connection: call it off the
        loop); returns (data keys rewrapped, the new one's number)."""
        conn = sqlite3.connect(self.directory / DB_NAME, isolation_level=None, timeout=30)
        try:
            rewrapped, keys, number = rotate_data_keys(conn, keyring)
        finally:
            conn.close()
        self.sealer, self.keyring = Sealer(keys, number), keyring
        return rewrapped, number

    def close(self) -> None:
        if self._closed:
            return
        self._handoff()
        self._closed = True
        self._handoff_queue.close()
        self._thread.join()
        self._writer.close()
        self._reader.close()
        self._lock.release()


def _ranges(rows: list[tuple[Any, ...]]) -> list[tuple[int, int]]:
    """Removals of consecutive seqs as (first, last) ranges: acks mostly come in seq order.

    A range only ever covers seqs that are all being removed, so it is exact.
    """
    seqs = sorted({row[0] for row in rows})
    out: list[tuple[int, int]] = []
    first = last = seqs[0]
    for seq in seqs[1:]:
        if seq != last + 1:
            out.append((first, last))
            first = seq
        last = seq
    out.append((first, last))
    return out


def _runs(ops: list[Op]) -> Iterable[tuple[str, list[tuple[Any, ...]]]]:
    """Consecutive ops of one kind, grouped for executemany (order is kept)."""
    kind: str | None = None
    rows: list[tuple[Any, ...]] = []
    for k, row in ops:
        if k != kind:
            if rows:
                yield kind, rows  # type: ignore[misc]
            kind, rows = k, []
        rows.append(row)
    if rows:
        yield kind, rows  # type: ignore[misc]
